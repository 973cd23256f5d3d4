"""The whole Mirage loop against the official one: ``MiragePipeline`` in the Mirage reference mode
(``memory_mode="branch"`` with a Mirage branch, ``readouts="reference"``: ``FAMILIES["mirage"]``)
against ``MiragePipeline.generate`` of microsoft/LatentSpatialMemory b2cd738
(``src/mirage/inference/mirage_pipeline.py``, its ``LatentPointCloud`` and its vendored DiffSynth).

Both sides run the same tiny fp32 models with one random state dict: the reference's vendored
``WanModel`` (TI2V flags) and ``VaceWanModel`` (96-channel context, a block after every second DiT
layer) with every parameter random from ``--seed``, converted to ours (diffusers'
``convert_wan_transformer_to_diffusers``, ``mirage.checkpoints``) by the helpers of
``benchmarks/diffsynth_equivalence.py``. No LoRA on either side. Over ``--chunks`` chunks (33 frames,
then +32; 3 by default) along a camera path through ``mirage.synthetic.default_scene``, each side
reads its memory, selects its references (earlier latents whose voxels overlap the targets'),
takes the two preceding latents, builds the 96-channel branch context (readouts + the latent of a
white video), samples with its own scheduler, guidance and frame-0 pinning, and stores the chunk in
its memory. Compared per chunk (maximum absolute difference, ``<= --tolerance``): the final latents,
the branch context, the readout of the chunk's cameras, the selected reference latents, the preceding
latents, the pinned first latent; and the reference indices each side selected (equal).

What is shared rather than compared (standard components, not Mirage's):

* **VAE**: one tiny ``AutoencoderKLWan`` (``mirage.codecs.WanVAECodec``, normalized latents) behind
  the reference's ``WanVideoVAE`` interface (``encode(videos, device, tiled, ...)``,
  ``decode(latents, device, tiled, ...)``, ``upsampling_factor``), untiled on both sides.
* **Text encoder**: given random prompt embeddings, through a stand-in of the reference's prompter
  and as ``prompt_embeds`` for ours.
* **Depth**: the scene's exact depth at each pose. The reference's ``infer_mapanything_depths``
  (MapAnything, given poses and intrinsics: metric) returns it; ours is given the image's depth
  (``GroundTruthDepth``) and the chunks' depth in place of ``MiragePipeline.estimate_depth`` (an
  estimate aligned in scale to the memory, which the reference does not do), scale 1.
* **Noise**: both draw each chunk's initial noise from one generator on the device seeded with
  ``--seed`` (the reference's ``torch.randn(..., generator)``, ours ``randn_tensor``); nothing else draws.

The reference's ``WanVideoPipeline`` is a stand-in that holds the models above (``ReferencePipe``);
its video writing is a no-op (files, not compared); attention is SDPA (flash-attn off), TF32 off.
Its scheduler (``FlowUniPCMultistepScheduler``), the guidance combination, the pinning of frame 0,
the point cloud, the reference selection and the context builder run as they are, with one fix
(``REPLACED["preceding_scene"]``): at b2cd738 ``generate`` crashes in chunk 2 with its default two
preceding latents, because it stores the chunks' readouts channel by channel; the harness hands
``select_preceding_context`` the per-latent readouts the loop means. ``--guidance-scales 1 3`` runs
the reference's default (no CFG) and then CFG against given negative embeddings.

The reference's z-buffer (``LatentPointCloud.project``) sorts by depth (``argsort``, not stable) and
writes cells with repeated indices (``index_put``, last write meant to win). Deterministic
algorithms are on: otherwise the repeated writes race, on the CPU too, and a cell does not always
show its closest point. Exact depth ties stay in the sort's order, so the source camera is tilted
(``TILT_DEG``), which keeps them out of the scene (a level camera that only turns sees points of a
wall's column at one depth); ours breaks them by the lowest index. Near ties within one float32 step
are decided by rounding, which differs between the two sides' arithmetic on a GPU: along
``detour_revisit`` (which starts slowly, so latents 1 and 2 store nearly the same wall points) one
cell of chunk 2's readout on the H100 holds two candidates 2.3e-7 m apart at 4.84 m, and the sides
pick different ones (the CPU picks alike). The default path, ``orbit_left``, has no such near tie;
``--path detour_revisit`` (chunk 2 then takes references from chunk 0) passes on the CPU.

``--reference-root DIR`` is an untracked folder holding ``LatentSpatialMemory/src/mirage/`` and
``DiffSynth-Studio/diffsynth/`` (2.0.12, which the vendored pipeline imports). The reference's
subpackages (``inference``, ``spatia``, ``latent_point_cloud``, ...) are mounted under our ``mirage``
package, whose module names they do not share. ``--stub-missing`` (for a machine without
torchvision or modelscope, such as a CPU dry run) registers empty modules for those two when they
are not installed: only DiffSynth's imports name them, and nothing the loop runs calls them (the
JSON lists what was stubbed). einops must be installed (the loop calls it).

    python benchmarks/mirage_loop_equivalence.py --reference-root .whl/ref --out results.json
    python benchmarks/mirage_loop_equivalence.py --reference-root .whl/ref --device cpu --steps 4 --stub-missing
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mirage  # noqa: E402
import mirage.conditioning as conditioning  # noqa: E402
from diffsynth_equivalence import (  # noqa: E402
    BRANCH_LAYERS, DIT, LATENT_HW, build_branch, build_dit, equivalence_parser, exact_fp32, force_sdpa, max_diff, to_diffusers,
)  # fmt: skip
from mirage.cameras import Camera  # noqa: E402
from mirage.chunks import Chunk, DepthResult  # noqa: E402
from mirage.codecs import WanVAECodec  # noqa: E402
from mirage.depth import GroundTruthDepth  # noqa: E402
from mirage.families import FAMILIES  # noqa: E402
from mirage.frames import Chunking  # noqa: E402
from mirage.paths import CameraPath, make_preset_path  # noqa: E402
from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline  # noqa: E402
from mirage.synthetic import default_scene  # noqa: E402
from mirage.testing import TINY_VAE_CONFIG  # noqa: E402

REFERENCE = {"repository": "microsoft/LatentSpatialMemory", "commit": "b2cd738",
             "loop": "src/mirage/inference/mirage_pipeline.py: MiragePipeline.generate"}  # fmt: skip
REPLACED = {
    "depth": "infer_mapanything_depths (MapAnything) returns the scene's exact depth at each pose, the depth our "
             "side is given: depth estimation is not what is compared",
    "vae": "WanVideoVAE -> the one tiny AutoencoderKLWan both sides use (mirage.codecs.WanVAECodec), untiled: a "
           "standard component",
    "text_encoder": "the prompter returns given random embeddings, ours takes them as prompt_embeds: a standard component",
    "pipeline": "WanVideoPipeline -> a stand-in holding dit, vace, vae and prompter (load_models_to_device a no-op)",
    "video_files": "write_mp4 is a no-op: the written videos are not compared",
    "preceding_scene": "a fix: generate() keeps each chunk's target_scene ([C, T, h, w]) as if it were [T, C, h, w] "
                       "(target_scene_tchw, never rearranged, unlike the latents beside it), so generated_scene_latents "
                       "holds channel slices [T, h, w] and build_vace_context_96 fails in chunk 2 (torch.cat of "
                       "[48, T, h, w] with [T, P, h, w]) whenever there are preceding latents (its default: 8 pixel "
                       "frames, 2 latents); select_preceding_context is given what the loop means instead, the "
                       "readout each generated latent was made with ([C, h, w] each, a later chunk's frame 0 dropped "
                       "as for the latents)",
}  # fmt: skip
STUBBABLE = ("torchvision", "modelscope")  # imported by DiffSynth's package, never called by the loop
TEXT_TOKENS = 16
SCENE_HW = (LATENT_HW[0] * 16, LATENT_HW[1] * 16)  # pixels: the tiny VAE's stride is 16
# A level camera turning about the vertical sees a wall's column (the floor's row) at one depth, so points
# tie exactly in depth where they meet in a cell (module docstring); the tilt keeps such ties out.
TILT_DEG = (4.0, 3.0)  # pitch, roll of the source camera
SCENE_DEPTH = 3.0  # metres: the paths' scale (a detour's circle, scene_depth / 2 across, stays inside the 5 m room)


# ----------------------------------------------------------------------------- the reference code
class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for the named top-level packages and their submodules; any attribute is an empty class."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: type(attr, (), {})
        return module

    def exec_module(self, module) -> None:
        pass


def stub_missing() -> list[str]:
    """Register ``_Stubs`` for the ``STUBBABLE`` packages that are not installed; returns their names."""
    missing = [name for name in STUBBABLE if importlib.util.find_spec(name) is None]
    if missing:
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()  # cached now, so that transformers never takes the stub for torchvision
        sys.meta_path.insert(0, _Stubs(missing))
    return missing


def load_reference(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """The official ``mirage_pipeline`` module and its vendored ``wan_video_dit`` and ``wan_video_vace``."""
    src = root / "LatentSpatialMemory" / "src" / "mirage"
    diffsynth = root / "DiffSynth-Studio"
    for need in (src / "inference" / "mirage_pipeline.py", diffsynth / "diffsynth" / "__init__.py"):
        if not need.is_file():
            raise FileNotFoundError(f"{need} is missing: see --reference-root in the docstring")
    ours = {p.stem for p in Path(mirage.__file__).parent.iterdir()}
    clash = sorted(ours & {p.stem for p in src.iterdir() if p.stem != "__init__"})
    if clash:
        raise RuntimeError(f"the reference's modules {clash} would shadow ours in the mirage package")
    if str(diffsynth) not in sys.path:
        sys.path.insert(0, str(diffsynth))
    if str(src) not in mirage.__path__:
        mirage.__path__.append(str(src))  # mirage.inference, mirage.spatia, ... resolve to the reference's
    from mirage.inference import mirage_pipeline
    from mirage.spatia import wan_video_dit, wan_video_vace

    force_sdpa(wan_video_dit)
    return mirage_pipeline, wan_video_dit, wan_video_vace


class SharedVAE(torch.nn.Module):
    """Our codec behind the interface the reference loop calls on DiffSynth's ``WanVideoVAE``."""

    def __init__(self, codec: WanVAECodec) -> None:
        super().__init__()
        self.codec = codec
        self.vae = codec.vae  # a submodule: parameters() gives the VAE's dtype
        self.upsampling_factor = codec.spatial_stride

    def encode(self, videos: list[torch.Tensor], device, tiled=False, tile_size=None, tile_stride=None) -> torch.Tensor:
        return self.codec.encode(torch.stack(videos).to(device))  # [3, T, H, W] each -> [B, C, F, h, w]

    def decode(self, latents: torch.Tensor, device, tiled=False, tile_size=None, tile_stride=None) -> torch.Tensor:
        return self.codec.decode(latents.to(device))  # [B, C, F, h, w] -> [B, 3, T, H, W] in [-1, 1]


