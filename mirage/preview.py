"""Both memories along one path, side by side, chunk by chunk: the offline readout preview and
generation with ``MiragePipeline``, and what the demo shows of a run (videos, files, figures,
captions).

A *runner* steps one memory one chunk at a time: ``steps(inp, kind, run)`` starts the memory's run
from ``inp`` (a ``RunInput``: the image, its depth and camera, the path) when ``run`` is None, runs its
next chunk, and yields ``Progress`` events while it works and a
``ChunkDone`` (the run after the chunk, and the ``ChunkView`` the page shows of it) at the end. The
same generator runs in the calling process, in a GPU call of its own (a ZeroGPU Space: the run
crosses the process boundary pickled, on the CPU), or in tests:

* ``PreviewRunner`` (no weights): the denoiser is the identity (the latents are the readout) and the
  depth of the new frames is the readout's own, so each memory is updated with what it returned. What
  each memory shows is rendered at *every* pixel frame (``memory.render``), so the preview runs at the
  full frame rate; beside it, what the model would receive: the conditioning latent decoded (the
  offline codec decodes one image per four frames). The render is not timed: it is the preview's
  picture, not part of either memory's chunk step.
* ``GenerationRunner``: ``MiragePipeline.start`` / ``step`` with one seed for both memories; the video
  is generated, and what the model received is each chunk's conditioning latent decoded with the VAE.

A ``Comparison`` holds both memories' runs and views and alternates them (latent chunk 1, pixel chunk
1, latent chunk 2, ...), so both videos grow side by side; ``run_comparison`` is the loop. It can stop
after any chunk, go on along a longer path (``extend``) and take chunks back (``undo``).
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor

from . import plotting, video
from .chunks import ChunkParts, ChunkResult, ChunkRun, identity_denoise, readout_depth, start_memory, step
from .codecs import OfflineCodec, VideoCodec
from .frames import TEMPORAL_STRIDE, Chunking
from .images import to_uint8
from .cameras import Camera
from .memory import MEMORY_KINDS, MemoryConfig, MemoryUpdate, SpatialMemory, make_memory
from .paths import CameraPath
from .revisits import RevisitScore
from .timing import StageTimer
from .scene import ColorBy, SceneState, export_path, point_colors, require_path

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "RunKind",
    "RunInput",
    "ChunkView",
    "InitialView",
    "Progress",
    "ChunkDone",
    "PreviewRunner",
    "GenerationRunner",
    "Comparison",
    "run_comparison",
    "MethodRun",
    "RunResult",
    "run_readout_preview",
    "run_generation",
    "ResultFiles",
    "video_names",
    "side_by_side_name",
    "PLACEHOLDER_GEOMETRY",
    "placeholder_geometry",
    "write_memory_videos",
    "side_by_side_frames",
    "write_result_files",
    "write_latents",
    "result_figures",
    "result_caption",
]

METHODS = MEMORY_KINDS  # the two memories, run side by side
METHOD_LABELS = {"latent": "Latent memory (Mirage)", "rgb": "Pixel point cloud (baseline)"}
# The readout preview paints what a memory does not hold in this colour (display only: the model input shows
# what the model receives): magenta, which no example scene has, where grey is the garage floor and the walls.
HOLE_COLOR = (255, 0, 255)
assert set(METHOD_LABELS) == set(METHODS)
RunKind = Literal["readout preview", "generation"]
_CHARTED = set(plotting.STAGE_ORDER)  # "readout" holds its parts (project / rasterize / encode): chart the parts
_IDENTITY_IN_PREVIEW = {"denoise", "depth"}  # the preview's denoiser and depth do no work: not charted


# ----------------------------------------------------------------------------------- what a chunk shows
@dataclass(frozen=True)
class RunInput:
    """What a run starts from: the scene's image, depth, camera and path, nothing else (it is pickled
    into every GPU call; the scene's raw input and its own memory stay behind)."""

    image: Tensor  # [3, H, W] in [-1, 1]
    depth: Tensor  # [H, W] metres, NaN where invalid
    camera: Camera  # the source camera (world = its frame)
    path: CameraPath  # T = 4N + 1 frames, frame 0 = camera

    @classmethod
    def of(cls, state: SceneState) -> "RunInput":
        return cls(state.image, state.depth, state.camera, require_path(state))

    @property
    def size(self) -> tuple[int, int]:  # (H, W)
        return tuple(self.image.shape[1:])


