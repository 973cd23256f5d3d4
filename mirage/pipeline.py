"""Long camera-controlled video from one image: Wan2.2 TI2V-5B + a 3D memory, chunk by chunk.

``MiragePipeline`` reads like a diffusers pipeline: 1. check inputs, 2. encode the prompts,
3. encode the image, estimate its depth, initialize the memory, 4. run the chunks with
``mirage.chunks.run_chunks`` (read -> condition -> denoise -> decode -> depth -> update), 5. stitch.
It returns a ``MirageOutput`` with the video, per-chunk latents, readouts and per-stage timings.

Sampling is diffusers' ``WanImageToVideoPipeline(expand_timesteps=True)``: frame 0 of a chunk is a
clean latent with per-token timestep 0, the other frames start from Gaussian noise and follow the
scheduler; classifier-free guidance combines a conditional and an unconditional transformer call.
With ``memory_mode="off"`` one chunk is exactly that pipeline (``tests/test_pipeline.py`` compares
the two). Frame 0 is the image's latent for the first chunk, then the continuation
(``mirage.chunks``): the last decoded frame encoded alone (``"reencode"``) or the last latent.

Memory conditioning is either a trained side branch or training-free. ``"branch"``: a checkpoint
loaded with ``load_branch`` (Mirage's or Spatia's, ``mirage.checkpoints``) receives each chunk's
``mirage.conditioning.BranchInputs`` built from the memory (the readout and a score as a 96-channel
context; reference latents before the chunk and preceding latents after it, clean with timestep 0),
through ``mirage.branch.branched_forward``; its LoRA is on where the family uses it. The training-free
modes run the bare model; while ``step < memory_strength * num_inference_steps``:

* ``"replace"`` (default): the visible latent cells of the noisy latent are overwritten with the
  readout noised to the current level, ``x_t = (1 - sigma) * readout + sigma * eps``, before every
  transformer call (``eps`` = the chunk's initial noise, fixed per chunk). Every token stays at the
  noise level the model was trained on for frames >= 1, and the remaining steps let the model blend
  seams, holes and reprojection errors. When the replacement lasts to the end (``memory_strength=1``)
  the visible cells of the final latent equal the readout exactly.
* ``"context"``: visible *tokens* are given to the model clean with per-token timestep 0, the
  mechanism TI2V uses for frame 0. A token (patch ``(1, 2, 2)``) counts as visible only when all
  its 2x2 latent cells are. Clean tokens scattered inside noisy frames are outside what TI2V was
  trained on, and are pinned exactly, so seams are never repaired. For the scheduler, context cells
  follow the same straight path as in replace mode (the model output there is replaced by
  ``eps - readout``, whose x0-prediction is the readout), so releasing them mid-way is seamless.
* ``"off"``: the memory is read and updated (its costs are measured) but not imposed.

After each chunk: decode, estimate depth of the latent-aligned frames ``4k`` (``k >= 1``) with the
path's intrinsics, align its scale to the memory's readout depth on the visible cells
(``mirage.depth.align_scale``), drop far/sky cells (``max_depth``) and update the memory with the
chunk's latents and decoded frames; each memory stores what it keeps. Both memories run the same loop.

Defaults (``DEFAULTS``, sources in the README): the training-free modes run the bare TI2V model, so
they use Wan2.2-TI2V-5B's own sampling settings (UniPC, flow shift 5, guidance 5 with Wan's negative
prompt) and continue a chunk by re-encoding its last frame; a trained branch uses its reference's
(steps, guidance and negative prompt, chunking, fps, continuation, Wan's own sigma schedule).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from . import weights
from .branch import branched_forward
from .chunks import (
    CONTINUATIONS, READOUT_PARTS, STAGES, Chunk, ChunkParts, ChunkResult, ChunkRun, Continuation, DepthResult, start_memory,
    step,
)  # fmt: skip
from .codecs import WAN22_MODEL_ID, WanVAECodec
from .conditioning import BranchInputs, make_conditioner
from .depth import MIN_ALIGN_PIXELS, DepthBackend, align_scale, estimate_frames, make_depth_backend
from .families import (
    BRANCH_KINDS, DEFAULTS, FAMILIES, MEMORY_MODES, READOUTS, TRAINING_FREE_MODES, BranchKind, GenerationDefaults,
    MemoryMode, Readouts,
)  # fmt: skip
from .frames import Chunking, check_num_frames, stitch_chunks
from .geometry import downsample_depth, valid_depth
from .memory import MEMORY_KINDS, MemoryConfig, MemoryKind, MemoryReadout, MemoryUpdate, SpatialMemory, make_memory
from .offload import PinnedOffload
from .cameras import Cameras
from .paths import CameraPath
from .timing import StageTimer

__all__ = [
    "MiragePipeline",
    "GenerationRun",
    "MirageOutput",
    "STAGES",
    "READOUT_PARTS",
    "WAN_UNIPC_CONFIG",
    "WAN22_LAYOUT",
    "token_visible",
]

# The scheduler of Wan-AI/Wan2.2-TI2V-5B-Diffusers (scheduler/scheduler_config.json): UniPC on flow
# sigmas with flow_shift 5. Used when the components are built without a checkpoint (tests, benchmarks).
WAN_UNIPC_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}

# What MiragePipeline.from_pretrained needs of a Wan2.2-TI2V-5B-Diffusers checkpoint.
WAN22_LAYOUT: weights.Layout = {
    "transformer": "model", "vae": "model", "scheduler/scheduler_config.json": "file",
    "text_encoder": "model", "tokenizer": "dir",
}  # fmt: skip


def padded_path(path: CameraPath, chunking: Chunking) -> CameraPath:
    """``path`` with its last camera repeated until its last chunk is as long as the others (the first
    chunk as long as ``chunking.first``), as Spatia pads its last round's poses (inference.py)."""
    (start, stop) = chunking.ranges(len(path))[-1]
    full = chunking.first if start == 0 else chunking.frames
    if stop - start >= full:
        return path
    extra = full - (stop - start)
    last = path[len(path) - 1 :]  # [1]
    tail = Cameras(last.K.expand(extra, 3, 3), last.cam_from_world.expand(extra, 4, 4), path.width, path.height)
    return CameraPath.starting_at(path.source, Cameras.cat([path[: len(path)], tail]))


