"""Spatia's sampling loop against ours over two rounds, at a tiny fp32 size with one set of random weights.

Reference: ZhaoJingjing713/Spatia at 5dd3457 (``inference.py``: ``generate_video``, ``set_pipe_units``,
``get_round_range``, ``compute_total_rounds``, ``get_args``; ``wan/wan_video_new.py``:
``WanVideoPipeline.call_latent_inference`` with its units, VACE context, history and reference latents;
its vendored ``WanModel`` / ``VaceWanModel`` / ``FlowUniPCMultistepScheduler`` / LoRA loader). Spatia's
``wan/`` imports DiffSynth-Studio 1.x (``diffsynth.utils.BasePipeline``, ``diffsynth.lora``, ...), which
DiffSynth 2.x no longer has: the folder ``DiffSynth-Studio-1.1.9/`` holds the PyPI wheel
``diffsynth==1.1.9`` unpacked (its tokenizer data left out; nothing here reads it).

Ours: ``MiragePipeline`` with a Spatia branch (``load_branch("spatia", ...)``: the same random VACE
weights and LoRA), the pixel memory read as Spatia renders (``readouts="reference"``:
``spatia-reference``), ``SpatiaConditioner``, and the family's defaults (reseeding every round,
padding the last round with the last camera, one decode of all rounds' latents).

Both sides run the same tiny models: the reference's ``WanModel`` (TI2V flags) and ``VaceWanModel``
(blocks after layers 0 and 4, Spatia's every 4th layer) with every parameter random from ``--seed``,
converted to ours (``benchmarks/diffsynth_equivalence.py``: diffusers' own converter for the DiT,
``mirage.checkpoints`` for the branch), a random rank-4 LoRA in Spatia's file layout, and the path
``17`` frames long in rounds of ``13`` then ``13`` sharing ``5`` (Spatia's 121 / 81 / 9 at a tiny
size), so that the second round is padded with its last camera.

What is replaced on the reference side, and why:

* **VAE and text encoder**: one shared model. The reference pipeline's ``vae`` is our tiny
  diffusers ``AutoencoderKLWan`` (``mirage.codecs.WanVAECodec``) behind the interface the pipeline
  calls (``encode`` of a list of videos, each alone; ``decode``; ``model.z_dim``; ``upsampling_factor``),
  and its ``prompter`` returns the same random prompt embeddings that ours is given for the prompt
  and the negative prompt (no text encoder on either side).
* **MapAnything, the PyTorch3D render and the reference selection** (``run_mapanything``,
  ``run_render``, ``select_reference_frames`` with open3d and triton) cannot run here or on the GPU
  machine (no pytorch3d wheel, no open3d): they are subprocesses and files around the sampling loop,
  not part of it. For each round the render and score videos come from our ``spatia-reference``
  readout of the memory as the round starts (identical depth: the memory is built from one given
  depth map and ``PlanarPriorBackend``; there is no depth model on either side), the history frames
  are our previous round's decoded frames and the references are the frames our
  ``spatia_references`` chooses among the candidates Spatia offers (every ``ref_hist_stride``-th earlier
  frame, targets every ``ref_stride``-th camera of the round, strides from the reference's own
  ``get_args`` defaults); path frame 0 is the input image itself, as in Spatia's ``all_hist_frames``.
  These are given to *both* sides.
* Videos are handed to the reference as float tensors ``[3, H, W]`` in ``[0, 255]`` (its
  ``preprocess_image`` takes tensors), not as the 8-bit mp4 frames ``generate_video`` reads back:
  the 8-bit round trips are not part of the comparison (``round_8bit_history``, reported apart: the
  second round run by the reference with its history and references rounded to 8 bits, as
  ``vae_output_to_video`` makes them, is how far that rounding alone moves its result).
* Attention is SDPA (flash-attn rejects fp32), TF32 off. The reference's LoRA dictionary is built from
  the file layout as ``build_pipe`` builds it (keys with ``pipe.dit.`` stripped).

Compared, per round: the VACE context (render latent + score latent, 96 channels), the reference and
history latents placed before / at the start of the round, the final latents, and after both rounds
the single final decode (the reference's ``vae.decode`` of round 0's latents and round 1's after its
history latents, against ``MiragePipeline.__call__(single_decode=True)``; the reference keeps the padded
frames, ours stops at the path's end: the common frames are compared). The round inputs: the
reference's ``get_args`` defaults against ``FAMILIES["spatia"]``, the timesteps of its UniPC schedule
against ours, and its round ranges (``compute_total_rounds``, ``get_round_range``, padding to the
round's full length) against ``Chunking.ranges`` of ``padded_path`` at the tiny and the full size. The
PyTorch3D rasterizer itself is tested in ``tests/test_point_raster.py``.

Passes when every difference is ``<= --tolerance`` (1e-4), every round-input check agrees and the
second round used references; exits 1 otherwise. ``--reference-root DIR`` holds ``Spatia/`` and
``DiffSynth-Studio-1.1.9/``. DiffSynth 1.1.9's package ``__init__`` files (``diffsynth``,
``diffsynth.models``, ``diffsynth.prompters``) are not run: they import every model family DiffSynth had,
some written for transformers 4; the submodules Spatia names are imported alone. ``--stub-missing``
(clearly a stand-in, off by default) puts empty modules into ``sys.modules`` for packages that fail to
import and that the compared code only imports, never calls (open3d from ``inference.py``, modelscope
from ``diffsynth.utils``, torchvision where absent, ...; calling anything in one raises; the list is
reported). Spatia's ``WanModel`` needs ``einops``:

    python benchmarks/spatia_loop_equivalence.py --reference-root .whl/ref --stub-missing --out spatia_loop.json
    python benchmarks/spatia_loop_equivalence.py --reference-root .whl/ref --stub-missing --device cpu --steps 4
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import platform
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import UniPCMultistepScheduler
from PIL import Image
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsynth_equivalence import (  # noqa: E402
    DIT, LATENT_HW, build_dit, equivalence_parser, exact_fp32, force_sdpa, max_diff, to_diffusers,
)  # fmt: skip

from mirage.chunks import history_frames  # noqa: E402
from mirage.codecs import WanVAECodec  # noqa: E402
from mirage.conditioning import BranchInputs, spatia_references  # noqa: E402
from mirage.depth import PlanarPriorBackend  # noqa: E402
from mirage.families import FAMILIES, SPATIA_NEGATIVE_PROMPT  # noqa: E402
from mirage.frames import Chunking  # noqa: E402
from mirage.images import to_uint8  # noqa: E402
from mirage.paths import CameraPath, make_preset_path  # noqa: E402
from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline, padded_path  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.testing import TINY_VAE_CONFIG, randomize_parameters, tiny_lora_state_dict  # noqa: E402

REFERENCE_COMMIT = "ZhaoJingjing713/Spatia 5dd3457"
H, W = LATENT_HW[0] * 16, LATENT_HW[1] * 16  # 128 x 192 pixels: 8 x 12 latent cells
NUM_FRAMES = 17  # two rounds: (0, 13) and (8, 17), the second padded to 13 frames
CHUNKING = Chunking(13, 13, 5)  # Spatia's first_round_frames / round_frames / hist_frames at a tiny size
TEXT_TOKENS = 16
PROMPT = "a room"
# Packages the compared code only imports (Spatia's inference.py and wan/, the DiffSynth 1.1.9 modules
# they name): stood in for with --stub-missing when they fail to import
STUBBABLE = ("open3d", "torchvision", "modelscope", "imageio", "imageio_ffmpeg", "cv2", "decord", "controlnet_aux",
             "sentencepiece", "ftfy", "regex", "peft", "accelerate", "matplotlib", "av", "pandas", "datasets")  # fmt: skip


# ----------------------------------------------------------------------------- stand-ins for absent packages
class _AbsentMeta(type):
    """A stand-in class: any attribute is another stand-in; calling one raises."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AbsentMeta(f"{cls.__name__}.{name}", (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__} belongs to a package stood in for by --stub-missing: the compared code called it")