@dataclass
class InitialView:
    """What a memory stored of the image (the 3D view's first step)."""

    colors: Tensor  # [N0, 3] uint8 image colour of each point
    num_points: int
    nbytes: int
    size: tuple[int, int]  # (H, W) of the image and of every frame of the run


@dataclass
class ChunkView:
    """What the page shows of one chunk of one memory: compact (8-bit frames) and on the CPU, so it
    travels back from a GPU call cheaply."""

    kind: str  # "latent" or "rgb"
    index: int  # chunk number, 0-based
    frame_range: tuple[int, int]  # (start, stop) pixel frames of the path
    video: Tensor | None  # [T_c, H, W, 3] uint8: the generated frames, or (preview) what the memory shows at every frame
    received: Tensor | None  # [T_c, H, W, 3] uint8: what the model received, the chunk's conditioning latent decoded
    mask: Tensor | None  # [T_c, H, W] bool, True where the memory showed the pixel (None: all three ``release``d)
    seen: Tensor  # [T_c] int64 pixels the memory showed in each frame (kept when the frames are released)
    timings: dict[str, float]  # charted stages, seconds
    num_points: int  # points in the memory after the chunk
    nbytes: int  # cache bytes after the chunk
    colors: Tensor  # [added, 3] uint8 image colour of each point the chunk added
    seconds: float  # wall time of the chunk's step
    initial: InitialView | None = None  # set on the chunk that started the run

    def release(self) -> None:
        """Drop the frames (once written to files): what stays is small (numbers, point colours)."""
        self.video = self.received = self.mask = None


@dataclass
class Progress:
    """While a chunk runs: which memory, chunk and stage, and the sampling step within it."""

    kind: str
    chunk: int
    stage: str  # "start", "readout", "condition", "denoise", "decode", "depth", "update", "render"
    step: int = 0
    steps: int = 0


@dataclass
class ChunkDone:
    """The last event of a chunk: the run after it, and what the page shows of it."""

    kind: str
    run: Any  # the runner's run (ChunkRun or GenerationRun), on the CPU
    view: ChunkView


def _frames_u8(video_: Tensor) -> Tensor:  # [3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8
    return to_uint8(video_.float().cpu()).permute(1, 2, 3, 0).contiguous()


def _initial_view(update: MemoryUpdate, image: Tensor) -> InitialView:
    return InitialView(update.colors(image[:, None].cpu()), update.num_points, update.nbytes, tuple(image.shape[1:]))


def _streamed(work: Callable[[Callable[[Progress], None]], ChunkDone]) -> Iterator[Progress | ChunkDone]:
    """Run ``work(report)`` in a thread and yield what it reports as it reports it, then its result:
    progress from inside a chunk reaches whoever iterates, also across a GPU call's process boundary.
    Closed early, it waits for the work to end (a chunk cannot be cut short; its result is dropped)."""
    events: queue.Queue = queue.Queue()

    def target():
        try:
            events.put(("done", work(lambda event: events.put(("progress", event)))))
        except BaseException as err:  # noqa: BLE001 - handed to the iterating thread, which raises it
            events.put(("error", err))

    thread = threading.Thread(target=target, name="mirage-chunk", daemon=True)
    thread.start()
    try:
        while True:
            what, value = events.get()
            if what == "progress":
                yield value
                continue
            if what == "error":
                raise value
            yield value
            return
    finally:  # also when whoever iterates stops early: the device is free only once the chunk's work is
        thread.join()