@dataclass
class GenerationRun:
    """One memory's generation along a path, resumable chunk by chunk (``MiragePipeline.start`` /
    ``step``): the chunk run (memory, chunk records, random state) and what the sampler needs, all of
    it picklable, so that each chunk can be its own GPU call with the run on the CPU in between.
    ``MiragePipeline.__call__`` is ``start`` and one ``step`` per chunk."""

    chunks: ChunkRun  # the memory, the path, the records of the chunks so far, the random state
    prompt_embeds: Tensor  # [1, L, D] in the transformer's dtype, on the CPU
    negative_prompt_embeds: Tensor | None  # [1, L, D] (guidance > 1)
    num_inference_steps: int
    guidance_scale: float
    memory_mode: MemoryMode
    memory_strength: float
    reference_schedule: bool
    rng_device: str  # where the random noise is drawn ("cpu" or "cuda"): the generator's device
    settings: dict[str, Any]  # the sampling settings used (defaults filled in), for MirageOutput
    cache: dict = field(default_factory=dict)  # what the branch-input builder keeps between chunks (score latents)
    reseed_state: Tensor | None = None  # every chunk's noise starts from this random state (a reseeding family)
    num_frames: int = 0  # frames asked for (the path may be padded past them: pad_last_chunk)
    first_timings: dict[str, float] = field(default_factory=dict)  # prompt and init seconds, charged to chunk 0

    def to(self, device: torch.device | str) -> "GenerationRun":
        self.chunks.to(device)
        return self


@dataclass
class MirageOutput:
    """Result of ``MiragePipeline.__call__`` for a video of ``T`` frames at ``H x W`` in ``n`` chunks.

    Chunk ``c`` covers pixel frames ``frame_ranges[c] = (start, stop)`` (stop exclusive, consecutive
    chunks share one frame) and has ``F_c = (stop - start - 1) / 4 + 1`` latent frames of ``h x w``
    (``h = H / 16``, ``w = W / 16``, ``C = 48`` for Wan2.2).
    """

    video: Tensor  # [3, T, H, W] float32 CPU in [-1, 1]
    chunks: list[ChunkResult]  # per chunk: latents, decoded frames, readout, timings, sizes (mirage.chunks)
    memory: SpatialMemory  # the memory after the last update
    settings: dict[str, Any]  # the sampling settings used (defaults filled in)
    initial: MemoryUpdate | None = None  # what the memory stored of the image (None: a memory passed in non-empty)

    @property
    def latents(self) -> list[Tensor]:  # per chunk [C, F_c, h, w] float32, normalized latents after denoising
        return [c.latents for c in self.chunks]

    @property
    def readouts(self) -> list[MemoryReadout]:  # per chunk, on CPU
        return [c.readout for c in self.chunks]

    @property
    def chunk_timings(self) -> list[dict[str, float]]:  # per chunk: STAGES + READOUT_PARTS present + "total"
        return [c.timings for c in self.chunks]

    @property
    def peak_memory_bytes(self) -> list[int]:  # per chunk: torch.cuda.max_memory_allocated (0 on CPU)
        return [c.peak_memory_bytes for c in self.chunks]

    @property
    def cache_bytes(self) -> list[int]:  # per chunk: memory.nbytes after its update
        return [c.cache_bytes for c in self.chunks]

    @property
    def frame_ranges(self) -> list[tuple[int, int]]:
        return [c.frame_range for c in self.chunks]

    @property
    def depth_scales(self) -> list[float]:  # per chunk: scale applied to the estimated depth
        return [c.depth_scale for c in self.chunks]

    @property
    def depth_aligned(self) -> list[bool]:  # per chunk: False when too few cells overlapped (scale kept)
        return [c.depth_aligned for c in self.chunks]


def token_visible(mask: Tensor, patch: tuple[int, int] = (2, 2)) -> Tensor:  # [F, h, w] bool -> [F, h, w] bool
    """Cells of tokens whose ``patch`` cells are all visible (the token-resolution visibility)."""
    F_, h, w = mask.shape
    ph, pw = patch
    tokens = mask.reshape(F_, h // ph, ph, w // pw, pw).all(dim=4).all(dim=2)  # [F, h/ph, w/pw]
    return tokens.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)  # [F, h, w] back to cells