class _AbsentModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AbsentMeta(f"{self.__name__}.{name}", (), {})


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: answers only for ``STUBBABLE`` packages no other finder found."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in STUBBABLE:
            return None
        self.used.append(name)
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = _AbsentModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


# ----------------------------------------------------------------------------- the reference
@dataclass
class Reference:
    inference: types.ModuleType  # Spatia's inference.py
    new: types.ModuleType  # wan.wan_video_new
    dit: types.ModuleType  # wan.wan_video_dit
    vace: types.ModuleType  # wan.wan_video_vace
    args: argparse.Namespace  # inference.get_args() defaults
    stubbed: list[str]


def load_reference(root: Path, stub_missing: bool) -> Reference:
    """Spatia's ``inference`` and ``wan`` modules on DiffSynth 1.1.9, from ``root``."""
    spatia, diffsynth = root / "Spatia", root / "DiffSynth-Studio-1.1.9"
    for folder, marker in ((spatia, "wan/wan_video_new.py"), (diffsynth, "diffsynth/utils/__init__.py")):
        if not (folder / marker).is_file():
            raise FileNotFoundError(f"{folder} lacks {marker}: see --reference-root in the docstring")
    sys.path[:0] = [str(spatia), str(diffsynth)]
    stand_ins = _StandIns()
    if stub_missing:
        sys.meta_path.append(stand_ins)
    bare_packages(diffsynth / "diffsynth", ("", "models", "prompters"))
    import diffsynth as ds
    from diffsynth.data import VideoData, save_video
    from diffsynth.models.utils import load_state_dict

    ds.VideoData, ds.save_video, ds.load_state_dict = VideoData, save_video, load_state_dict  # what inference.py imports
    sys.modules["diffsynth.models"].load_state_dict = load_state_dict  # what wan_video_new.py imports
    import inference
    from wan import wan_video_dit, wan_video_new, wan_video_vace

    force_sdpa(wan_video_dit)
    argv, sys.argv = sys.argv, ["inference.py"]
    try:
        args = inference.get_args()  # its defaults
    finally:
        sys.argv = argv
    return Reference(inference, wan_video_new, wan_video_dit, wan_video_vace, args, sorted(set(stand_ins.used)))


