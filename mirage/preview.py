"""Both memories along one path, side by side: the offline readout preview, generation with
``MiragePipeline``, and what the demo shows of a run (videos, files, figures, captions).

Both runs go through the one chunk step of ``mirage.chunks`` with the same settings for both memories:

* ``run_readout_preview`` (no weights): the denoiser is the identity (the latents are the readout) and
  the depth of the new frames is the readout's own, so each memory is updated with what it returned.
  What each memory shows is rendered at *every* pixel frame (``memory.render``: the latent memory
  reads each camera and decodes its tokens as a single image; the pixel memory rasterizes), so the
  preview runs at the full frame rate; beside it, what the model would receive: the conditioning
  latent decoded (the offline codec decodes one image per four frames). The render is not timed:
  it is the preview's picture, not part of either memory's chunk step.
* ``run_generation``: ``MiragePipeline`` for each memory with one seed; the video is generated, and
  what the model received is each chunk's conditioning latent decoded with the VAE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from . import plotting, video
from .chunks import ChunkParts, ChunkResult, identity_denoise, readout_depth, run_chunks, start_memory
from .codecs import OfflineCodec, VideoCodec
from .frames import TEMPORAL_STRIDE, Chunking, stitch_chunks
from .memory import MEMORY_KINDS, LatentSpatialMemory, MemoryConfig, SpatialMemory, make_memory
from .paths import CameraPath
from .scene import ColorBy, SceneState, export_path, point_colors, require_path

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "RunKind",
    "MethodRun",
    "RunResult",
    "run_readout_preview",
    "generate_method",
    "run_generation",
    "ResultFiles",
    "write_result_files",
    "result_figures",
    "result_caption",
]

METHODS = MEMORY_KINDS  # the two memories, run side by side
METHOD_LABELS = {"latent": "Latent memory (Mirage)", "rgb": "Pixel point cloud (baseline)"}
assert set(METHOD_LABELS) == set(METHODS)
RunKind = Literal["readout preview", "generation"]
Progress = Callable[..., object]  # progress(fraction in [0, 1], desc=str)
_CHARTED = set(plotting.STAGE_ORDER)  # "readout" holds its parts (project / rasterize / encode): chart the parts
_IDENTITY_IN_PREVIEW = {"denoise", "depth"}  # the preview's denoiser and depth do no work: not charted


@dataclass
class MethodRun:
    """One memory along the path."""

    video: Tensor  # [3, T, H, W] in [-1, 1]: the generated video, or (preview) what the memory shows at every frame
    received: Tensor  # [3, T, H, W]: what the model receives, the chunks' conditioning latents decoded
    mask: Tensor  # [T, H, W] bool, True where the memory saw the pixel
    timings: list[dict[str, float]]  # per chunk {stage: seconds}, charted stages only
    sizes: list[int]  # cache bytes after init and after each chunk
    counts: list[int]  # points after init and after each chunk
    memory: SpatialMemory  # the memory after the last chunk
    colors: Tensor  # [N, 3] uint8 image colour of each point (mean of its cell in the frame it came from)
    ranges: list[tuple[int, int]]  # chunk (start, stop) pixel frames
    seconds: float = 0.0  # wall time of this method's run

    @property
    def hole_fraction(self) -> float:
        return 1.0 - float(self.mask.float().mean())


@dataclass
class RunResult:
    """Both memories along one path, with what the run was."""

    kind: RunKind  # what the videos are
    methods: dict[str, MethodRun]  # "latent", "rgb"
    settings: dict[str, Any] = field(default_factory=dict)  # codec / weights, device, seed, steps, guidance, ...

    @property
    def memory(self) -> LatentSpatialMemory:  # the latent memory after the run (3D view, downloads)
        return self.methods["latent"].memory

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return self.methods["latent"].ranges


def _method_run(memory: SpatialMemory, initial_colors: Tensor, chunks: list[ChunkResult], videos: list[Tensor],
                masks: list[Tensor], temporal_stride: int, seconds: float, charted: set[str] = _CHARTED,
                overlap: int = 1) -> MethodRun:  # fmt: skip
    colors = [initial_colors] + [c.update.colors(c.new_frames(temporal_stride)) for c in chunks]
    return MethodRun(
        video=stitch_chunks(videos, 1, overlap), received=stitch_chunks([c.frames for c in chunks], 1, overlap),
        mask=stitch_chunks(masks, 0, overlap),
        timings=[{k: v for k, v in c.timings.items() if k in charted} for c in chunks],
        sizes=[e["nbytes"] for e in memory.size_history], counts=[e["num_points"] for e in memory.size_history],
        memory=memory, colors=torch.cat(colors), ranges=[c.frame_range for c in chunks], seconds=seconds,
    )  # fmt: skip


def run_readout_preview(
    state: SceneState,
    path: CameraPath | None = None,
    chunking: Chunking = Chunking(),
    progress: Progress | None = None,
    codec: VideoCodec | None = None,
    config: MemoryConfig | None = None,
) -> RunResult:
    """Both memories along ``path`` (default: the scene's) with the identity denoiser (module docstring),
    each made with ``config`` (default ``MemoryConfig()``). Memories start from the scene's image each
    run; the scene's own memory is not modified."""
    path = path if path is not None else require_path(state)
    codec = codec or OfflineCodec()
    report = progress if progress is not None else (lambda *a, **k: None)  # gr.Progress is falsy (it has a length)
    n_chunks = len(chunking.ranges(len(path), codec.temporal_stride))
    methods = {}
    for i, method in enumerate(METHODS):
        t0 = time.perf_counter()
        mem = make_memory(method, config, codec=codec)
        first_latent, initial = start_memory(mem, state.camera, state.image, state.depth, codec.encode)
        def stage(c, name, i=i, method=method):
            report((i + (c + 0.5) / n_chunks) / len(METHODS), desc=f"{METHOD_LABELS[method]}: chunk {c + 1}/{n_chunks}, {name}")

        # render=True: each read also gives what the memory shows at every pixel frame (the pixel memory's own
        # raster of the read; the latent memory's views decoded)
        parts = ChunkParts(codec, lambda chunk: None, identity_denoise, readout_depth, on_stage=stage, render=True)
        chunks = run_chunks(mem, path, first_latent, parts, chunking)
        renders = [c.readout.render.frames for c in chunks]  # [3, T_c, H, W] each
        masks = [c.readout.render.mask for c in chunks]  # [T_c, H, W] each
        initial_colors = initial.colors(state.image[:, None])  # [N0, 3]
        methods[method] = _method_run(mem, initial_colors, chunks, renders, masks, codec.temporal_stride,
                                      time.perf_counter() - t0, _CHARTED - _IDENTITY_IN_PREVIEW, chunking.overlap)  # fmt: skip
    report(1.0, desc="done")
    return RunResult("readout preview", methods, {"codec": f"offline codec ({codec.name}), no weights", "device": "cpu"})


def generate_method(
    state: SceneState,
    pipe,  # a mirage.pipeline.MiragePipeline
    method: str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    **pipe_kwargs: Any,
) -> MethodRun:
    """Generate along the scene's path with one memory (``pipe_kwargs``: prompt, steps, guidance, ...).

    Each chunk's conditioning latent is decoded with the pipeline's VAE to show what the model received."""
    require_path(state)
    report = progress if progress is not None else (lambda *a, **k: None)  # gr.Progress is falsy (it has a length)
    lo, hi = progress_span
    device = pipe._execution_device
    t0 = time.perf_counter()
    chunking = pipe_kwargs.get("chunking") or pipe.defaults_for(pipe_kwargs.get("memory_mode", "replace")).chunking
    n_chunks = len(chunking.ranges(len(state.path), pipe.codec.temporal_stride))

    def step(c, s, n):
        report(lo + (hi - lo) * (c + s / n) / n_chunks, desc=f"{METHOD_LABELS[method]}: chunk {c + 1}/{n_chunks}, step {s}/{n}")

    out = pipe(state.image, state.path, image_depth=state.depth, memory=method,
               generator=torch.Generator(device).manual_seed(int(seed)), callback=step, **pipe_kwargs)  # fmt: skip
    ts = pipe.codec.temporal_stride
    received = [pipe.codec.decode(r.latents[None])[0].float().cpu() for r in out.readouts]  # [3, T_c, H, W] each
    masks = [r.cell_mask().cpu() for r in out.readouts]  # [T_c, H, W] the latent cells each memory gave the model
    initial_colors = out.initial.colors(state.image[:, None].cpu())
    overlap = out.settings["chunking"].overlap
    run = _method_run(out.memory, initial_colors, out.chunks, [c.frames for c in out.chunks], masks, ts,
                      time.perf_counter() - t0, overlap=overlap)  # fmt: skip
    run.received = stitch_chunks(received, 1, overlap)  # the conditioning latents decoded (the chunks' frames are the generation)
    return run


def run_generation(state: SceneState, pipe, *, seed: int = 0, progress: Progress | None = None, **pipe_kwargs: Any) -> RunResult:
    """Both memories through ``pipe`` with the same seed and settings (``generate_method`` each)."""
    methods = {m: generate_method(state, pipe, m, seed=seed, progress=progress, progress_span=(i / 2, (i + 1) / 2), **pipe_kwargs)
               for i, m in enumerate(METHODS)}  # fmt: skip
    return RunResult("generation", methods, {"seed": int(seed), **pipe_kwargs})


# ---------------------------------------------------------------------------------- result files
@dataclass
class ResultFiles:
    """Files written for one result (all in one session folder)."""

    videos: dict[str, Path]  # method -> main video (.mp4): generated, or the memory render at every frame
    received: dict[str, Path]  # method -> what the model receives (.mp4)
    masks: dict[str, Path]  # method -> hole-mask video (.mp4)
    side_by_side: Path  # both main videos with labels (.mp4)
    cache_ply: Path  # latent cache as binary PLY
    cache_safetensors: Path  # latent cache, reloadable with LatentSpatialMemory.load
    path_files: list[Path]  # RealEstate10K .txt, nerfstudio .json, mirage .json

    def downloads(self) -> list[Path]:
        return list(dict.fromkeys([self.side_by_side, *self.videos.values(), *self.received.values(), *self.masks.values(),
                                   self.cache_ply, self.cache_safetensors, *self.path_files]))  # fmt: skip


def video_labels(result: RunResult) -> dict[str, str]:
    """What each main video is, for the burned-in labels and captions."""
    conditioning = result.settings.get("conditioning")
    what = "memory render, every frame" if result.kind == "readout preview" else "generated" + (f", {conditioning}" if conditioning else "")
    return {m: f"{METHOD_LABELS[m]}: {what}" for m in METHODS}


def write_result_files(state: SceneState, result: RunResult, folder: Path, fps: float = 16) -> ResultFiles:
    """Write the videos, the side-by-side video, the latent cache and the path into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = "render" if result.kind == "readout preview" else "generated"
    runs = result.methods
    videos = {m: video.write_video(folder / f"{m}_{tag}.mp4", r.video, fps) for m, r in runs.items()}
    received = {m: video.write_video(folder / f"{m}_model_input.mp4", r.received, fps) for m, r in runs.items()}
    masks = {m: video.write_video(folder / f"{m}_holes.mp4", video.mask_to_video(r.mask), fps) for m, r in runs.items()}
    labels = video_labels(result)
    sbs = video.side_by_side([runs[m].video for m in METHODS], [labels[m] for m in METHODS])  # [3, T, H, 2W + gap]
    side = video.write_video(folder / f"side_by_side_{tag}.mp4", sbs, fps)
    latent = runs["latent"]
    ply = latent.memory.to_ply(folder / "latent_cache.ply", colors=latent.colors)
    st = latent.memory.save(folder / "latent_cache.safetensors")
    return ResultFiles(videos, received, masks, side, ply, st, export_path(state, folder, fps))


def result_figures(state: SceneState, result: RunResult, color_by: ColorBy = "latent"):
    """(timing figure, cache size figure, cache growth figure) of a result."""
    what = "readout preview, no generative model" if result.kind == "readout preview" else "generation"
    timings = {METHOD_LABELS[m]: r.timings for m, r in result.methods.items()}
    timing = plotting.timing_figure(timings, aggregate="per_chunk", title=f"Time per stage and chunk ({what})")
    sizes = plotting.cache_size_figure({METHOD_LABELS[m]: r.sizes for m, r in result.methods.items()},
                                       title="Cache size after each chunk")  # fmt: skip
    latent = result.methods["latent"]
    growth = plotting.cache_growth_figure(
        latent.memory.points, point_colors(latent.memory, latent.colors, color_by), latent.counts,
        state.path, title="Latent cache as it grew", frames=latent.memory.frame_ids * TEMPORAL_STRIDE,
    ).update_layout(height=580)
    return timing, sizes, growth


def result_caption(result: RunResult) -> str:
    """One markdown paragraph per method (what the video is, holes, cache, time), then what the run was."""
    labels = video_labels(result)
    lines = []
    for m, r in result.methods.items():
        total = sum(sum(t.values()) for t in r.timings)
        lines.append(
            f"**{labels[m]}** — holes {r.hole_fraction:.1%} of pixels, cache {r.sizes[-1] / 2**20:.2f} MiB "
            f"after {len(r.ranges)} chunk(s), {total:.2f} s in the charted stages."
        )
    if result.kind == "readout preview":
        lines.append(
            "These are **readout previews**, no generative model: the main videos show what each memory holds, rendered "
            "at every frame (the latent memory's tokens decoded one image at a time with the weight-free offline codec; "
            "the pixel point cloud rasterized). *Model input* shows what a video model would receive: the conditioning "
            "latent decoded (the offline codec gives one image per four frames). Unseen regions stay empty; each memory is "
            "updated with its own readout and the depth that came with it."
        )
    else:
        s = result.settings
        lines.append("Generated with " + ", ".join(f"{k} = {v}" for k, v in s.items() if v is not None and k != "negative_prompt") + ".")
    return "\n\n".join(lines)