# ----------------------------------------------------------------------------------------- runners
class PreviewRunner:
    """The offline readout preview of one memory, chunk by chunk (module docstring)."""

    kind: RunKind = "readout preview"

    def __init__(self, codec: VideoCodec | None = None, config: MemoryConfig | None = None, chunking: Chunking = Chunking()):
        self.codec = codec or OfflineCodec()
        self.config = config
        self.chunking = chunking

    @property
    def settings(self) -> dict[str, Any]:
        return {"codec": f"offline codec ({self.codec.name}), no weights", "device": "cpu"}

    def steps(self, inp: RunInput, kind: str, run: ChunkRun | None = None) -> Iterator[Progress | ChunkDone]:
        """The next chunk of ``run`` (None: start one from ``inp``), on a copy: ``run`` itself is never
        changed, so a chunk that fails or is dropped leaves it as it was (as across a GPU call)."""
        run = None if run is None else copy.deepcopy(run)
        return _streamed(lambda report: self._step(inp, kind, run, report))

    def _step(self, inp: RunInput, kind: str, run: ChunkRun | None, report) -> ChunkDone:
        t0 = time.perf_counter()
        initial = None
        if run is None:
            report(Progress(kind, 0, "start"))
            memory = make_memory(kind, self.config, codec=self.codec)
            first_latent, stored = start_memory(memory, inp.camera, inp.image, inp.depth, self.codec.encode)
            run = ChunkRun(memory, inp.path, first_latent, self.chunking)
            initial = _initial_view(stored, inp.image)
        run.memory.codec = self.codec  # a memory crosses processes without its codec
        # render=True: each read also gives what the memory shows at every pixel frame (the pixel memory's own
        # raster of the read, the latent memory's views decoded): the preview's picture
        parts = ChunkParts(self.codec, lambda chunk: None, identity_denoise, readout_depth,
                           on_stage=lambda c, name: report(Progress(kind, c, name)), render=True)  # fmt: skip
        result = step(run, parts)
        r = result.readout.render  # frames [3, T_c, H, W], mask [T_c, H, W]
        received, display_s = _display_decode(self.codec, result.readout.latents, getattr(self.codec, "device", "cpu"))  # [3, T_c, H, W]
        hole = torch.tensor(HOLE_COLOR, dtype=r.frames.dtype, device=r.frames.device).view(3, 1, 1, 1) / 127.5 - 1
        shown = torch.where(r.mask[None].to(r.frames.device), r.frames, hole)  # [3, T_c, H, W] holes in a colour no scene has
        view = _chunk_view(kind, result, shown, received, r.mask.cpu(), self.codec.temporal_stride,
                           _CHARTED - _IDENTITY_IN_PREVIEW, time.perf_counter() - t0, initial, display_s)  # fmt: skip
        return ChunkDone(kind, run, view)


class GenerationRunner:
    """Generation with ``MiragePipeline`` for one memory, chunk by chunk (module docstring); the
    same seed and settings for both memories. ``pipe_kwargs`` go to ``MiragePipeline.start``."""

    kind: RunKind = "generation"

    def __init__(self, pipe, *, seed: int = 0, **pipe_kwargs: Any):
        self.pipe, self.seed, self.pipe_kwargs = pipe, int(seed), pipe_kwargs

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, **{k: v for k, v in self.pipe_kwargs.items() if not isinstance(v, Tensor)}}

    def steps(self, inp: RunInput, kind: str, run=None) -> Iterator[Progress | ChunkDone]:
        """As ``PreviewRunner.steps``: the next chunk on a copy of ``run``."""
        run = None if run is None else copy.deepcopy(run)
        return _streamed(lambda report: self._step(inp, kind, run, report))

    def _step(self, inp: RunInput, kind: str, run, report) -> ChunkDone:
        pipe = self.pipe
        t0 = time.perf_counter()
        initial = None
        if run is None:
            report(Progress(kind, 0, "start"))
            device = pipe._execution_device
            run = pipe.start(inp.image, inp.path, image_depth=inp.depth, memory=kind,
                             generator=torch.Generator(device).manual_seed(self.seed), **self.pipe_kwargs)  # fmt: skip
            initial = _initial_view(run.chunks.initial, inp.image)
        index = len(run.chunks.history)
        result = pipe.step(run, lambda c, i, n: report(Progress(kind, c, "denoise", i, n)))
        run.to("cpu")  # between calls a run lives on the CPU
        received, display_s = _display_decode(pipe.codec, result.readout.latents, pipe._execution_device)  # [3, T_c, H, W]
        mask = result.readout.cell_mask()  # [T_c, H, W] the latent cells the memory gave the model
        view = _chunk_view(kind, result, result.frames, received, mask, pipe.codec.temporal_stride, _CHARTED,
                           time.perf_counter() - t0, initial, display_s)  # fmt: skip
        assert view.index == index
        return ChunkDone(kind, run, view)