def bare_packages(folder: Path, names: tuple[str, ...]) -> None:
    """Register DiffSynth 1.1.9's packages ``names`` (under ``folder``) without running their
    ``__init__``: those import every model family DiffSynth had (Stable Diffusion, Flux, StepVideo, ...),
    some written for transformers 4; Spatia's modules then import the submodules they name."""
    for name in names:
        full = "diffsynth" + (f".{name}" if name else "")
        package = types.ModuleType(full)
        package.__path__ = [str(folder / name) if name else str(folder)]
        sys.modules[full] = package


class SharedVAE:
    """Our VAE behind the interface Spatia's pipeline calls (its ``WanVideoVAE38``): ``encode`` takes
    videos ``[3, T, H, W]`` (a list or a batch) and encodes each alone, ``decode`` a batch."""

    def __init__(self, codec: WanVAECodec) -> None:
        self.codec = codec
        self.model = types.SimpleNamespace(z_dim=codec.latent_channels)
        self.upsampling_factor = codec.spatial_stride

    def encode(self, videos, device, tiled=False, **tiling) -> Tensor:  # -> [B, C, F, h, w]
        return torch.stack([self.codec.encode(v[None].to(device).float())[0] for v in videos])

    def decode(self, latents: Tensor, device, tiled=False, **tiling) -> Tensor:  # [B, C, F, h, w] -> [B, 3, T, H, W]
        return self.codec.decode(latents.to(device))


class GivenPrompts:
    """The reference's prompter with the text encoder replaced by given embeddings, one per prompt."""

    def __init__(self, table: dict[str, Tensor]) -> None:
        self.table = table

    def encode_prompt(self, prompt: str, positive: bool = True, device=None) -> Tensor:  # -> [1, L, D]
        return self.table[prompt].to(device)


class CallRecorder:
    """Wraps the reference pipeline's model function: keeps its first call's inputs per round."""

    def __init__(self, pipe) -> None:
        self.first: dict[str, Any] | None = None
        real = pipe.model_fn

        def model_fn(**kwargs):
            if self.first is None:
                self.first = {k: kwargs[k].clone() if isinstance(kwargs[k], Tensor) else kwargs[k]
                              for k in ("latents", "vace_context", "num_ref_frames") if k in kwargs}  # fmt: skip
            return real(**kwargs)

        pipe.model_fn = model_fn


def pixels(frames: Tensor) -> list[Tensor]:  # [3, T, H, W] in [-1, 1] -> T x [3, H, W] in [0, 255]
    """Frames as the reference's ``preprocess_image`` takes tensors: channels first, 0 .. 255, unrounded."""
    return [(f + 1) * 127.5 for f in frames.unbind(1)]