class MiragePipeline(DiffusionPipeline):
    """Wan2.2 TI2V-5B with a latent (Mirage) or RGB point-cloud (baseline) 3D memory.

    Components: ``transformer`` (``WanTransformer3DModel``), ``vae`` (``AutoencoderKLWan``, wrapped in
    ``mirage.codecs.WanVAECodec`` so latents are normalized as the memory expects), ``scheduler``
    (flow-matching UniPC), optional ``text_encoder`` (``UMT5EncoderModel``) + ``tokenizer`` (pass
    ``prompt_embeds`` without them), a ``depth_backend`` (``mirage.depth.DepthBackend``) and an
    optional trained ``branch`` (``mirage.branch.MemoryBranch``, see ``load_branch``).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer", "branch"]

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        depth_backend: DepthBackend | None = None,
        branch=None,  # a trained mirage.branch.MemoryBranch, or None
        branch_kind: BranchKind | None = None,  # its checkpoint family: "mirage" or "spatia"
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
            branch=branch,
        )  # fmt: skip
        if (branch is None) != (branch_kind is None) or branch_kind not in (None, *BRANCH_KINDS):
            raise ValueError(f"pass a branch together with its kind (one of {BRANCH_KINDS}), got kind {branch_kind!r}")
        self.branch_kind = branch_kind
        self._pinned_offload: PinnedOffload | None = None
        self._loads = 0  # branches loaded so far (names the LoRA adapter of each)
        self.codec = WanVAECodec(vae)
        self.depth_backend = depth_backend
        self.prompt_cache: dict[tuple[str, int], Tensor] = {}  # (prompt, max_sequence_length) -> [1, L, D]
        self.text_encoder_offload = False  # enable_text_encoder_offload: the text encoder rests on the CPU
        if transformer.config.in_channels != self.codec.latent_channels:
            raise ValueError(
                f"transformer in_channels={transformer.config.in_channels} != VAE z_dim={self.codec.latent_channels}"
            )

    # ------------------------------------------------------------------ loading and options
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike = WAN22_MODEL_ID,
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        vae_dtype: torch.dtype = torch.float32,
        depth_backend: DepthBackend | str | None = "depth-pro",
        flow_shift: float | None = 5.0,
        load_text_encoder: bool = True,
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
        **depth_kwargs: Any,
    ) -> "MiragePipeline":
        """Load Wan2.2 TI2V-5B (diffusers layout) from a hub id, a local folder or the HF cache.

        The transformer and text encoder in ``torch_dtype`` (bf16), the VAE in ``vae_dtype`` (float32,
        the released VAE's dtype, as diffusers loads it); ``flow_shift=None`` keeps the checkpoint's
        scheduler config; ``depth_backend`` is a backend, a ``mirage.depth.DEPTH_SOURCES`` name (built
        with ``make_depth_backend(name, **depth_kwargs)``) or None (then ``__call__`` needs one set
        later). ``local_files_only=None`` means offline only when ``HF_HUB_OFFLINE`` is set. Missing
        weights raise ``FileNotFoundError`` naming the path.
        """
        from transformers import AutoTokenizer, UMT5EncoderModel

        layout = dict(WAN22_LAYOUT) if load_text_encoder else {k: v for k, v in WAN22_LAYOUT.items() if not k.startswith(("text", "tok"))}
        hint = (
            f"Download them where there is network (`hf download {WAN22_MODEL_ID}`) and pass the folder, or build the "
            f"components yourself and call MiragePipeline(transformer=..., vae=..., scheduler=...)."
        )
        root = weights.resolve(path_or_id, layout, what="MiragePipeline (Wan2.2 TI2V-5B)", hint=hint,
                               local_files_only=local_files_only, cache_dir=cache_dir)  # fmt: skip
        with weights.offline_mode():
            transformer = WanTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=torch_dtype)
            codec = WanVAECodec.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype)
            extra = {} if flow_shift is None else {"flow_shift": float(flow_shift)}
            scheduler = UniPCMultistepScheduler.from_pretrained(root / "scheduler", **extra)
            text_encoder = tokenizer = None
            if load_text_encoder:
                text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype=torch_dtype)
                tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        if isinstance(depth_backend, str):
            if depth_backend in ("depth-pro", "depth-anything-v2-metric"):  # their weights come from the same cache
                depth_kwargs = {"local_files_only": local_files_only, "cache_dir": cache_dir, **depth_kwargs}
            depth_backend = make_depth_backend(depth_backend, **depth_kwargs)
        return cls(transformer, codec.vae, scheduler, text_encoder, tokenizer, depth_backend)

    def load_branch(
        self,
        kind: BranchKind,
        branch: str | os.PathLike | Mapping[str, Tensor] | None = None,
        lora: str | os.PathLike | Mapping[str, Tensor] | None = None,
        *,
        layers: tuple[int, ...] | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
    ) -> "MiragePipeline":
        """Load a trained side branch and its LoRA for ``memory_mode="branch"``.

        kind: the checkpoint family, which fixes how the branch is conditioned (``mirage.conditioning``),
        the sampling defaults (``DEFAULTS[kind]``) and, unless ``layers`` is given, where its blocks
        go: after every ``layer_stride``-th DiT layer of the family (``mirage.families.FAMILIES``: 2 for
        Mirage, 4 for Spatia), as many as the file has. branch / lora: a file, a folder or a hub id
        holding the family's file names, or a state dict. With neither given,
        Spatia's come from its public repo ``Jinjing713/Spatia`` (the HF cache, or downloaded when
        allowed); Mirage has no public weights and needs a branch. ``lora=None`` with a branch: no
        LoRA (a branch trained without one). A LoRA loaded before is replaced. Works resident and
        with model CPU offload.
        """
        from .checkpoints import branch_from_checkpoint, convert_branch_state_dict, load_lora, read_state_dict, resolve_checkpoint

        if kind not in BRANCH_KINDS:
            raise ValueError(f"branch kind must be one of {BRANCH_KINDS}, got {kind!r}")
        family = FAMILIES[kind]
        branch_file, lora_file = family.branch_file, family.lora_file
        if family.weights_repo is not None and branch is None and lora is None:  # nothing named: the public release
            branch = lora = family.weights_repo
        elif branch is None:
            why = (f"{family.code} publishes no weights" if family.weights_repo is None else
                   f"its public release ({family.weights_repo}) is used when neither branch nor lora is given")  # fmt: skip
            raise ValueError(f"no {kind} branch given: pass the branch file ({branch_file}); {why}")

        def state_dict(source, filename: str, part: str):
            if isinstance(source, Mapping):
                return source
            path = resolve_checkpoint(source, filename, what=f"the {kind} {part}", local_files_only=local_files_only,
                                      cache_dir=cache_dir)  # fmt: skip
            return read_state_dict(path, part)

        branch_sd = convert_branch_state_dict(state_dict(branch, branch_file, "branch"))
        if layers is None:  # the family's spacing, as many blocks as the file has
            layers = family.layers(len({k.split(".")[1] for k in branch_sd if k.startswith("vace_blocks.")}))
        module = branch_from_checkpoint(self.transformer, branch_sd, layers=layers)
        lora_sd = None if lora is None else state_dict(lora, lora_file, "lora")
        offload = self._pinned_offload
        self.disable_model_cpu_offload()  # adapters add parameters: the offload is rebuilt around them
        try:
            old = list(getattr(self.transformer, "peft_config", None) or {})
            name = f"memory_{self._loads}"  # a new name: a LoRA that fails to load leaves the old one in place
            if lora_sd is not None:
                with warnings.catch_warnings():  # PEFT warns that a second adapter joins the first: it replaces it below
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    load_lora(self.transformer, lora_sd, adapter_name=name)
            if old:
                self.transformer.delete_adapters(old)
            if lora_sd is not None:
                self.transformer.set_adapters(name)
            self._loads += 1
            device = next(self.transformer.parameters()).device
            self.register_modules(branch=module.to(device, self.transformer.dtype).eval())
            self.branch_kind = kind
        finally:
            if offload is not None:
                self.enable_model_cpu_offload(device=offload.device)
        return self

    def use_lora(self, active: bool) -> None:
        """Switch the transformer's LoRA adapter on or off (no-op without one): the training-free
        modes run the bare model, Spatia's branch uses its LoRA from the second chunk on."""
        if getattr(self.transformer, "peft_config", None):
            (self.transformer.enable_adapters if active else self.transformer.disable_adapters)()

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Model CPU offload for chunked generation (``mirage.offload.PinnedOffload``), replacing
        diffusers' own: the text encoder, transformer, VAE and depth model rest in pinned host memory
        and one of them is on ``device`` at a time, moved there when it is about to run. Unlike
        diffusers' hooks, releasing a model copies nothing back (inference never changes weights), so
        the chunk-by-chunk loop pays one fast host-to-device copy per model switch. Peak memory is
        that of the largest single model plus its activations (the transformer counts with its side
        branch and LoRA, which run with it). ``disable_model_cpu_offload`` undoes it.
        """
        self.disable_model_cpu_offload()
        device = torch.device(device if device is not None else f"cuda:{gpu_id or 0}")
        modules = {"text_encoder": self.text_encoder, "transformer": [self.transformer, self.branch], "vae": self.vae,
                   "depth": getattr(self.depth_backend, "model", None)}  # fmt: skip
        self._pinned_offload = PinnedOffload(modules, device)

    def disable_model_cpu_offload(self, device: torch.device | str | None = None) -> None:
        """Remove the offload hooks; with ``device`` the models move there (resident)."""
        offload = self._pinned_offload
        if offload is not None:
            offload.remove(device)
            self._pinned_offload = None

    def enable_text_encoder_offload(self) -> None:
        """Keep the text encoder (UMT5-XXL, 11 GB in bf16) on the CPU and bring it to the device only to
        encode a prompt (once per prompt: the embeddings are cached): denoising and decoding then have
        the device without it. ``disable_text_encoder_offload`` undoes it."""
        self.text_encoder_offload = self.text_encoder is not None
        if self.text_encoder is not None:
            self.text_encoder.to("cpu")

    def disable_text_encoder_offload(self, device: torch.device | str | None = None) -> None:
        self.text_encoder_offload = False
        if self.text_encoder is not None and device is not None:
            self.text_encoder.to(device)

    def enable_vae_tiling(self, **kwargs: Any) -> None:
        """Spatially tiled VAE encode/decode (``AutoencoderKLWan.enable_tiling`` kwargs)."""
        self.codec.enable_tiling(**kwargs)

    # ------------------------------------------------------------------ 1. inputs
    def check_inputs(
        self,
        image: Tensor,
        path: CameraPath,
        num_frames: int,
        chunking: Chunking,
        num_inference_steps: int,
        memory: Any,
        memory_config: MemoryConfig | None,
        memory_mode: str,
        memory_strength: float,
        continuation: str,
        prompt: str | None,
        prompt_embeds: Tensor | None,
        guidance_scale: float,
        negative_prompt_embeds: Tensor | None,
        image_depth: Tensor | None,
    ) -> None:
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor [3, H, W] in [-1, 1], got {got}")
        H, W = image.shape[1:]
        mult = self.codec.spatial_stride * self.transformer.config.patch_size[1]
        if H % mult or W % mult:
            raise ValueError(f"height and width must be divisible by {mult} (VAE stride x patch), got {H}x{W}")
        if not isinstance(path, CameraPath):
            raise ValueError(
                f"the camera path must be a mirage.paths.CameraPath (frame 0 = the image's camera), got {type(path).__name__}"
            )
        ts = self.codec.temporal_stride
        check_num_frames(num_frames, ts, min_latent_frames=2)
        if not isinstance(chunking, Chunking):
            raise ValueError(f"chunking must be a mirage.frames.Chunking, got {type(chunking).__name__}")
        chunking.check(ts)
        if continuation == "latent" and chunking.overlap != 1:
            raise ValueError(f"continuation 'latent' keeps one latent, so chunks must share 1 frame, not {chunking.overlap}")
        if len(path) < num_frames:
            raise ValueError(f"the camera path has {len(path)} cameras, shorter than the video's num_frames={num_frames}")
        if (path.width, path.height) != (W, H):
            raise ValueError(f"the camera path is for {path.width}x{path.height} images but the image is {W}x{H}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if not (isinstance(memory, SpatialMemory) or memory in MEMORY_KINDS):
            raise ValueError(f"memory must be one of {MEMORY_KINDS} or a memory instance, got {memory!r}")
        if isinstance(memory, SpatialMemory) and memory_config is not None:
            raise ValueError("memory_config makes a new memory: pass it with memory='latent' or 'rgb', not with an instance")
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
        if memory_mode == "branch" and self.branch is None:
            raise ValueError("memory_mode='branch' needs a trained branch: call load_branch(...) first")
        if not (0.0 <= float(memory_strength) <= 1.0):
            raise ValueError(f"memory_strength must be in [0, 1], got {memory_strength!r}")
        if continuation not in CONTINUATIONS:
            raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 1.0):
            raise ValueError(f"guidance_scale must be a number >= 1 (1 = no guidance), got {guidance_scale!r}")
        text_dim = self.transformer.config.text_dim
        for name, emb in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if emb is not None and (emb.dim() != 3 or emb.shape[0] != 1 or emb.shape[2] != text_dim):
                raise ValueError(f"{name} must be [1, L, {text_dim}], got {tuple(emb.shape)}")
        if guidance_scale > 1.0 and prompt is None and negative_prompt_embeds is None:
            raise ValueError(f"guidance_scale={guidance_scale} > 1 with prompt_embeds needs negative_prompt_embeds")
        if image_depth is not None and tuple(image_depth.shape) != (H, W):
            raise ValueError(f"image_depth must be [H, W] = [{H}, {W}], got {tuple(image_depth.shape)}")
        if self.depth_backend is None:
            raise ValueError("no depth_backend: pass one to MiragePipeline(...) or from_pretrained(depth_backend=...)")

    # ------------------------------------------------------------------ 2. prompt
    @torch.no_grad()
    def encode_prompt(self, prompt: str, max_sequence_length: int = 512) -> Tensor:  # -> [1, L, D]
        """UMT5 embeddings as diffusers' Wan pipelines compute them (zeros after the prompt), cached per prompt."""
        key = (prompt, max_sequence_length)
        if key in self.prompt_cache:
            return self.prompt_cache[key]
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(f"no text encoder/tokenizer loaded to encode prompt {prompt!r}: pass prompt_embeds instead")
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

        tokens = self.tokenizer(
            [prompt_clean(prompt)], padding="max_length", max_length=max_sequence_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, attn = tokens.input_ids, tokens.attention_mask  # [1, L] each
        device = self._execution_device
        if self.text_encoder_offload:
            self.text_encoder.to(device)
        try:
            embeds = self.text_encoder(ids.to(device), attn.to(device)).last_hidden_state  # [1, L, D]
        finally:
            if self.text_encoder_offload:
                self.text_encoder.to("cpu")  # its work is done: the device holds what denoising needs
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        embeds = embeds * attn.to(device)[..., None].to(embeds.dtype)  # zeros after the prompt's tokens
        self.prompt_cache[key] = embeds.to(self.transformer.dtype)
        return self.prompt_cache[key]

    # ------------------------------------------------------------------ parts of a chunk
    def estimate_depth(self, chunk: Chunk, frames: Tensor, previous_scale: float) -> DepthResult:
        """Depth of the new frames 4k (``frames [3, F-P, H, W]``, from latent ``P = chunk.update_from(frames)``) with the path's own intrinsics
        (zoom paths change ``K`` per frame), scaled to the memory's readout depth on the cells both
        see (``align_scale``); with too few common cells the previous chunk's scale is kept."""
        device, P = frames.device, chunk.update_from(frames)
        depth = estimate_frames(self.depth_backend, frames, chunk.latent_cameras[P:].K.to(device)).float()  # [F-P, H, W]
        reference = chunk.readout.depth[P:].to(device)  # [F-P, h, w] the memory's depth, NaN where hidden
        depth_lat = downsample_depth(depth, self.codec.spatial_stride)  # [F-P, h, w]
        common = chunk.readout.mask[P:].to(device) & valid_depth(depth_lat) & valid_depth(reference)
        aligned = int(common.sum()) >= MIN_ALIGN_PIXELS
        scale = align_scale(depth_lat, reference, common) if aligned else previous_scale
        return DepthResult(depth * scale, scale, aligned)

    # ------------------------------------------------------------------ denoise one chunk
    def set_timesteps(self, num_inference_steps: int, reference_schedule: bool, device: torch.device) -> None:
        """The scheduler's steps: diffusers' flow-UniPC schedule, or with ``reference_schedule`` the
        one of Wan's own sampler that the trained branches were run with (sigmas ``linspace(0.999, 0)``
        before the shift; ``tests/test_pipeline.py`` checks the timesteps against Wan's)."""
        if reference_schedule:
            sigmas = np.linspace(0.999, 0.0, num_inference_steps + 1)[:-1]
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

    def predict(
        self,
        model_input: Tensor,  # [1, C, F, h, w] in the transformer's dtype
        timestep: Tensor,  # [1, F * h/2 * w/2] per token
        prompt_embeds: Tensor,  # [1, L, D]
        branch_inputs: BranchInputs | None,
    ) -> Tensor:  # -> [1, C, F, h, w]
        """One transformer call: plain, or with the branch's context, references before the chunk and
        preceding latents after it (clean, timestep 0), of which only the chunk's frames are returned."""
        if branch_inputs is None:
            return self.transformer(
                hidden_states=model_input, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False
            )[0]
        refs, after = branch_inputs.references, branch_inputs.preceding  # [1, C, R, h, w], [1, C, Q, h, w]
        R, F_ = refs.shape[2], model_input.shape[2]
        tokens = model_input.shape[3] * model_input.shape[4] // (self.transformer.config.patch_size[1] * self.transformer.config.patch_size[2])
        zeros = timestep.new_zeros(1, R * tokens), timestep.new_zeros(1, after.shape[2] * tokens)
        x = torch.cat([refs.to(model_input), model_input, after.to(model_input)], dim=2)  # [1, C, R + F + Q, h, w]
        v = branched_forward(
            self.transformer, self.branch, x, torch.cat([zeros[0], timestep, zeros[1]], dim=1), prompt_embeds,
            context=branch_inputs.context.to(model_input), num_ref_frames=R,
        )  # fmt: skip
        return v[:, :, R : R + F_]

    @torch.no_grad()
    def denoise_chunk(
        self,
        pinned: Tensor,  # [1, C, P, h, w] the clean latents pinned at the chunk's first P frames
        readout_latents: Tensor,  # [1, C, F, h, w] memory readout (zeros where hidden)
        readout_mask: Tensor,  # [F, h, w] bool visibility of readout_latents
        prompt_embeds: Tensor,  # [1, L, D]
        negative_prompt_embeds: Tensor | None = None,  # [1, L, D], used when guidance_scale > 1
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        memory_mode: MemoryMode = "replace",
        memory_strength: float = 0.8,
        branch_inputs: BranchInputs | None = None,  # memory_mode "branch": what the side branch receives
        reference_schedule: bool = False,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:  # -> [1, C, F, h, w] float32 denoised latents
        """Sample one chunk with its first frames pinned clean and the memory readout imposed
        (training-free modes) or given to the side branch (module docstring)."""
        device = self._execution_device
        dtype = self.transformer.dtype
        _, C, F_, h, w = readout_latents.shape
        P = pinned.shape[2]
        p_t, p_h, p_w = self.transformer.config.patch_size
        if memory_mode == "branch" and (self.branch is None or branch_inputs is None):
            raise ValueError("memory_mode='branch' needs a loaded branch (load_branch) and branch_inputs")
        if self._pinned_offload is not None:
            self._pinned_offload.activate("transformer")  # the branch runs the transformer's parts, not its forward
        self.use_lora(branch_inputs is not None and branch_inputs.use_lora)

        self.set_timesteps(num_inference_steps, reference_schedule, device)
        timesteps = self.scheduler.timesteps  # [S]
        sigmas = self.scheduler.sigmas.tolist()  # [S + 1], last is 0

        eps = randn_tensor((1, C, F_, h, w), generator=generator, device=device, dtype=torch.float32)  # fixed per chunk
        latents = eps.clone()  # [1, C, F, h, w]
        target = readout_latents.to(device, torch.float32).clone()  # [1, C, F, h, w] clean values to impose
        target[:, :, :P] = pinned.to(device, torch.float32)
        first = torch.zeros(F_, h, w, dtype=torch.bool, device=device)  # [F, h, w] the pinned frames
        first[:P] = True
        seen = readout_mask.to(device).clone()  # [F, h, w]
        seen[:P] = False  # the first frames are pinned to their latents, not to the readout
        if memory_mode in ("off", "branch"):
            seen[:] = False
        elif memory_mode == "context":
            seen = token_visible(seen, (p_h, p_w))

        memory_steps = math.ceil(memory_strength * num_inference_steps - 1e-6)  # the first steps impose the memory
        for i, t in enumerate(timesteps):
            active = i < memory_steps
            pin = first | seen if (active and memory_mode == "context") else first  # clean input, timestep 0
            path = pin | seen if active else pin  # cells kept on x_t = (1 - sigma) target + sigma eps
            sigma = sigmas[i]
            latents = torch.where(path, (1.0 - sigma) * target + sigma * eps, latents)
            model_input = torch.where(pin, target, latents).to(dtype)  # [1, C, F, h, w]
            token_pin = pin[::p_t, ::p_h, ::p_w].reshape(-1)  # [F * h/2 * w/2] in the transformer's token order
            timestep = torch.where(token_pin, 0.0, t.float())[None]  # [1, seq_len]
            v = self.predict(model_input, timestep, prompt_embeds, branch_inputs)
            if guidance_scale > 1.0:
                v_uncond = self.predict(model_input, timestep, negative_prompt_embeds, branch_inputs)
                v = v_uncond + guidance_scale * (v - v_uncond)
            v = torch.where(pin, eps - target, v.float())  # pinned cells: the exact velocity of their path
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, num_inference_steps)

        final = first | seen if memory_steps == num_inference_steps else first  # last sigma is 0: x_0 = target
        return torch.where(final, target, latents)

    # ------------------------------------------------------------------ __call__
    def defaults_for(self, memory_mode: MemoryMode) -> GenerationDefaults:
        """The sampling settings a mode's reference uses: Wan2.2's for the training-free modes, the
        loaded branch's checkpoint family's for ``"branch"``."""
        if memory_mode == "branch":
            if self.branch_kind is None:
                raise ValueError("memory_mode='branch' needs a trained branch: call load_branch(...) first")
            return FAMILIES[self.branch_kind].defaults
        return DEFAULTS["training-free"]

    def readout_settings(self, memory: MemoryKind | SpatialMemory, memory_config: MemoryConfig | None,
                         memory_mode: MemoryMode, max_depth: float | None,
                         readouts: Readouts | None) -> tuple[MemoryConfig | None, float | None, bool, str]:  # fmt: skip
        """What the memory is read with. ``readouts="reference"`` (the default with a trained branch): the
        readouts the branch's family was trained on (``FAMILIES[kind].reference_memory``: its memory
        settings, no far cut, the reference's re-storing of latent 0) where the family has them for this
        memory; ``"ours"`` (the default otherwise): our footprint readout and fusion. A ``memory_config``
        passed explicitly is used as given. Returns (config, max_depth, restore_first, what was used:
        "reference" or "ours")."""
        family = FAMILIES[self.branch_kind] if memory_mode == "branch" and self.branch_kind is not None else None
        readouts = ("reference" if family is not None else "ours") if readouts is None else readouts
        if readouts not in READOUTS:
            raise ValueError(f"readouts must be one of {READOUTS}, got {readouts!r}")
        if readouts == "reference" and family is None:
            raise ValueError("readouts='reference' reads as a trained branch's reference: memory_mode='branch' with a branch loaded")
        kind = memory.kind if isinstance(memory, SpatialMemory) else memory
        reference = family.reference_memory.get(kind) if readouts == "reference" else None
        if reference is None or memory_config is not None or isinstance(memory, SpatialMemory):
            return memory_config, max_depth, False, "ours" if reference is None else "as given"
        config = MemoryConfig(**reference)
        return config, config.max_depth, family.restore_first, "reference"

    @torch.no_grad()
    def start(
        self,
        image: Tensor,  # [3, H, W] in [-1, 1]
        path: CameraPath,  # >= num_frames pixel-frame cameras at W x H; frame 0 is the image's camera
        prompt: str | None = None,
        *,
        num_frames: int | None = None,
        chunking: Chunking | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        prompt_embeds: Tensor | None = None,  # [1, L, D] instead of prompt
        negative_prompt_embeds: Tensor | None = None,  # [1, L, D]
        memory: MemoryKind | SpatialMemory = "latent",
        memory_config: MemoryConfig | None = None,
        memory_mode: MemoryMode = "replace",
        memory_strength: float | None = None,
        continuation: Continuation | None = None,
        reference_schedule: bool | None = None,
        max_depth: float | None = 100.0,
        image_depth: Tensor | None = None,  # [H, W] metres for the input image instead of estimating it
        generator: torch.Generator | None = None,
        max_sequence_length: int = 512,
        readouts: Readouts | None = None,
        reseed: bool | None = None,
        pad_last_chunk: bool | None = None,
    ) -> GenerationRun:
        """Steps 1-3 of a generation (check inputs, encode the prompts, the image's latent and depth
        into the memory) as a ``GenerationRun`` that ``step`` takes chunk by chunk. Arguments as
        ``__call__``; ``generator`` seeds the noise of every chunk (a new random seed without one)."""
        d = self.defaults_for(memory_mode) if memory_mode in MEMORY_MODES else DEFAULTS["training-free"]
        memory_config, max_depth, restore_first, readouts = self.readout_settings(
            memory, memory_config, memory_mode, max_depth, readouts)  # fmt: skip
        num_frames = len(path) if num_frames is None and isinstance(path, CameraPath) else num_frames
        chunking = d.chunking if chunking is None else chunking
        num_inference_steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        negative_prompt = d.negative_prompt if negative_prompt is None else negative_prompt
        memory_strength = d.memory_strength if memory_strength is None else memory_strength
        continuation = d.continuation if continuation is None else continuation
        reference_schedule = d.reference_schedule if reference_schedule is None else reference_schedule
        if prompt is not None and memory_mode == "branch":
            prompt = prompt + d.prompt_suffix
        # 1. Check inputs
        self.check_inputs(
            image, path, num_frames, chunking, num_inference_steps, memory, memory_config, memory_mode, memory_strength,
            continuation, prompt, prompt_embeds, guidance_scale, negative_prompt_embeds, image_depth,
        )
        device = self._execution_device
        path = path if num_frames == len(path) else CameraPath.starting_at(path.source, path[:num_frames])
        if d.pad_last_chunk if pad_last_chunk is None else pad_last_chunk:
            path = padded_path(path, chunking)
        image = image.to(device, torch.float32)
        timer = StageTimer(device)
        with timer.record("setup") as setup:
            # 2. Encode the prompts (cached per prompt)
            with timer.stage("prompt"):
                if prompt_embeds is None:
                    prompt_embeds = self.encode_prompt(prompt, max_sequence_length)
                if guidance_scale > 1.0 and negative_prompt_embeds is None:
                    negative_prompt_embeds = self.encode_prompt(negative_prompt, max_sequence_length)
            # 3. The image's latent and depth; the memory
            with timer.stage("init"):
                mem = memory if isinstance(memory, SpatialMemory) else make_memory(memory, memory_config, codec=self.codec,
                                                                                   device=device)  # fmt: skip
                initial: MemoryUpdate | None = None
                if mem.num_points == 0:
                    if image_depth is None:
                        image_depth = self.depth_backend.estimate(image, path.K[0].to(device)).depth
                    first_latent, initial = start_memory(mem, path.source, image, image_depth.to(device).float(),
                                                         self.codec.encode, max_depth)  # [1, C, 1, h, w]  # fmt: skip
                    initial = initial.cpu()
                else:  # a memory that already holds the scene: only the image's latent
                    first_latent = self.codec.encode(image[None, :, None]).float()  # [1, C, 1, h, w]
        if generator is None:
            generator = torch.Generator(device)
            generator.seed()
        settings = dict(num_frames=num_frames, chunking=chunking, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, negative_prompt=negative_prompt if guidance_scale > 1 else None,
                        memory_mode=memory_mode, memory_strength=memory_strength if memory_mode in TRAINING_FREE_MODES else None,
                        continuation=continuation, reference_schedule=reference_schedule, memory=mem.kind,
                        branch=self.branch_kind if memory_mode == "branch" else None, prompt=prompt,
                        readouts=readouts, reseed=d.reseed if reseed is None else reseed, padded_to=len(path))  # fmt: skip
        chunks = ChunkRun(mem, path, first_latent, chunking, continuation, max_depth, restore_first, initial,
                          rng_state=generator.get_state())  # fmt: skip
        cpu = lambda e: None if e is None else e.to("cpu", self.transformer.dtype)  # noqa: E731
        reseed = d.reseed if reseed is None else reseed
        return GenerationRun(chunks, cpu(prompt_embeds), cpu(negative_prompt_embeds), num_inference_steps, guidance_scale,
                             memory_mode, memory_strength, reference_schedule, generator.device.type, settings,
                             first_timings=dict(setup), reseed_state=generator.get_state() if reseed else None,
                             num_frames=num_frames)  # fmt: skip

    @torch.no_grad()
    def step(self, run: GenerationRun, callback: Callable[[int, int, int], None] | None = None) -> ChunkResult:
        """4. The run's next chunk: read -> condition -> denoise -> decode -> depth -> update
        (``mirage.chunks``), on this pipeline's device; the run's memory stays there. callback:
        ``callback(chunk_index, step, num_steps)`` after every step."""
        device = self._execution_device
        c = run.chunks.to(device)
        c.memory.codec = self.codec  # a memory crosses processes without its codec
        generator = torch.Generator(run.rng_device).set_state(c.rng_state if run.reseed_state is None else run.reseed_state)
        prompt_embeds = run.prompt_embeds.to(device)
        negative = None if run.negative_prompt_embeds is None else run.negative_prompt_embeds.to(device)
        if run.memory_mode == "branch":
            if self.branch_kind is None:
                raise ValueError("this run conditions through a trained branch: load_branch(...) first")
            condition = make_conditioner(self.branch_kind, c.memory, c.path, self.codec.encode,
                                         temporal_stride=self.codec.temporal_stride, cache=run.cache)  # fmt: skip
            keep_frame = condition.keep_frame
        else:
            condition, keep_frame = (lambda chunk: None), None  # the training-free modes read chunk.readout directly

        def denoise(chunk: Chunk, branch_inputs: BranchInputs | None) -> Tensor:  # -> [1, C, F, h, w]
            progress = None if callback is None else (lambda i, n: callback(chunk.index, i, n))
            return self.denoise_chunk(
                chunk.pinned, chunk.readout.latents[None], chunk.readout.mask, prompt_embeds, negative,
                num_inference_steps=run.num_inference_steps, guidance_scale=run.guidance_scale,
                memory_mode=run.memory_mode, memory_strength=run.memory_strength, branch_inputs=branch_inputs,
                reference_schedule=run.reference_schedule, generator=generator, callback=progress,
            )  # fmt: skip

        parts = ChunkParts(self.codec, condition, denoise, self.estimate_depth, keep_frame=keep_frame)
        result = step(c, parts, run.first_timings if not c.history else None)
        c.rng_state = generator.get_state()
        return result

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,  # [3, H, W] in [-1, 1]
        path: CameraPath,  # >= num_frames pixel-frame cameras at W x H; frame 0 is the image's camera
        prompt: str | None = None,
        *,
        callback: Callable[[int, int, int], None] | None = None,
        **kwargs: Any,
    ) -> MirageOutput:
        """Generate ``num_frames`` frames (default: the whole path) along ``path`` from ``image``:
        ``start``, then ``step`` for every chunk, then the stitched video.

        Keyword arguments (``start``): num_frames, chunking, num_inference_steps, guidance_scale,
        negative_prompt, prompt_embeds / negative_prompt_embeds ``[1, L, D]``, memory, memory_config,
        memory_mode, memory_strength, continuation, reference_schedule, max_depth, image_depth
        ``[H, W]``, generator, max_sequence_length, readouts (``readout_settings``), reseed, pad_last_chunk;
        and ``single_decode`` (the video as one decode of every chunk's own latents). Settings left at None take the mode's ``DEFAULTS``
        (``defaults_for``): Wan2.2-TI2V-5B's own for the training-free modes, the reference's for a
        trained branch (whose prompt suffix is then appended to ``prompt``). memory: ``"latent"``
        (Mirage), ``"rgb"`` (the RGB point-cloud baseline), made with ``memory_config`` (default
        ``MemoryConfig()``), or an instance; an empty instance is initialized from the image, a
        non-empty one is used as it is (continuing a scene). memory_strength: fraction of the sampling
        steps during which a training-free mode imposes the readout (the first ``ceil(memory_strength *
        num_inference_steps)`` steps). max_depth: cells farther than this (metres, after scale
        alignment) are not stored (far/sky); None keeps everything with valid depth. callback:
        ``callback(chunk_index, step, num_steps)`` after every step.
        """
        single_decode = kwargs.pop("single_decode", None)
        run = self.start(image, path, prompt, **kwargs)
        d = self.defaults_for(run.memory_mode) if run.memory_mode in MEMORY_MODES else DEFAULTS["training-free"]
        single_decode = d.single_decode if single_decode is None else single_decode
        chunks = []
        while not run.chunks.done:
            chunks.append(self.step(run, callback))
        if self._pinned_offload is not None:
            self._pinned_offload.release()  # leave the device empty, as diffusers' offload does after a call
        # 5. The video: later chunks repeat the previous chunk's last `overlap` frames; or one decode of every
        # chunk's own latents (a later chunk's pinned ones are the previous chunk's), as Spatia makes its video
        if single_decode:
            latents = torch.cat([c.latents if i == 0 else c.latents[:, c.pinned_latents :] for i, c in enumerate(chunks)], 1)
            video = self.codec.decode(latents[None].to(self._execution_device))[0].float().cpu()  # [3, T', H, W]
        else:
            video = stitch_chunks([c.frames for c in chunks], 1, run.chunks.chunking.overlap)
        return MirageOutput(video[:, : run.num_frames], chunks, run.chunks.memory, {**run.settings, "single_decode": single_decode},
                            run.chunks.initial)  # fmt: skip