def _display_decode(codec: VideoCodec, latents: Tensor, device) -> tuple[Tensor, float]:
    """What the model received, for the page: the chunk's readout ``[C, F, h, w]`` decoded by the
    run's codec (one more decode per chunk, inside the GPU call when generating) and its seconds, the
    chunk's ``"display"`` stage. Returns ``[3, T_c, H, W]`` in [-1, 1] and the seconds."""
    timer = StageTimer(device)
    with timer.record("display"), timer.stage("display"):
        received = codec.decode(latents[None].to(device, torch.float32))[0]  # [3, T_c, H, W]
    return received, timer.last["display"]


def _chunk_view(kind: str, result: ChunkResult, shown: Tensor, received: Tensor, mask: Tensor, temporal_stride: int,
                charted: set[str], seconds: float, initial: InitialView | None, display_s: float) -> ChunkView:  # fmt: skip
    """``shown`` / ``received`` ``[3, T_c, H, W]`` in [-1, 1], ``mask`` ``[T_c, H, W]``; ``display_s``: the
    seconds ``received`` took to decode (the ``"display"`` stage)."""
    colors = result.update.colors(result.new_frames(temporal_stride))  # [added, 3] image colour of each new point
    mask = mask.cpu().bool()
    return ChunkView(kind, result.index, result.frame_range, _frames_u8(shown), _frames_u8(received), mask,
                     mask.flatten(1).sum(1), {k: v for k, v in result.timings.items() if k in charted} | {"display": display_s},
                     result.update.num_points,
                     result.update.nbytes, colors, seconds, initial)  # fmt: skip