def rounded(frames: list) -> list:  # -> the same frames cut to 8 bits as vae_output_to_video makes them (clip, truncate)
    return [f if isinstance(f, Image.Image) else Image.fromarray(f.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy())
            for f in frames]  # fmt: skip


# ----------------------------------------------------------------------------- our run, recorded
@dataclass
class Round:
    """One round as both sides receive it, and what ours made of it."""

    frame_range: tuple[int, int]
    render: Tensor  # [3, T, H, W] in [-1, 1] what the memory shows (the control video)
    holes: Tensor  # [T, H, W] in [0, 1] 1 - coverage (the score video)
    history: Tensor | None  # [3, overlap, H, W] the previous round's last decoded frames (None in round 0)
    references: list[int]  # path frames chosen as references
    reference_frames: Tensor | None  # [3, R, H, W] their decoded frames (None in round 0)
    inputs: BranchInputs | None = None  # what our branch received
    latents: Tensor | None = None  # [C, F, h, w] our final latents


def run_ours(pipe: MiragePipeline, image: Tensor, depth: Tensor, path: CameraPath, embeds: tuple[Tensor, Tensor],
             steps: int, seed: int, ref_stride: int, ref_hist_stride: int):  # fmt: skip
    """``MiragePipeline.__call__`` with its family's defaults, each round's inputs recorded as it starts."""
    rounds: list[Round] = []
    real_step, real_denoise = pipe.step, pipe.denoise_chunk
    family = FAMILIES["spatia"]

    def step(run, callback=None):
        c = run.chunks
        start, stop = c.ranges[len(c.history)]
        cams = c.path[start:stop]
        shown = c.memory.render(cams)  # the readout the round is about to read (the same state, the same raster)
        pool = list(range(0, start, ref_hist_stride))
        chosen = spatia_references(c.memory, cams[::ref_stride], c.path[torch.tensor(pool)],
                                   max_references=family.max_references) if pool else []  # fmt: skip
        chosen = [pool[j] for j in chosen]
        history = history_frames(c.history, list(range(start, start + CHUNKING.overlap))) if c.history else None
        frames = history_frames(c.history, chosen) if chosen else None
        rounds.append(Round((start, stop), shown.frames.cpu(), 1 - shown.coverage.cpu().float(), history, chosen, frames))
        result = real_step(run, callback)
        rounds[-1].latents = result.latents
        return result

    def denoise_chunk(*args, branch_inputs=None, **kwargs):
        rounds[-1].inputs = branch_inputs
        return real_denoise(*args, branch_inputs=branch_inputs, **kwargs)

    pipe.step, pipe.denoise_chunk = step, denoise_chunk
    out = pipe(image, path, prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], memory="rgb",
               memory_mode="branch", chunking=CHUNKING, num_inference_steps=steps, image_depth=depth,
               generator=torch.Generator("cpu").manual_seed(seed))  # fmt: skip
    return out, rounds


# ----------------------------------------------------------------------------- the reference's rounds
def run_reference(ref: Reference, pipe, rounds: list[Round], image_pil, lora: dict, prompts: tuple[str, str],
                  steps: int, rounding: bool = False, only: int | None = None) -> list[dict]:  # fmt: skip
    """``call_latent_inference`` per round as ``generate_video`` calls it, on the recorded inputs."""
    a, inf = ref.args, ref.inference
    out = []
    for r, rd in enumerate(rounds):
        if only is not None and r != only:
            continue
        first = r == 0
        if first:
            inf.set_pipe_units(pipe, hist_frames=CHUNKING.overlap, use_history=False)
            pipe.unload_lora(pipe.dit, lora_state_dict=lora)
        else:
            inf.set_pipe_units(pipe, hist_frames=CHUNKING.overlap, use_history=True)
            pipe.load_lora(pipe.dit, lora_state_dict=lora)
        history = None if first else pixels(rd.history)
        refs = None
        if not first:  # path frame 0 is the input image itself, as in Spatia's all_hist_frames
            refs = [image_pil if t == 0 else f for t, f in zip(rd.references, pixels(rd.reference_frames))] if rd.references else []
        if rounding and not first:
            history, refs = rounded(history), rounded(refs)
        target = CHUNKING.first if first else CHUNKING.frames
        recorder = CallRecorder(pipe)
        _, latents = pipe.call_latent_inference(
            prompt=prompts[0], negative_prompt=prompts[1], seed=a.seed, tiled=False, height=H, width=W,
            input_video=history, input_image=image_pil if first else None, control_video=pixels(rd.render),
            control_score=[h.expand(3, -1, -1) * 255 for h in rd.holes.unbind(0)], ref_images=refs,
            ar_hist_latents_num=0 if first else CHUNKING.pinned_latents(), vace_scale=a.vace_scale, num_frames=target,
            num_inference_steps=steps, cfg_scale=a.cfg_scale, sigma_shift=a.sigma_shift, sampler=a.sampler,
            return_latents=True, verbose=False,
        )  # fmt: skip
        pipe.model_fn = ref.new.model_fn_wan_video
        out.append(dict(latents=latents[0].float().cpu(), first_call=recorder.first, timesteps=pipe.scheduler.timesteps.cpu()))
    return out