class GivenPrompts:
    """The reference's prompter, answering with given embeddings (``[1, L, D]``)."""

    def __init__(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        self.positive, self.negative = positive, negative

    def encode_prompt(self, prompt: str, positive: bool = True, device=None) -> torch.Tensor:
        return self.positive if positive else self.negative


class ReferencePipe:
    """What the reference's ``MiragePipeline`` reads of a DiffSynth ``WanVideoPipeline``."""

    def __init__(self, dit, vace, vae: SharedVAE, prompter: GivenPrompts, device: torch.device) -> None:
        self.dit, self.vace, self.vae, self.prompter = dit, vace, vae, prompter
        self.device, self.torch_dtype = str(device), torch.float32

    def load_models_to_device(self, names: list[str]) -> None:
        pass


def scenes_per_latent(chunks: list[tuple[tuple, dict, Any]]) -> list[torch.Tensor]:
    """The readout each generated latent was made with (``[C, h, w]`` each, in generation order), from
    the recorded ``generate_single_iteration`` calls: what the loop's ``generated_scene_latents`` means."""
    scenes = []
    for i, (_, kw, _) in enumerate(chunks):
        frames = list(kw["target_scene"].unbind(1))  # [C, T, h, w] -> T x [C, h, w]
        scenes += frames if i == 0 else frames[1:]  # a later chunk's frame 0 is the previous chunk's last latent
    return scenes


def given_depths(*, images: np.ndarray, geometry, pose_indices: list[int], **_) -> list[dict[str, np.ndarray]]:
    """In place of ``infer_mapanything_depths``: the geometry's depth at each pose (``[H, W]`` each)."""
    assert len(images) == len(pose_indices)
    return [{"depth": geometry.depths[i]} for i in pose_indices]


# ----------------------------------------------------------------------------- ours
class GivenDepthPipeline(MiragePipeline):
    """Ours, with the chunks' depth given (``given_depth [T, H, W]`` metres at every path frame) in
    place of the estimate aligned to the memory; everything else as it is."""

    given_depth: torch.Tensor

    def estimate_depth(self, chunk: Chunk, frames: torch.Tensor, previous_scale: float) -> DepthResult:
        start, U = chunk.frame_range[0], chunk.update_from(frames)
        ts = self.codec.temporal_stride
        frame_ids = [start + ts * k for k in range(U, len(chunk.latent_cameras))]  # the path frames 4k stored
        return DepthResult(self.given_depth[frame_ids].to(frames.device), 1.0, True)  # [F - U, H, W]


@contextmanager
def recorded(owner: Any, name: str) -> Iterator[list[tuple[tuple, dict, Any]]]:
    """``owner.name`` wrapped: every call's (args, kwargs, result) appended to the list yielded."""
    calls: list[tuple[tuple, dict, Any]] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    with mock.patch.object(owner, name, wrapper):
        yield calls


# ----------------------------------------------------------------------------- inputs
def make_scene(num_frames: int, path_preset: str, device) -> tuple[np.ndarray, CameraPath, torch.Tensor]:
    """The input image ``[H, W, 3]`` uint8, the camera path and the scene's depth ``[T, H, W]`` at every frame."""
    H, W = SCENE_HW
    (cp, cr), (sp, sr) = (f(torch.tensor(TILT_DEG).deg2rad()).tolist() for f in (torch.cos, torch.sin))
    pitch = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # [3, 3] about x
    roll = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])  # [3, 3] about z
    tilt = torch.eye(4)  # [4, 4] cam_from_world at the origin, tilted (TILT_DEG): no two stored points tie in depth
    tilt[:3, :3] = roll @ pitch
    camera = Camera.from_fov(W, H, 60.0, tilt)
    scene = default_scene()
    rgb, _ = scene.render(camera)  # [1, 3, H, W] in [-1, 1]
    path = make_preset_path(path_preset, camera, num_frames=num_frames, scene_depth=SCENE_DEPTH)
    _, depth = scene.render(path)  # [T, H, W] camera z, finite (a closed room)
    image = ((rgb[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # [H, W, 3]
    return image, path, depth


def write_geometry(folder: Path, image: np.ndarray, path: CameraPath, depth: torch.Tensor) -> Path:
    """The reference's ``geometry.npz``: the first frame, depth, OpenCV intrinsics (pixel centres at
    integers: ours - 1/2) and camera-to-world poses of every frame."""
    K = path.K.clone()  # [T, 3, 3]
    K[:, :2, 2] -= 0.5
    file = folder / "geometry.npz"
    np.savez(file, frames=image[None], depths=depth.numpy().astype(np.float32), intrinsics=K.numpy().astype(np.float32),
             poses_c2w=path.world_from_cam.numpy().astype(np.float32))  # fmt: skip
    return file


# ----------------------------------------------------------------------------- the two loops
def run_reference(ref: types.ModuleType, pipe: ReferencePipe, geometry: Path, num_frames: int, steps: int,
                  guidance: float, seed: int, folder: Path) -> list[dict[str, Any]]:  # fmt: skip
    """The official loop; per chunk what it conditioned on and produced."""
    config = ref.MirageConfig(num_frames=num_frames, infer_steps=steps, guidance_scale=guidance, no_cfg=guidance == 1.0,
                              seed=seed, tiled=False)  # fmt: skip
    loop = ref.MiragePipeline(pipe, config)
    select_preceding = ref.select_preceding_context

    def preceding(*, generated_latents, generated_scene_latents, num_frames):  # REPLACED["preceding_scene"]
        scenes = scenes_per_latent(chunks)
        assert len(scenes) == len(generated_latents)
        return select_preceding(generated_latents=generated_latents, generated_scene_latents=scenes, num_frames=num_frames)

    with (mock.patch.object(ref, "infer_mapanything_depths", given_depths),
          mock.patch.object(ref, "write_mp4", lambda *a, **k: None),
          mock.patch.object(ref, "select_preceding_context", preceding),
          recorded(ref, "select_reference_latents") as selections,
          recorded(ref, "build_vace_context_96") as contexts,
          recorded(loop, "generate_single_iteration") as chunks):  # fmt: skip
        loop.generate(geometry_path=geometry, prompt="", output_dir=folder)
    out = []
    for (_, kw, latents), (*_, context), (*_, (_, indices)) in zip(chunks, contexts, selections, strict=True):
        C, _, h, w = kw["target_scene"].shape
        none = torch.zeros(1, C, 0, h, w, device=latents.device)  # the reference passes None for no frames
        out.append(dict(latents=latents, context=context[0][None], readout=kw["target_scene"][None],
                        references=none if kw["reference_latents"] is None else kw["reference_latents"],
                        preceding=none if kw["preceding_latents"] is None else kw["preceding_latents"],
                        pinned=kw["first_frame_latent"], indices=list(indices)))  # fmt: skip
    return out


def run_ours(pipe: GivenDepthPipeline, image: np.ndarray, path: CameraPath, embeds: tuple[torch.Tensor, torch.Tensor],
             steps: int, guidance: float, seed: int, device) -> list[dict[str, Any]]:  # fmt: skip
    """Ours in the Mirage reference mode; per chunk what it conditioned on and produced."""
    picture = torch.from_numpy(image).float().permute(2, 0, 1).div(127.5).sub(1.0)  # [3, H, W], as the reference converts
    with recorded(conditioning, "mirage_references") as selections, recorded(pipe, "denoise_chunk") as chunks:
        out = pipe(picture, path, prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1] if guidance > 1 else None,
                   num_inference_steps=steps, guidance_scale=guidance, memory="latent", memory_mode="branch",
                   readouts="reference", generator=torch.Generator(device).manual_seed(seed))  # fmt: skip
    assert out.settings["readouts"] == "reference" and out.settings["chunking"] == Chunking(33, 33, 1)
    indices = [[]] + [chosen for *_, chosen in selections]  # chunk 0 has no earlier latents to choose from
    records = []
    for (args, kw, _), result, chosen in zip(chunks, out.chunks, indices, strict=True):
        inputs = kw["branch_inputs"]
        records.append(dict(latents=result.latents[None], context=inputs.context, readout=result.readout.latents[None],
                            references=inputs.references, preceding=inputs.preceding, pinned=args[0],
                            indices=list(chosen)))  # fmt: skip
    return records


def compare(ours: list[dict], ref: list[dict]) -> list[dict[str, Any]]:
    """Per chunk: the reference indices of each side, R and P, and the maximum absolute differences."""
    rows = []
    for c, (a, b) in enumerate(zip(ours, ref, strict=True)):
        diffs = {}
        for key in ("latents", "context", "readout", "references", "preceding", "pinned"):
            x, y = a[key].detach().float().cpu(), b[key].detach().float().cpu()
            diffs[key] = None if x.shape != y.shape else (max_diff(x, y) if x.numel() else 0.0)  # None: shapes differ
        x, y = a["readout"].detach().float().cpu()[0], b["readout"].detach().float().cpu()[0]  # [C, F, h, w]
        cells = ((x - y).abs().amax(0) > 1e-4).nonzero().tolist() if x.shape == y.shape else []  # [(f, row, col)]
        rows.append({
            "chunk": c, "reference_indices": {"official": b["indices"], "ours": a["indices"]},
            "num_references": int(b["references"].shape[2]), "num_preceding": int(b["preceding"].shape[2]),
            "max_abs_diff": diffs, "latents_max_abs": float(b["latents"].abs().max()),
            "readout_cells_differing": {"count": len(cells), "first": cells[:8]},
            "shapes": {k: list(b[k].shape) for k in ("latents", "context", "references", "preceding")},
        })  # fmt: skip
    return rows


def markdown(result: dict[str, Any]) -> str:
    keys = ("latents", "context", "readout", "references", "preceding", "pinned")
    lines = [f"# Mirage loop equivalence ({result['device']}, {result['verdict']})", "",
             f"Official loop: {REFERENCE['repository']} {REFERENCE['commit']}, {REFERENCE['loop']}. "
             f"Tolerance {result['tolerance']:g} (max abs); {result['config']['steps']} steps, "
             f"{result['config']['chunks']} chunks, latents {result['config']['latent_hw']}.", ""]  # fmt: skip
    for case in result["cases"]:
        lines += [f"## guidance {case['guidance_scale']:g}", "",
                  "| chunk | refs official | refs ours | R | P | " + " | ".join(keys) + " |",
                  "|---" * (5 + len(keys)) + "|"]  # fmt: skip
        for row in case["chunks"]:
            d = row["max_abs_diff"]
            cells = ["shape" if d[k] is None else f"{d[k]:.2e}" for k in keys]
            lines.append(f"| {row['chunk']} | {row['reference_indices']['official']} | {row['reference_indices']['ours']} | "
                         f"{row['num_references']} | {row['num_preceding']} | " + " | ".join(cells) + " |")  # fmt: skip
        lines.append("")
    lines += ["Replaced in the official loop: " + "; ".join(f"{k}: {v}" for k, v in result["replaced_in_reference"].items()),
              "", f"Stubbed modules: {result['stubbed_modules'] or 'none'}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = equivalence_parser(__doc__, "write the numbers as JSON, and a .md beside it")
    parser.add_argument("--steps", type=int, default=FAMILIES["mirage"].defaults.num_inference_steps)
    parser.add_argument("--chunks", type=int, default=3, help="chunks of 33 frames, then +32 (at least 2)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--path", default="orbit_left", help="mirage.paths preset (detour_revisit: a float32 near tie on "
                                                              "the GPU, see above)")
    parser.add_argument("--stub-missing", action="store_true",
                        help=f"register empty modules for {STUBBABLE} when not installed (never called by the loop)")
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error(f"--chunks must be at least 2 (references and preceding latents start in chunk 2), got {args.chunks}")

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    exact_fp32()
    device = torch.device(args.device)
    stubbed = stub_missing() if args.stub_missing else []
    ref, dit_module, vace_module = load_reference(args.reference_root)
    import diffusers

    num_frames = 33 + 32 * (args.chunks - 1)
    image, path, depth = make_scene(num_frames, args.path, "cpu")
    dit = build_dit(dit_module, args.seed, args.std, device)
    transformer = to_diffusers(dit, device)
    vace, branch, _ = build_branch(vace_module, transformer, args.seed + 2, args.std, device)
    codec = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    embeds = tuple(torch.randn(1, TEXT_TOKENS, DIT["text_dim"], generator=g).to(device) for _ in range(2))  # [1, L, D] +, -

    ours = GivenDepthPipeline(transformer, codec.vae, diffusers.UniPCMultistepScheduler(**WAN_UNIPC_CONFIG),
                              depth_backend=GroundTruthDepth(depth[0], path.K[0]), branch=branch, branch_kind="mirage")  # fmt: skip
    ours.to(device)
    ours.given_depth = depth
    reference_pipe = ReferencePipe(dit, vace, SharedVAE(ours.codec), GivenPrompts(*embeds), device)

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        geometry = write_geometry(Path(tmp), image, path, depth)
        for guidance in args.guidance_scales:
            official = run_reference(ref, reference_pipe, geometry, num_frames, args.steps, guidance, args.seed, Path(tmp) / "out")
            mine = run_ours(ours, image, path, embeds, args.steps, guidance, args.seed, device)
            cases.append({"guidance_scale": guidance, "chunks": compare(mine, official)})

    diffs = [d for case in cases for row in case["chunks"] for d in row["max_abs_diff"].values()]
    later = [row for case in cases for row in case["chunks"][1:]]
    exercised = all(row["num_references"] > 0 and row["num_preceding"] > 0 for row in later)
    same_indices = all(row["reference_indices"]["official"] == row["reference_indices"]["ours"]
                       for case in cases for row in case["chunks"])  # fmt: skip
    max_abs = None if None in diffs else max(diffs)
    passed = max_abs is not None and max_abs <= args.tolerance and same_indices and exercised
    sources = args.reference_root / "SOURCES.txt"
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": "float32", "attention": "sdpa",
        "reference": REFERENCE, "reference_sources": sources.read_text().strip() if sources.is_file() else None,
        "replaced_in_reference": REPLACED, "stubbed_modules": stubbed,
        "config": {**DIT, "branch_layers": BRANCH_LAYERS, "latent_hw": LATENT_HW, "pixels_hw": SCENE_HW,
                   "text_tokens": TEXT_TOKENS, "seed": args.seed, "std": args.std, "steps": args.steps,
                   "chunks": args.chunks, "num_frames": num_frames, "path": args.path, "tilt_deg": TILT_DEG,
                   "scene_depth": SCENE_DEPTH, "deterministic_algorithms": True},
        "tolerance": args.tolerance, "cases": cases, "max_abs_diff": max_abs, "same_reference_indices": same_indices,
        "references_and_preceding_in_every_later_chunk": exercised, "passed": passed,
        "verdict": "PASS" if passed else "FAIL",
    }  # fmt: skip
    report = markdown(result)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(report)
    print(f"{result['verdict']}: max abs difference {max_abs if max_abs is None else f'{max_abs:.3g}'} "
          f"(tolerance {args.tolerance:g}), reference indices {'equal' if same_indices else 'DIFFER'}, "
          f"references and preceding latents in every later chunk: {exercised}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