# -------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """Both memories along one path, chunk by chunk: their runs (None until started), what the page
    shows of each chunk, and how the run was made (``settings``)."""

    kind: RunKind
    overlap: int  # frames a chunk shares with the one before (stitching drops them)
    runs: dict[str, Any] = field(default_factory=lambda: {m: None for m in METHODS})
    views: dict[str, list[ChunkView]] = field(default_factory=lambda: {m: [] for m in METHODS})
    settings: dict[str, Any] = field(default_factory=dict)

    def chunks_done(self, kind: str) -> int:
        return len(self.views[kind])

    def planned(self) -> int:  # chunks the path holds (known once a run has started)
        started = [r for r in self.runs.values() if r is not None]
        return len(_chunk_run(started[0]).ranges) if started else -1

    def next_kind(self) -> str | None:
        """The memory that runs next: the one behind (latent first on a tie); None when both are done."""
        behind = min(METHODS, key=lambda m: (self.chunks_done(m), METHODS.index(m)))
        run = self.runs[behind]
        return None if run is not None and _chunk_run(run).done else behind

    def add(self, done: ChunkDone) -> None:
        if done.view.index != self.chunks_done(done.kind):
            raise ValueError(f"{done.kind} chunk {done.view.index + 1} arrived after {self.chunks_done(done.kind)} chunks")
        self.runs[done.kind] = done.run
        self.views[done.kind].append(done.view)

    def extend(self, path: CameraPath) -> None:
        """Go on along a longer path that begins with this one (both memories)."""
        for run in self.runs.values():
            if run is not None:
                _chunk_run(run).extend(path)

    def undo(self) -> int:
        """Take the last chunk back from both memories (from the one ahead alone, after a chunk that
        failed); returns the chunk number taken back (0-based)."""
        last = max(self.chunks_done(m) for m in METHODS) - 1
        if last < 1:
            raise ValueError("nothing to undo past the first chunk: generate again instead")
        for m in METHODS:
            if self.chunks_done(m) > last:
                _chunk_run(self.runs[m]).undo()
                self.views[m].pop()
        return last

    def result(self) -> "RunResult":
        """What both memories produced so far, for the page and the files (the chunks both have)."""
        n = min(self.chunks_done(m) for m in METHODS)
        methods = {}
        for m in METHODS:
            run = _chunk_run(self.runs[m])
            methods[m] = MethodRun(self.views[m][:n], self.views[m][0].initial, run.memory, self.overlap,
                                   [r.latents for r in run.history[:n]])  # fmt: skip
        return RunResult(self.kind, methods, dict(self.settings))


def _chunk_run(run) -> ChunkRun:  # a runner's run -> its ChunkRun
    return run if isinstance(run, ChunkRun) else run.chunks


def run_comparison(state: SceneState, runner, comparison: Comparison, *, steps: Callable[..., Iterator] | None = None,
                   stop: Callable[[], bool] = lambda: False) -> Iterator[Progress | ChunkDone]:  # fmt: skip
    """Run both memories of ``comparison`` chunk by chunk, alternating, from where they stand until
    both are done or ``stop()`` says so (checked after every chunk of the second memory). Yields the
    runner's ``Progress`` events and every ``ChunkDone`` once ``comparison`` holds it. ``steps``: how a
    chunk is run (default ``runner.steps``; the app passes the same generator wrapped as a GPU call)."""
    steps = steps or runner.steps
    inp = RunInput.of(state)
    while (kind := comparison.next_kind()) is not None:
        for event in steps(inp, kind, comparison.runs[kind]):
            if isinstance(event, ChunkDone):
                comparison.add(event)
            yield event
        if kind == METHODS[-1] and stop():
            break


def _complete(state: SceneState, runner, overlap: int) -> RunResult:
    comparison = Comparison(runner.kind, overlap, settings=runner.settings)
    for _ in run_comparison(state, runner, comparison):
        pass
    return comparison.result()


def run_readout_preview(state: SceneState, path: CameraPath | None = None, chunking: Chunking = Chunking(),
                        codec: VideoCodec | None = None, config: MemoryConfig | None = None) -> RunResult:  # fmt: skip
    """Both memories along the scene's path with the identity denoiser, to the end (module docstring).
    Memories start from the scene's image; the scene's own memory is not modified."""
    if path is not None:
        from dataclasses import replace

        state = replace(state, path=path)
    return _complete(state, PreviewRunner(codec, config, chunking), chunking.overlap)


def run_generation(state: SceneState, pipe, *, seed: int = 0, **pipe_kwargs: Any) -> RunResult:
    """Both memories through ``pipe`` with the same seed and settings, to the end."""
    chunking = pipe_kwargs.get("chunking") or pipe.defaults_for(pipe_kwargs.get("memory_mode", "replace")).chunking
    return _complete(state, GenerationRunner(pipe, seed=seed, **pipe_kwargs), chunking.overlap)


# --------------------------------------------------------------------------------- a run, stitched
@dataclass
class MethodRun:
    """One memory along the path: its chunks' views stitched (later chunks' first ``overlap`` frames
    are the previous chunk's last)."""

    views: list[ChunkView]
    initial: InitialView
    memory: SpatialMemory | None  # the memory after the last chunk (None when not kept)
    overlap: int = 1
    latents: list[Tensor] = field(default_factory=list)  # per chunk [C, F_c, h, w] float32: what it made (preview: the readout)

    def _stitched(self, name: str) -> Tensor:  # frames of every view along the first axis, shared ones once
        parts = [getattr(v, name) for v in self.views]
        if any(p is None for p in parts):
            raise ValueError("the frames of this run were written to files and released (ChunkView.release)")
        return torch.cat([p if i == 0 else p[self.overlap :] for i, p in enumerate(parts)])

    @property
    def video(self) -> Tensor:  # [T, H, W, 3] uint8
        return self._stitched("video")

    @property
    def received(self) -> Tensor:  # [T, H, W, 3] uint8
        return self._stitched("received")

    @property
    def mask(self) -> Tensor:  # [T, H, W] bool
        return self._stitched("mask")

    @property
    def timings(self) -> list[dict[str, float]]:  # per chunk {stage: seconds}, charted stages only
        return [v.timings for v in self.views]

    @property
    def sizes(self) -> list[int]:  # cache bytes after the image and after each chunk
        return [self.initial.nbytes] + [v.nbytes for v in self.views]

    @property
    def counts(self) -> list[int]:  # points after the image and after each chunk
        return [self.initial.num_points] + [v.num_points for v in self.views]

    @property
    def colors(self) -> Tensor:  # [N, 3] uint8 image colour of each point, in point order
        return torch.cat([self.initial.colors] + [v.colors for v in self.views])

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [v.frame_range for v in self.views]

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.views)

    @property
    def hole_fraction(self) -> float:  # of all pixels of all frames, shared frames once
        seen = torch.cat([v.seen if i == 0 else v.seen[self.overlap :] for i, v in enumerate(self.views)])  # [T]
        H, W = self.size
        return 1.0 - float(seen.double().sum()) / (len(seen) * H * W)

    @property
    def size(self) -> tuple[int, int]:  # (H, W) of the frames
        return self.initial.size