# ----------------------------------------------------------------------------- round inputs
def round_ranges(ref: Reference, total: int, chunking: Chunking) -> dict:
    """Spatia's rounds of a ``total``-frame path (padded to full length) against ours (``padded_path``)."""
    inf = ref.inference
    n = inf.compute_total_rounds(total, chunking.first, chunking.frames, chunking.overlap)
    theirs = []
    for r in range(n):
        start, _, target = inf.get_round_range(r, total, chunking.first, chunking.frames, chunking.overlap)
        theirs.append((start, start + target))  # its round cameras, padded with the last one to the target length
    cam = default_camera(64, 32)
    path = make_preset_path("orbit_left", cam, num_frames=total, amount=20.0, scene_depth=2.0)
    padded = padded_path(path, chunking)
    last = path.cam_from_world[-1].expand(len(padded) - total, 4, 4)  # [pad, 4, 4] the last camera, repeated
    ours = chunking.ranges(len(padded))
    padding_agrees = len(padded) == theirs[-1][1] and torch.equal(padded.cam_from_world[total:], last)
    return dict(total=total, reference=theirs, ours=ours, agree=ours == theirs and padding_agrees)


def main() -> int:
    parser = equivalence_parser(__doc__, "write the numbers as JSON (and a .md beside it)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the reference's 40)")
    parser.add_argument("--stub-missing", action="store_true", help="stand in for absent import-only packages")
    args = parser.parse_args()

    exact_fp32()
    device = torch.device(args.device)
    ref = load_reference(args.reference_root, args.stub_missing)
    a, family = ref.args, FAMILIES["spatia"]
    steps = a.num_inference_steps if args.steps is None else args.steps

    # The reference's settings against our family's
    d = family.defaults
    settings = {
        "num_inference_steps": (a.num_inference_steps, d.num_inference_steps), "cfg_scale": (a.cfg_scale, d.guidance_scale),
        "sigma_shift": (a.sigma_shift, d.flow_shift), "fps": (a.fps, d.fps),
        "rounds": ((a.first_round_frames, a.round_frames, a.hist_frames), (d.chunking.first, d.chunking.frames, d.chunking.overlap)),
        "ref_num": (a.ref_num, family.max_references), "ref_hist_stride": (a.ref_hist_stride, family.reference_rule["reference_every"]),
        "ref_stride": (a.ref_stride, family.reference_rule["target_every"]),
        "negative_prompt": (ref.inference.NEGATIVE_PROMPT, SPATIA_NEGATIVE_PROMPT), "sampler": (a.sampler, "uni_pc"),
    }  # fmt: skip
    settings = {k: {"reference": v[0], "ours": v[1], "agree": v[0] == v[1]} for k, v in settings.items()}
    settings["negative_prompt"].update(reference="NEGATIVE_PROMPT", ours="SPATIA_NEGATIVE_PROMPT")
    full = Chunking(a.first_round_frames, a.round_frames, a.hist_frames)
    ranges = [round_ranges(ref, n, full) for n in (121, 125, 193, 197, 201, 265)]
    ranges += [round_ranges(ref, n, CHUNKING) for n in (13, 17, 21, 25)]

    # One set of random models: the reference's, converted to ours
    dit = build_dit(ref.dit, args.seed, args.std, device)
    transformer = to_diffusers(dit, device)
    layers = family.layers(2)  # (0, 4): Spatia's every 4th layer, 2 blocks on 6 layers
    vace = ref.vace.VaceWanModel(vace_layers=layers, vace_in_dim=96, patch_size=DIT["patch_size"], has_image_input=False,
                                 dim=DIT["dim"], num_heads=DIT["num_heads"], ffn_dim=DIT["ffn_dim"], eps=DIT["eps"])  # fmt: skip
    vace = randomize_parameters(vace, args.seed + 2, args.std).to(device).eval()
    lora_config = dict(num_attention_heads=DIT["num_heads"], attention_head_dim=DIT["dim"] // DIT["num_heads"],
                       ffn_dim=DIT["ffn_dim"], num_layers=DIT["num_layers"])  # fmt: skip
    lora_file = tiny_lora_state_dict(lora_config, rank=4, seed=args.seed + 3)  # Spatia's file layout: pipe.dit.*.default
    lora_ref = {k.replace("pipe.dit.", ""): v.to(device) for k, v in lora_file.items() if "pipe.dit." in k}  # as build_pipe
    codec = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=args.seed + 4)
    vae = codec.vae.to(device)
    pipe = MiragePipeline(transformer, vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG),
                          depth_backend=PlanarPriorBackend())  # fmt: skip
    pipe.load_branch("spatia", {k: v.detach().clone() for k, v in vace.state_dict().items()}, lora_file)

    # The scene: an 8-bit image (both sides see the same pixels), its depth, the path
    cam = default_camera(W, H)
    rgb, depth = default_scene().render(cam)  # [1, 3, H, W], [1, H, W]
    u8 = to_uint8(rgb[0])  # [3, H, W]
    image = u8.float() / 127.5 - 1
    image_pil = Image.fromarray(u8.permute(1, 2, 0).numpy())
    path = make_preset_path("orbit_left", cam, num_frames=NUM_FRAMES, amount=40.0, scene_depth=float(depth.median()))
    g = torch.Generator().manual_seed(args.seed + 5)
    embeds = torch.randn(1, TEXT_TOKENS, DIT["text_dim"], generator=g), torch.randn(1, TEXT_TOKENS, DIT["text_dim"], generator=g)
    prompts = (PROMPT + d.prompt_suffix, ref.inference.NEGATIVE_PROMPT)

    # Ours, then the reference on the same round inputs
    out, rounds = run_ours(pipe, image.to(device), depth[0].to(device), path, embeds, steps, a.seed, a.ref_stride,
                           a.ref_hist_stride)  # fmt: skip
    ref_pipe = ref.new.WanVideoPipeline(device=device, torch_dtype=torch.float32).eval()  # as build_pipe
    ref_pipe.dit, ref_pipe.vace, ref_pipe.vae = dit, vace, SharedVAE(pipe.codec)
    ref_pipe.prompter = GivenPrompts({prompts[0]: embeds[0], prompts[1]: embeds[1]})
    theirs = run_reference(ref, ref_pipe, rounds, image_pil, lora_ref, prompts, steps)
    rounded_8bit = run_reference(ref, ref_pipe, rounds, image_pil, lora_ref, prompts, steps, rounding=True, only=1)[0]

    pipe.set_timesteps(steps, True, device)
    rows = []
    for r, (rd, th) in enumerate(zip(rounds, theirs)):
        first, R = th["first_call"], rd.inputs.references.shape[2]
        P = 1 if r == 0 else CHUNKING.pinned_latents()
        row = {
            "round": r, "frames": list(rd.frame_range), "references": rd.references, "num_ref_frames": first.get("num_ref_frames", 0),
            "vace_context": max_diff(rd.inputs.context.cpu(), first["vace_context"].cpu()),
            "reference_latents": max_diff(rd.inputs.references.cpu(), first["latents"][:, :, :R].cpu()) if R else 0.0,
            "pinned_latents": max_diff(rd.latents[:, :P], first["latents"][0, :, R : R + P].cpu()),
            "final_latents": max_diff(rd.latents, th["latents"]), "final_latents_max_abs": float(th["latents"].abs().max()),
            "lora": rd.inputs.use_lora,
        }  # fmt: skip
        rows.append(row)
    same_schedule = torch.equal(pipe.scheduler.timesteps.cpu().long(), theirs[0]["timesteps"].long())
    # The final decode: round 0's latents, then each later round's after its history latents (generate_video)
    latents = torch.cat([th["latents"] if r == 0 else th["latents"][:, CHUNKING.pinned_latents() :] for r, th in enumerate(theirs)], 1)
    video = ref_pipe.vae.decode(latents[None], device=device)[0].float().cpu()  # [3, T', H, W] with the padded frames
    T = out.video.shape[1]
    result: dict[str, Any] = {
        "reference": REFERENCE_COMMIT, "diffsynth": "1.1.9 (PyPI wheel, for Spatia's wan/ imports)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": "float32", "attention": "sdpa",
        "stubbed_modules": ref.stubbed,
        "replaced_on_the_reference_side": [
            "VAE: our tiny AutoencoderKLWan (WanVAECodec) behind WanVideoVAE38's encode/decode: one model on both sides",
            "text encoder: the same random prompt embeddings for its prompt and negative prompt (GivenPrompts)",
            "MapAnything + PyTorch3D render (subprocesses): the render and score videos of our spatia-reference readout",
            "select_reference_frames (open3d, triton): the frames our spatia_references chooses among Spatia's candidates",
            "8-bit mp4/PIL round trips: videos handed over as unrounded float tensors (see round_8bit_history)",
        ],
        "config": {**DIT, "branch_layers": layers, "height": H, "width": W, "num_frames": NUM_FRAMES,
                   "chunking": [CHUNKING.first, CHUNKING.frames, CHUNKING.overlap], "steps": steps, "cfg_scale": a.cfg_scale,
                   "noise_seed": a.seed, "weight_seed": args.seed, "std": args.std, "lora_rank": 4},
        "settings": settings, "round_ranges": ranges, "same_timesteps": same_schedule,
        "rounds": rows,
        "final_decode": {"frames_ours": T, "frames_reference": video.shape[1], "max_abs_diff": max_diff(out.video, video[:, :T])},
        "round_8bit_history": {"final_latents_max_abs_diff": max_diff(rounds[1].latents, rounded_8bit["latents"]),
                               "note": "the reference's round 1 with history and references rounded to 8 bits vs unrounded: "
                                       "the size of the effect of the rounding alone, not counted"},
        "tolerance": args.tolerance,
    }  # fmt: skip
    diffs = [row[k] for row in rows for k in ("vace_context", "reference_latents", "pinned_latents", "final_latents")]
    diffs.append(result["final_decode"]["max_abs_diff"])
    result["max_abs_diff"] = max(diffs)
    references_used = any(row["references"] for row in rows)  # else the reference latents were never compared
    checks = [s["agree"] for s in settings.values()] + [x["agree"] for x in ranges] + [same_schedule, references_used]
    result["passed"] = bool(result["max_abs_diff"] <= args.tolerance and all(checks) and len(rows) >= 2)

    report = table(result)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        args.out.with_suffix(".md").write_text(report + "\n")
    return 0 if result["passed"] else 1


