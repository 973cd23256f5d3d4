"""Long camera-controlled video from one image: Wan2.2 TI2V-5B + a 3D memory, chunk by chunk.

``MiragePipeline`` reads like a diffusers pipeline (check inputs -> encode prompt -> memory from
the image -> per chunk: read memory -> timesteps + latents -> denoise -> decode -> depth -> update)
and returns a ``MirageOutput`` with the video, per-chunk latents and readouts, and per-stage timings.

Chunks (as in the paper): the first covers pixel frames ``0..32`` (33 frames = 9 latent frames), each
later one the next 32 frames plus the previous chunk's last frame, so a video has ``T = 33 + 32k``
frames. Any ``T = 4N + 1`` works: the last chunk is then shorter (still ``4N + 1`` frames). Latent
frame 0 of a chunk is pinned clean, as Wan2.2 TI2V pins the image: the input image's latent for the
first chunk, the previous chunk's last latent after. Latent frame ``k`` of a chunk uses the camera
of its pixel frame ``4k`` (``CONVENTIONS.md``).

Memory conditioning is training-free (the paper's trained side branch is not released). While
``step < memory_strength * num_inference_steps``:

* ``"replace"`` (default): the visible latent cells of the noisy latent are overwritten with the
  readout noised to the current level, ``x_t = (1 - sigma) * readout + sigma * eps``, before every
  transformer call (``eps`` = the chunk's initial noise, fixed per chunk). Every token stays at the
  noise level the model was trained on for frames >= 1, and the remaining steps let the model blend
  seams, holes and reprojection errors. When the replacement lasts to the end (``memory_strength=1``)
  the visible cells of the final latent equal the readout exactly.
* ``"context"``: visible *tokens* are given to the model clean with per-token timestep 0, the
  mechanism TI2V uses for frame 0. A token (patch ``(1, 2, 2)``) counts as visible only when all
  its 2x2 latent cells are. Clean tokens scattered inside noisy frames are outside what TI2V was
  trained on (only whole first frames are clean) and are pinned exactly, so seams are never
  repaired; hence ``"replace"`` is the default. For the scheduler, context cells follow the same
  straight path as in replace mode (the model output there is replaced by ``eps - readout``,
  whose x0-prediction is the readout), so releasing them mid-way is seamless.

Frame 0 is handled the context way at every step (clean input, timestep 0), exactly as diffusers'
``WanImageToVideoPipeline(expand_timesteps=True)`` does.

After each chunk: decode, estimate depth of the latent-aligned frames ``4k`` (``k >= 1``) with the
path's intrinsics, align its scale to the memory's readout depth on the visible cells
(``mirage.depth.align_scale``), drop far/sky cells (``max_depth``) and update the memory: latents for
``LatentSpatialMemory``, decoded RGB frames for ``RGBPointCloudMemory``. The loop is otherwise the
same for both memories.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .cameras import Cameras
from .codecs import WAN22_MODEL_ID, WanVAECodec, check_num_frames, chunk_ranges
from .depth import MIN_ALIGN_PIXELS, DepthBackend, align_scale, estimate_frames, make_depth_backend
from .geometry import downsample_depth, valid_depth
from .memory import LatentSpatialMemory, MemoryReadout, RGBPointCloudMemory
from .timing import StageTimer

__all__ = [
    "MiragePipeline",
    "MirageOutput",
    "MemoryKind",
    "MemoryMode",
    "STAGES",
    "READOUT_PARTS",
    "WAN_UNIPC_CONFIG",
    "chunk_ranges",
    "token_visible",
]

MemoryKind = Literal["latent", "rgb"]
MemoryMode = Literal["replace", "context"]

# Stages of one chunk; they add up to (almost) the chunk's "total". "prompt" and "init" (encode the
# image, its depth, initialize the memory) only occur in chunk 0.
STAGES = ("prompt", "init", "readout", "denoise", "decode", "depth", "update")
# Parts of "readout" that the memories report ("project" for the latent memory; "rasterize" and
# "encode" for the RGB memory). They are *inside* "readout", not additional to it.
READOUT_PARTS = ("project", "rasterize", "encode")

# The scheduler of Wan-AI/Wan2.2-TI2V-5B-Diffusers (scheduler/scheduler_config.json): UniPC on flow
# sigmas with flow_shift 5 (the paper samples with UniPC, flow shift 5, CFG off). Used when the
# components are built without a checkpoint (tests, benchmarks).
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

_SUBFOLDERS = ("transformer", "vae", "scheduler")
_TEXT_SUBFOLDERS = ("text_encoder", "tokenizer")


@dataclass
class MirageOutput:
    """Result of ``MiragePipeline.__call__`` for a video of ``T`` frames at ``H x W`` in ``n`` chunks.

    Chunk ``c`` covers pixel frames ``frame_ranges[c] = (start, stop)`` (stop exclusive, consecutive
    chunks share one frame) and has ``F_c = (stop - start - 1) / 4 + 1`` latent frames of ``h x w``
    (``h = H / 16``, ``w = W / 16``, ``C = 48`` for Wan2.2).
    """

    video: Tensor  # [3, T, H, W] float32 CPU in [-1, 1]
    latents: list[Tensor]  # per chunk [C, F_c, h, w] float32 CPU, normalized latents after denoising
    readouts: list[MemoryReadout]  # per chunk, on CPU: latents [C, F_c, h, w], mask [F_c, h, w]
    memory: LatentSpatialMemory | RGBPointCloudMemory  # the memory after the last update
    chunk_timings: list[dict[str, float]]  # per chunk: STAGES + READOUT_PARTS present + "total", seconds
    peak_memory_bytes: list[int]  # per chunk: torch.cuda.max_memory_allocated (0 on CPU)
    cache_bytes: list[int]  # per chunk: memory.nbytes after its update
    frame_ranges: list[tuple[int, int]] = field(default_factory=list)  # per chunk (start, stop) pixel frames
    depth_scales: list[float] = field(default_factory=list)  # per chunk: scale applied to the estimated depth
    depth_aligned: list[bool] = field(default_factory=list)  # per chunk: False when too few cells overlapped
    # and the previous chunk's scale (1.0 for chunk 0) was kept


def token_visible(mask: Tensor, patch: tuple[int, int] = (2, 2)) -> Tensor:  # [F, h, w] bool -> [F, h, w] bool
    """Cells of tokens whose ``patch`` cells are all visible (the token-resolution visibility)."""
    F_, h, w = mask.shape
    ph, pw = patch
    tokens = mask.reshape(F_, h // ph, ph, w // pw, pw).all(dim=4).all(dim=2)  # [F, h/ph, w/pw]
    return tokens.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)  # [F, h, w] back to cells


def _resolve_checkpoint(path_or_id: str, subfolders: tuple[str, ...], local_files_only: bool | None, cache_dir) -> str:
    """A local folder holding ``subfolders`` of a diffusers checkpoint (local path, HF cache or download)."""
    missing_hint = (
        f"MiragePipeline needs the Wan2.2 TI2V-5B weights (diffusers layout with {', '.join(subfolders)}/): "
        f"download them where there is network (`hf download {WAN22_MODEL_ID}`) and pass the folder, "
        f"or build the components yourself and call MiragePipeline(transformer=..., vae=..., scheduler=...)."
    )
    if os.path.isdir(path_or_id):
        absent = [s for s in subfolders if not os.path.isdir(os.path.join(path_or_id, s))]
        if absent:
            raise FileNotFoundError(f"{path_or_id!r} lacks the subfolders {absent}. {missing_hint}")
        return path_or_id
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    local_only = offline if local_files_only is None else bool(local_files_only)
    patterns = ["model_index.json"] + [f"{s}/*" for s in subfolders]
    try:
        folder = snapshot_download(path_or_id, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir)
    except Exception as err:  # not cached / no network / bad id: all mean "weights not available"
        raise FileNotFoundError(
            f"No weights for {path_or_id!r} (local_files_only={local_only}, HF_HUB_OFFLINE={'set' if offline else 'unset'}): "
            f"{type(err).__name__}: {err}. {missing_hint}"
        ) from err
    absent = [s for s in subfolders if not os.path.isdir(os.path.join(folder, s))]
    if absent:
        raise FileNotFoundError(f"the checkpoint {path_or_id!r} at {folder!r} lacks {absent}. {missing_hint}")
    return folder


class MiragePipeline(DiffusionPipeline):
    """Wan2.2 TI2V-5B with a latent (Mirage) or RGB point-cloud (baseline) 3D memory.

    Components: ``transformer`` (``WanTransformer3DModel``), ``vae`` (``AutoencoderKLWan``, wrapped in
    ``mirage.codecs.WanVAECodec`` so latents are normalized as the memory expects), ``scheduler``
    (flow-matching UniPC), optional ``text_encoder`` (``UMT5EncoderModel``) + ``tokenizer`` (pass
    ``prompt_embeds`` without them), and a ``depth_backend`` (``mirage.depth.DepthBackend``).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        depth_backend: DepthBackend | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.codec = WanVAECodec(vae)
        self.depth_backend = depth_backend
        self.prompt_cache: dict[tuple[str, int], Tensor] = {}  # (prompt, max_sequence_length) -> [1, L, D]
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
        vae_dtype: torch.dtype | None = None,
        depth_backend: DepthBackend | str | None = "depth-pro",
        flow_shift: float | None = 5.0,
        load_text_encoder: bool = True,
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
        **depth_kwargs: Any,
    ) -> "MiragePipeline":
        """Load Wan2.2 TI2V-5B (diffusers layout) from a hub id, a local folder or the HF cache.

        ``vae_dtype`` defaults to ``torch_dtype``; ``flow_shift=None`` keeps the checkpoint's scheduler
        config; ``depth_backend`` is a backend, a ``mirage.depth.DEPTH_SOURCES`` name (built with
        ``make_depth_backend(name, **depth_kwargs)``) or None (then ``__call__`` needs one set later).
        ``local_files_only=None`` means offline only when ``HF_HUB_OFFLINE`` is set. Missing weights
        raise ``FileNotFoundError`` naming the path.
        """
        from transformers import AutoTokenizer, UMT5EncoderModel

        path_or_id = os.fspath(path_or_id)
        subfolders = _SUBFOLDERS + (_TEXT_SUBFOLDERS if load_text_encoder else ())
        root = _resolve_checkpoint(path_or_id, subfolders, local_files_only, cache_dir)
        transformer = WanTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=torch_dtype)
        codec = WanVAECodec.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype or torch_dtype)
        extra = {} if flow_shift is None else {"flow_shift": float(flow_shift)}
        scheduler = UniPCMultistepScheduler.from_pretrained(root, subfolder="scheduler", **extra)
        text_encoder = tokenizer = None
        if load_text_encoder:
            text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        if isinstance(depth_backend, str):
            depth_backend = make_depth_backend(depth_backend, **depth_kwargs)
        return cls(transformer, codec.vae, scheduler, text_encoder, tokenizer, depth_backend)

    def enable_vae_tiling(self, **kwargs: Any) -> None:
        """Spatially tiled VAE encode/decode (``AutoencoderKLWan.enable_tiling`` kwargs)."""
        self.codec.enable_tiling(**kwargs)

    # ------------------------------------------------------------------ 1. inputs
    def check_inputs(
        self,
        image: Tensor,
        cameras: Cameras,
        num_frames: int,
        chunk_frames: int,
        num_inference_steps: int,
        memory: Any,
        memory_mode: str,
        memory_strength: float,
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
        check_num_frames(num_frames, self.codec.temporal_stride)
        check_num_frames(chunk_frames, self.codec.temporal_stride)
        if num_frames < 5 or chunk_frames < 5:
            raise ValueError(f"num_frames and chunk_frames must be 4N+1 with N >= 1, got {num_frames} and {chunk_frames}")
        if not isinstance(cameras, Cameras):
            raise ValueError(f"cameras must be mirage.cameras.Cameras, got {type(cameras).__name__}")
        if len(cameras) < num_frames:
            raise ValueError(f"the camera path has {len(cameras)} cameras, shorter than the video's num_frames={num_frames}")
        if (cameras.width, cameras.height) != (W, H):
            raise ValueError(f"cameras are {cameras.width}x{cameras.height} but the image is {W}x{H}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if not (isinstance(memory, (LatentSpatialMemory, RGBPointCloudMemory)) or memory in ("latent", "rgb")):
            raise ValueError(f"memory must be 'latent', 'rgb' or a memory instance, got {memory!r}")
        if memory_mode not in ("replace", "context"):
            raise ValueError(f"memory_mode must be 'replace' or 'context', got {memory_mode!r}")
        if not (0.0 <= float(memory_strength) <= 1.0):
            raise ValueError(f"memory_strength must be in [0, 1], got {memory_strength!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
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
        embeds = self.text_encoder(ids.to(device), attn.to(device)).last_hidden_state  # [1, L, D]
        embeds = embeds * attn.to(device)[..., None].to(embeds.dtype)  # zeros after the prompt's tokens
        self.prompt_cache[key] = embeds.to(self.transformer.dtype)
        return self.prompt_cache[key]

    # ------------------------------------------------------------------ helpers
    def _make_memory(self, memory, device: torch.device):
        if memory == "latent":
            return LatentSpatialMemory(
                spatial_stride=self.codec.spatial_stride, temporal_stride=self.codec.temporal_stride, device=device
            )
        if memory == "rgb":
            return RGBPointCloudMemory(self.codec, device=device)
        return memory

    def _estimate_depth(self, frames: Tensor, K: Tensor) -> Tensor:  # frames [3, F, H, W]; K [F, 3, 3] -> [F, H, W]
        """Depth of frames with their own intrinsics (zoom paths change ``K`` per frame)."""
        return estimate_frames(self.depth_backend, frames, K)

    # ------------------------------------------------------------------ 5. denoise one chunk
    @torch.no_grad()
    def denoise_chunk(
        self,
        first_latent: Tensor,  # [1, C, 1, h, w] the clean latent pinned at frame 0
        readout_latents: Tensor,  # [1, C, F, h, w] memory readout (zeros where hidden)
        readout_mask: Tensor,  # [F, h, w] bool visibility of readout_latents
        prompt_embeds: Tensor,  # [1, L, D]
        negative_prompt_embeds: Tensor | None = None,  # [1, L, D], used when guidance_scale > 1
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        memory_mode: MemoryMode = "replace",
        memory_strength: float = 0.8,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:  # -> [1, C, F, h, w] float32 denoised latents
        """Sample one chunk with frame 0 pinned clean and the memory readout imposed (module docstring)."""
        device = self._execution_device
        dtype = self.transformer.dtype
        _, C, F_, h, w = readout_latents.shape
        p_t, p_h, p_w = self.transformer.config.patch_size

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps  # [S]
        sigmas = self.scheduler.sigmas.tolist()  # [S + 1], last is 0

        eps = randn_tensor((1, C, F_, h, w), generator=generator, device=device, dtype=torch.float32)  # fixed per chunk
        latents = eps.clone()  # [1, C, F, h, w]
        target = readout_latents.to(device, torch.float32).clone()  # [1, C, F, h, w] clean values to impose
        target[:, :, :1] = first_latent.to(device, torch.float32)
        frame0 = torch.zeros(F_, h, w, dtype=torch.bool, device=device)  # [F, h, w]
        frame0[0] = True
        seen = readout_mask.to(device).clone()  # [F, h, w]
        seen[0] = False  # frame 0 is pinned to first_latent, not to the readout
        if memory_mode == "context":
            seen = token_visible(seen, (p_h, p_w))

        memory_steps = math.ceil(memory_strength * num_inference_steps - 1e-6)  # the first steps impose the memory
        for i, t in enumerate(timesteps):
            active = i < memory_steps
            pin = frame0 | seen if (active and memory_mode == "context") else frame0  # clean input, timestep 0
            path = pin | seen if active else pin  # cells kept on x_t = (1 - sigma) target + sigma eps
            sigma = sigmas[i]
            latents = torch.where(path, (1.0 - sigma) * target + sigma * eps, latents)
            model_input = torch.where(pin, target, latents).to(dtype)  # [1, C, F, h, w]
            token_pin = pin[::p_t, ::p_h, ::p_w].reshape(-1)  # [F * h/2 * w/2] in the transformer's token order
            timestep = torch.where(token_pin, 0.0, t.float())[None]  # [1, seq_len]
            v = self.transformer(
                hidden_states=model_input, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False
            )[0]
            if guidance_scale > 1.0:
                v_uncond = self.transformer(
                    hidden_states=model_input, timestep=timestep, encoder_hidden_states=negative_prompt_embeds,
                    return_dict=False,
                )[0]
                v = v_uncond + guidance_scale * (v - v_uncond)
            v = torch.where(pin, eps - target, v.float())  # pinned cells: the exact velocity of their path
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, num_inference_steps)

        final = frame0 | seen if memory_steps == num_inference_steps else frame0  # last sigma is 0: x_0 = target
        return torch.where(final, target, latents)

    # ------------------------------------------------------------------ __call__
    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,  # [3, H, W] in [-1, 1]
        cameras: Cameras,  # >= num_frames pixel-frame cameras at W x H; camera 0 is the image's
        prompt: str | None = None,
        *,
        num_frames: int = 65,
        chunk_frames: int = 33,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
        prompt_embeds: Tensor | None = None,  # [1, L, D] instead of prompt
        negative_prompt_embeds: Tensor | None = None,  # [1, L, D]
        memory: MemoryKind | LatentSpatialMemory | RGBPointCloudMemory = "latent",
        memory_mode: MemoryMode = "replace",
        memory_strength: float = 0.8,
        max_depth: float | None = 100.0,
        image_depth: Tensor | None = None,  # [H, W] metres for the input image instead of estimating it
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, int], None] | None = None,
        max_sequence_length: int = 512,
    ) -> MirageOutput:
        """Generate ``num_frames`` frames along ``cameras`` from ``image``.

        memory: ``"latent"`` (Mirage), ``"rgb"`` (the RGB point-cloud baseline) or an instance; an
        empty instance is initialized from the image, a non-empty one is used as it is (continuing a
        scene). memory_strength: fraction of the sampling steps during which the readout is imposed
        (the first ``ceil(memory_strength * num_inference_steps)`` steps).
        max_depth: cells farther than this (metres, after scale alignment) are not stored (far/sky);
        None keeps everything with valid depth. callback: ``callback(chunk_index, step, num_steps)``
        after every step. Default ``memory_strength=0.8``: with flow shift 5 the noise level after 80%
        of 20 steps is still sigma ~0.56, so the memory has to hold through most of the schedule to
        fix the layout; the last steps let the model blend seams.
        """
        # 1. Check inputs
        self.check_inputs(
            image, cameras, num_frames, chunk_frames, num_inference_steps, memory, memory_mode, memory_strength,
            prompt, prompt_embeds, guidance_scale, negative_prompt_embeds, image_depth,
        )
        device = self._execution_device
        ranges = chunk_ranges(num_frames, chunk_frames)
        timer = StageTimer(device)
        on_cuda = device.type == "cuda"
        cameras = cameras[:num_frames]
        image = image.to(device, torch.float32)

        timings: list[dict[str, float]] = []
        peaks: list[int] = []
        cache_bytes: list[int] = []
        chunk_latents: list[Tensor] = []
        readouts: list[MemoryReadout] = []
        video_parts: list[Tensor] = []
        scales: list[float] = []
        aligned: list[bool] = []
        scale = 1.0

        for c, (start, stop) in enumerate(ranges):
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            chunk_start = time.perf_counter()
            with timer.record(f"chunk {c}") as rec:
                if c == 0:
                    # 2. Encode the prompt (cached per prompt)
                    with timer.stage("prompt"):
                        if prompt_embeds is None:
                            prompt_embeds = self.encode_prompt(prompt, max_sequence_length)
                        if guidance_scale > 1.0 and negative_prompt_embeds is None:
                            negative_prompt_embeds = self.encode_prompt(negative_prompt, max_sequence_length)
                        prompt_embeds = prompt_embeds.to(device, self.transformer.dtype)
                        if negative_prompt_embeds is not None:
                            negative_prompt_embeds = negative_prompt_embeds.to(device, self.transformer.dtype)
                    # 3. The image's latent and depth; the memory
                    with timer.stage("init"):
                        first_latent = self.codec.encode(image[None, :, None]).float()  # [1, C, 1, h, w]
                        mem = self._make_memory(memory, device)
                        if mem.num_points == 0:
                            if image_depth is None:
                                image_depth = self.depth_backend.estimate(image, cameras.K[0].to(device)).depth
                            d0 = image_depth.to(device).float()  # [H, W]
                            far = None if max_depth is None else (d0 > max_depth)
                            if isinstance(mem, LatentSpatialMemory):
                                mem.initialize(first_latent[0, :, 0].to(self.codec.dtype), d0, cameras.camera(0), far)
                            else:
                                mem.initialize(image, d0, cameras.camera(0), far)
                else:
                    first_latent = chunk_latents[-1][None, :, -1:].to(device)  # [1, C, 1, h, w] previous last latent
                chunk_cams = cameras[start:stop]  # [T_c] pixel-frame cameras
                latent_cams = chunk_cams[:: self.codec.temporal_stride]  # [F_c] cameras of frames 4k

                # 4. Read the memory for the chunk's cameras
                with timer.stage("readout"):
                    readout = mem.read(chunk_cams)  # latents [C, F, h, w], mask [F, h, w]
                rec.update(readout.timings)

                # 5. Denoise
                with timer.stage("denoise"):
                    step_callback = None if callback is None else (lambda i, n, c=c: callback(c, i, n))
                    latents = self.denoise_chunk(
                        first_latent, readout.latents[None], readout.mask, prompt_embeds, negative_prompt_embeds,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        memory_mode=memory_mode, memory_strength=memory_strength, generator=generator,
                        callback=step_callback,
                    )  # [1, C, F, h, w]

                # 6. Decode
                with timer.stage("decode"):
                    frames = self.codec.decode(latents)[0].float()  # [3, T_c, H, W]

                # 7. Depth of the new latent-aligned frames 4k (k >= 1), aligned to the memory
                with timer.stage("depth"):
                    new_frames = frames[:, self.codec.temporal_stride :: self.codec.temporal_stride]  # [3, F-1, H, W]
                    new_cams = latent_cams[1:]
                    depth = self._estimate_depth(new_frames, new_cams.K.to(device)).float()  # [F-1, H, W]
                    reference = readout.depth[1:]  # [F-1, h, w] the memory's depth, NaN where hidden
                    depth_lat = downsample_depth(depth, self.codec.spatial_stride)  # [F-1, h, w]
                    common = readout.mask[1:].to(device) & valid_depth(depth_lat) & valid_depth(reference.to(device))
                    ok = int(common.sum()) >= MIN_ALIGN_PIXELS
                    if ok:
                        scale = align_scale(depth_lat, reference.to(device), common)
                    depth = depth * scale
                    scales.append(scale)
                    aligned.append(ok)

                # 8. Update the memory
                with timer.stage("update"):
                    far = None if max_depth is None else (depth > max_depth)  # [F-1, H, W] far/sky
                    if isinstance(mem, LatentSpatialMemory):
                        mem.update(latents[0, :, 1:].to(self.codec.dtype), depth, new_cams, far)
                    else:
                        mem.update(new_frames, depth, new_cams, far)

            rec["total"] = time.perf_counter() - chunk_start
            timings.append(dict(rec))
            peaks.append(int(torch.cuda.max_memory_allocated(device)) if on_cuda else 0)
            cache_bytes.append(int(mem.nbytes))
            chunk_latents.append(latents[0].float().cpu())
            readouts.append(_readout_to_cpu(readout))
            video_parts.append((frames if c == 0 else frames[:, 1:]).cpu())  # later chunks: frame 0 is shared

        self.maybe_free_model_hooks()
        return MirageOutput(
            video=torch.cat(video_parts, dim=1),  # [3, T, H, W]
            latents=chunk_latents,
            readouts=readouts,
            memory=mem,
            chunk_timings=timings,
            peak_memory_bytes=peaks,
            cache_bytes=cache_bytes,
            frame_ranges=ranges,
            depth_scales=scales,
            depth_aligned=aligned,
        )


def _readout_to_cpu(r: MemoryReadout) -> MemoryReadout:
    move = lambda x: None if x is None else x.cpu()  # noqa: E731
    return MemoryReadout(
        latents=r.latents.cpu(), mask=r.mask.cpu(), depth=move(r.depth), renders=move(r.renders),
        pixel_mask=move(r.pixel_mask), pixel_depth=move(r.pixel_depth), timings=dict(r.timings),
    )