@dataclass
class RunResult:
    """Both memories along one path, with what the run was."""

    kind: RunKind  # what the videos are
    methods: dict[str, MethodRun]  # "latent", "rgb"
    settings: dict[str, Any] = field(default_factory=dict)  # codec / weights, device, seed, steps, guidance, ...

    @property
    def memory(self) -> SpatialMemory:  # the latent memory after the run (3D view, downloads)
        return self.methods["latent"].memory

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return self.methods["latent"].ranges


# ---------------------------------------------------------------------------------- result files
@dataclass
class ResultFiles:
    """Files written for one result (all in one folder)."""

    videos: dict[str, Path]  # method -> main video (.mp4): generated, or the memory render at every frame
    received: dict[str, Path]  # method -> what the model receives (.mp4)
    masks: dict[str, Path]  # method -> hole-mask video (.mp4)
    side_by_side: Path  # both main videos with labels (.mp4)
    cache_ply: Path  # latent cache as binary PLY
    cache_safetensors: Path  # latent cache, reloadable with LatentSpatialMemory.load
    latents: Path  # every chunk's latents, both memories ("{kind}/chunk_{k:03d}": [C, F_c, h, w] float32)
    path_files: list[Path]  # RealEstate10K .txt, nerfstudio .json, mirage .json

    def downloads(self) -> list[Path]:
        return list(dict.fromkeys([self.side_by_side, *self.videos.values(), *self.received.values(), *self.masks.values(),
                                   self.cache_ply, self.cache_safetensors, self.latents, *self.path_files]))  # fmt: skip


PLACEHOLDER_GEOMETRY = "planar prior: placeholder geometry, not a depth estimate"  # RunResult.settings["geometry"]


def video_labels(result: RunResult) -> dict[str, str]:
    """What each main video is, for the burned-in labels and captions (a run on the planar prior says so)."""
    conditioning = result.settings.get("conditioning")
    what = "memory render, every frame" if result.kind == "readout preview" else "generated" + (f", {conditioning}" if conditioning else "")
    if result.settings.get("geometry") == PLACEHOLDER_GEOMETRY:
        what += " · PLACEHOLDER GEOMETRY (planar prior)"
    return {m: f"{METHOD_LABELS[m]}: {what}" for m in METHODS}


def video_names(kind: str, run_kind: RunKind, placeholder: bool = False) -> dict[str, str]:
    """File names of one memory's videos: ``{"video", "received", "mask"}`` (``placeholder``: the run's
    geometry is the planar prior, and the names say so)."""
    tag = ("render" if run_kind == "readout preview" else "generated") + ("_planar_prior" if placeholder else "")
    return {"video": f"{kind}_{tag}.mp4", "received": f"{kind}_model_input.mp4", "mask": f"{kind}_holes.mp4"}


def side_by_side_name(run_kind: RunKind, placeholder: bool = False) -> str:
    tag = "render" if run_kind == "readout preview" else "generated"
    return f"side_by_side_{tag}{'_planar_prior' if placeholder else ''}.mp4"


def placeholder_geometry(result: RunResult) -> bool:
    return result.settings.get("geometry") == PLACEHOLDER_GEOMETRY


def write_memory_videos(folder: Path, kind: str, run: MethodRun, run_kind: RunKind, fps: float = 16,
                        names: dict[str, str] | None = None) -> dict[str, Path]:  # fmt: skip
    """One memory's videos of its chunks so far into ``folder``: ``{"video", "received", "mask"}`` paths
    (named ``names``, default ``video_names``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or video_names(kind, run_kind)
    return {"video": video.write_video(folder / names["video"], run.video.numpy(), fps),
            "received": video.write_video(folder / names["received"], run.received.numpy(), fps),
            "mask": video.write_video(folder / names["mask"], video.mask_to_video(run.mask), fps)}  # fmt: skip


def side_by_side_frames(result: RunResult, frames: dict[str, Tensor]) -> Tensor:
    """Both memories' ``frames`` (``[T, H, W, 3]`` uint8 each) side by side with their labels: ``[3, T, H, 2W + gap]``."""
    labels = video_labels(result)
    return video.side_by_side([video.from_uint8_frames(frames[m].numpy()) for m in METHODS], [labels[m] for m in METHODS])