def table(result: dict) -> str:
    """The result as Markdown: settings, round ranges, per-round differences, the verdict."""
    lines = [f"# Spatia's sampling loop vs ours ({result['reference']}, {result['device']}, fp32)", "",
             f"stubbed modules: {', '.join(result['stubbed_modules']) or 'none'}", "",
             "| setting | reference | ours | agree |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v['reference']} | {v['ours']} | {v['agree']} |" for k, v in result["settings"].items()]
    lines += ["", "| frames | reference rounds (padded) | ours (padded_path) | agree |", "|---|---|---|---|"]
    lines += [f"| {x['total']} | {x['reference']} | {x['ours']} | {x['agree']} |" for x in result["round_ranges"]]
    lines += ["", f"same timesteps: {result['same_timesteps']}", "",
              "| round | frames | refs | LoRA | VACE context | reference latents | pinned latents | final latents (max abs) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['round']} | {r['frames']} | {r['references']} | {r['lora']} | {r['vace_context']:.3g} | "
              f"{r['reference_latents']:.3g} | {r['pinned_latents']:.3g} | {r['final_latents']:.3g} ({r['final_latents_max_abs']:.3g}) |"
              for r in result["rounds"]]  # fmt: skip
    f = result["final_decode"]
    lines += ["", f"final decode: {f['max_abs_diff']:.3g} over {f['frames_ours']} frames (the reference's has {f['frames_reference']})",
              f"8-bit history in round 1 (reference alone, not counted): {result['round_8bit_history']['final_latents_max_abs_diff']:.3g}",
              "", f"{'PASS' if result['passed'] else 'FAIL'}: max abs difference {result['max_abs_diff']:.3g} "
              f"(tolerance {result['tolerance']:g})"]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