def write_result_files(state: SceneState, result: RunResult, folder: Path, fps: float = 16,
                       videos: dict[str, dict[str, Path]] | None = None, side: Path | None = None) -> ResultFiles:  # fmt: skip
    """Write the videos, the side-by-side video, the latent cache and the path into ``folder``.
    ``videos`` / ``side``: each memory's videos / the side-by-side video already written for exactly
    these chunks (``write_memory_videos`` / ``side_by_side_frames``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = result.methods
    tag = placeholder_geometry(result)
    written = {m: (videos or {}).get(m) or write_memory_videos(folder, m, r, result.kind, fps, video_names(m, result.kind, tag))
               for m, r in runs.items()}  # fmt: skip
    videos = {m: written[m]["video"] for m in runs}
    received = {m: written[m]["received"] for m in runs}
    masks = {m: written[m]["mask"] for m in runs}
    if side is None:
        sbs = side_by_side_frames(result, {m: r.video for m, r in runs.items()})  # [3, T, H, 2W + gap]
        side = video.write_video(folder / side_by_side_name(result.kind, placeholder_geometry(result)), sbs, fps)
    latent = runs["latent"]
    ply = latent.memory.to_ply(folder / "latent_cache.ply", colors=latent.colors)
    st = latent.memory.save(folder / "latent_cache.safetensors")
    lat = write_latents(folder / "latents.safetensors", result)
    return ResultFiles(videos, received, masks, side, ply, st, lat, export_path(state, folder, fps))


def write_latents(path: Path, result: RunResult) -> Path:
    """Every chunk's latents of both memories (generated, or in the preview the readout) in one
    safetensors file: ``"{kind}/chunk_{k:03d}"`` -> ``[C, F_c, h, w]`` float32, what the run is made of."""
    from safetensors.torch import save_file

    tensors = {f"{m}/chunk_{k:03d}": t.contiguous() for m, r in result.methods.items() for k, t in enumerate(r.latents)}
    save_file(tensors, str(path), metadata={"kind": result.kind, "layout": "[C, F_c, h, w] float32 per chunk"})
    return Path(path)


def result_figures(state: SceneState, result: RunResult, color_by: ColorBy = "latent"):
    """(timing figure, cache size figure, cache growth figure) of a result."""
    what = ("readout preview, no generative model; encode and decode timed with the weight-free offline codec, "
            "not the Wan2.2 VAE") if result.kind == "readout preview" else "generation"  # fmt: skip
    timings = {METHOD_LABELS[m]: r.timings for m, r in result.methods.items()}
    timing = plotting.timing_figure(timings, aggregate="per_chunk", title="Time per stage and chunk", subtitle=what)
    last = [r.sizes[-1] for r in result.methods.values()]
    spread = min(last) > 0 and max(last) / min(last) >= 10  # orders of magnitude apart: a log axis shows both
    sizes = plotting.cache_size_figure({METHOD_LABELS[m]: r.sizes for m, r in result.methods.items()}, log_y=spread,
                                       title="Cache size after each chunk" + (" (log scale)" if spread else ""))  # fmt: skip
    latent = result.methods["latent"]
    n = latent.counts[-1]  # the points of the chunks shown (the memory may hold a chunk more)
    growth = plotting.cache_growth_figure(
        latent.memory.points[:n], point_colors(latent.memory, latent.colors, color_by)[:n], latent.counts,
        state.path, title="Latent cache as it grew", frames=latent.memory.frame_ids[:n] * TEMPORAL_STRIDE,
    ).update_layout(height=580)
    return timing, sizes, growth


def result_caption(result: RunResult, revisits: dict[str, RevisitScore | None] | None = None) -> str:
    """One markdown paragraph per method (what the video is, holes, cache, time; with ``revisits``, how
    close its frames back at an earlier camera are to the first visit), then what the run was."""
    labels = video_labels(result)
    lines = []
    for m, r in result.methods.items():
        total = sum(sum(t.values()) for t in r.timings)
        score = (revisits or {}).get(m)
        lines.append(
            f"**{labels[m]}** — holes {r.hole_fraction:.1%} of pixels, cache {r.sizes[-1] / 2**20:.2f} MiB "
            f"after {len(r.ranges)} chunk(s), {total:.2f} s in the charted stages"
            + ("." if score is None else f"; **{score.describe()}**.")
        )
    if placeholder_geometry(result):
        lines.append("**Placeholder geometry**: this run's depth is the planar prior (a ground plane and a wall, not an "
                     "estimate of this scene), so what the memories store and show is placeholder geometry.")
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
