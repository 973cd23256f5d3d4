"""One chunk step, written once: read -> condition -> denoise -> decode -> depth -> update.

``run_chunk`` runs one chunk and ``run_chunks`` all of them along a camera path
(``mirage.frames.Chunking``: 33 frames, then +32), with pluggable parts (``ChunkParts``), the way
diffusers plugs schedulers into one sampling loop:

* ``condition(chunk) -> conditioning``: what the denoiser needs from the readout (and, for trained
  side branches, from earlier chunks: ``chunk.history``);
* ``denoise(chunk, conditioning) -> latents [1, C, F, h, w]`` with its first latents pinned to
  ``chunk.pinned``;
* ``codec``: ``decode(latents) -> frames``, ``encode`` for the continuation, the temporal stride;
* ``depth(chunk, new_frames, previous_scale) -> DepthResult``: metric depth of the new latent-aligned
  frames ``4k`` (those after the pinned ones, ``chunk.update_from(new_frames)`` on) for the memory update.

``MiragePipeline`` plugs in the diffusion model, the VAE and a depth backend aligned to the memory;
the offline readout preview plugs in the identity (the latents are the readout) and the readout's
own depth. Everything else — starting a memory from the image (``start_memory``), chunking, latent-aligned
slicing, the update with far cells excluded, the continuation latent, timings with CUDA
synchronisation, peak memory — is here and nowhere else. A chunk needs nothing but the memory, the
path and the chunks before it (``history``), so chunks can run one call at a time.

Chunks follow a ``mirage.frames.Chunking``: a later chunk shares ``overlap`` frames with the previous
one, and its first ``(overlap - 1) / 4 + 1`` latents are pinned (given, not generated). Continuation
(those pinned latents): ``"reencode"`` encodes the previous chunk's last ``overlap`` decoded frames
(one frame: as TI2V was trained, frame 0 = one image encoded by itself; nine: Spatia's history);
``"latent"`` keeps the previous chunk's last latents (what the official Mirage code does with its
trained branch; the last latent covers four pixel frames).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor

from .cameras import Camera, Cameras
from .frames import Chunking, latent_aligned, new_latent_frames
from .memory import MemoryReadout, MemorySnapshot, MemoryUpdate, Observation, SpatialMemory
from .paths import CameraPath
from .timing import StageTimer

__all__ = [
    "Continuation",
    "CONTINUATIONS",
    "STAGES",
    "READOUT_PARTS",
    "Chunk",
    "ChunkParts",
    "DepthResult",
    "ChunkRecord",
    "ChunkResult",
    "ChunkRun",
    "history_frames",
    "start_memory",
    "run_chunk",
    "step",
    "run_chunks",
    "identity_denoise",
    "readout_depth",
]

Continuation = Literal["reencode", "latent"]
CONTINUATIONS: tuple[str, ...] = get_args(Continuation)
# Stages of one chunk; with "init" (encode the image, its depth, initialize the memory) and "prompt"
# in chunk 0 they add up to (almost) the chunk's "total".
STAGES = ("prompt", "init", "readout", "condition", "denoise", "decode", "depth", "update")
# Parts of "readout" that the memories report ("project" for the latent memory; "rasterize" and
# "encode" for the RGB memory). They are *inside* "readout", not additional to it.
READOUT_PARTS = ("project", "rasterize", "encode")


@dataclass
class Chunk:
    """One chunk as the parts see it."""

    index: int  # chunk number, 0-based
    frame_range: tuple[int, int]  # (start, stop) pixel frames of the path, stop exclusive
    cameras: Cameras  # [T_c] pixel-frame cameras
    latent_cameras: Cameras  # [F_c] cameras of the latent-aligned frames 0, 4, 8, ...
    pinned: Tensor  # [1, C, P, h, w] the clean latents pinned at the chunk's first P latent frames
    readout: MemoryReadout  # the memory read for ``cameras`` (latents [C, F_c, h, w], mask, depth)
    history: list["ChunkRecord"]  # the chunks before this one, as later chunks read them

    def update_from(self, frames: Tensor) -> int:  # frames [3, F_c - U, H, W] -> U
        """The first latent frame of ``frames``, the latent-aligned frames the update will store (the
        ones after the pinned latents, or from 0 where latent 0 is stored again)."""
        return len(self.latent_cameras) - frames.shape[1]


@dataclass
class DepthResult:
    depth: Tensor  # [F_c - U, H, W] (or on the latent grid) metres for the latent-aligned frames the update stores
    scale: float = 1.0  # scale applied to the estimate to match the memory
    aligned: bool = True  # False when too few cells overlapped and the previous scale was kept


@dataclass(frozen=True)
class ChunkParts:
    """The pluggable parts of the chunk step (module docstring)."""

    codec: Any  # a mirage.codecs.VideoCodec: decode the chunk, encode the continuation, temporal stride
    condition: Callable[[Chunk], Any]  # chunk -> what denoise needs besides the chunk
    denoise: Callable[[Chunk, Any], Tensor]  # (chunk, conditioning) -> [1, C, F, h, w] latents, first P pinned
    depth: Callable[[Chunk, Tensor, float], DepthResult]  # (chunk, new frames [3, F-P, H, W], previous scale)
    on_readout: Callable[[Chunk], Any] | None = None  # after each read (untimed); its value -> ChunkResult.extras
    on_stage: Callable[[int, str], None] | None = None  # (chunk index, stage) as each stage starts (progress)
    render: bool = False  # the read also renders what the memory shows at every pixel frame (readout.render)
    keep_frame: Callable[[int], bool] | None = None  # path frames later chunks read (e.g. references), kept decoded


@dataclass
class ChunkRecord:
    """What later chunks read of an earlier one (``ChunkResult.record``): small enough to travel with
    a run between GPU calls. On the CPU."""

    index: int
    frame_range: tuple[int, int]  # (start, stop) pixel frames of the path
    latents: Tensor  # [C, F_c, h, w] float32 denoised latents
    readout_latents: Tensor  # [C, F_c, h, w] the readout the chunk was conditioned on
    depth_scale: float  # the scale its depth was aligned with (the next chunk starts from it)
    frames: dict[int, Tensor]  # path frame -> [3, H, W] float32 decoded: the chunk's last shared frames and kept ones


@dataclass
class ChunkResult:
    """What one chunk produced, on the CPU."""

    index: int
    frame_range: tuple[int, int]
    latents: Tensor  # [C, F_c, h, w] float32 denoised latents
    frames: Tensor  # [3, T_c, H, W] float32 decoded frames in [-1, 1]
    readout: MemoryReadout  # the readout the chunk was conditioned on
    update: MemoryUpdate  # what the memory stored of the chunk (cells on the CPU)
    timings: dict[str, float]  # STAGES present + READOUT_PARTS present + "total", seconds
    peak_memory_bytes: int  # torch.cuda.max_memory_allocated during the chunk (0 on CPU)
    depth_scale: float = 1.0
    depth_aligned: bool = True
    pinned_latents: int = 1  # P: the first latents were given (pinned), the memory was updated with the others
    updated_from: int | None = None  # the first latent the memory was updated with (None: P; 0 where it re-stored latent 0)
    extras: dict[str, Any] = field(default_factory=dict)  # what on_readout returned for this chunk

    @property
    def added(self) -> int:  # points the update appended
        return self.update.added

    @property
    def added_cells(self) -> Tensor:  # [F_c - U, g_h, g_w] bool: the grid cells the update appended
        return self.update.cells

    @property
    def cache_bytes(self) -> int:  # memory.nbytes after the update
        return self.update.nbytes

    def new_frames(self, temporal_stride: int) -> Tensor:  # -> [3, F_c - U, H, W]
        """The latent-aligned frames the memory was updated with (those after the pinned latents, or all
        of them where the update also stored latent 0: ``updated_from``)."""
        first = self.pinned_latents if self.updated_from is None else self.updated_from
        return new_latent_frames(self.frames, first, temporal_stride)

    def record(self, overlap: int, keep_frame: Callable[[int], bool] | None = None) -> ChunkRecord:
        """What later chunks read of this one: its latents, its readout's latents, its depth scale, and
        the decoded frames they need (the last ``overlap`` frames, which the next chunk shares, and
        those ``keep_frame`` names)."""
        start, stop = self.frame_range
        keep = [t for t in range(start, stop) if t >= stop - overlap or (keep_frame is not None and keep_frame(t))]
        return ChunkRecord(self.index, self.frame_range, self.latents, self.readout.latents, self.depth_scale,
                           {t: self.frames[:, t - start].clone() for t in keep})  # fmt: skip


def history_frames(history: list[ChunkRecord], frames: list[int]) -> Tensor:  # -> [3, len(frames), H, W]
    """Decoded path frames kept by the records (where two chunks share a frame, the earlier one's, as
    the stitched video shows it)."""
    out = []
    for t in frames:
        holder = next((r for r in history if t in r.frames), None)
        if holder is None:
            raise ValueError(f"path frame {t} was not kept by the chunks before this one")
        out.append(holder.frames[t])
    return torch.stack(out, dim=1)


def identity_denoise(chunk: Chunk, conditioning: Any) -> Tensor:  # -> [1, C, F, h, w]
    """The preview's denoiser: the latents are the readout, the first ones the pinned latents."""
    latents = chunk.readout.latents[None].float().clone()  # [1, C, F, h, w]
    latents[:, :, : chunk.pinned.shape[2]] = chunk.pinned.to(latents)
    return latents


def readout_depth(chunk: Chunk, new_frames: Tensor, previous_scale: float) -> DepthResult:
    """The preview's depth: what the memory itself reported for the new frames 4k (no estimation)."""
    return DepthResult(chunk.readout.frame_depths(chunk.update_from(new_frames)), previous_scale, True)


def start_memory(memory: SpatialMemory, camera: Camera, image: Tensor, depth: Tensor, encode: Callable[[Tensor], Tensor],
                 max_depth: float | None = None) -> tuple[Tensor, MemoryUpdate]:  # fmt: skip
    """Encode the image (``[3, H, W]`` in ``[-1, 1]``) and initialize ``memory`` from it with its depth
    ``[H, W]`` (cells farther than ``max_depth`` excluded). Returns the image's latent ``[1, C, 1, h, w]``
    (float32, the first chunk's pinned latent) and what the memory stored."""
    first_latent = encode(image[None, :, None]).float()  # [1, 3, 1, H, W] -> [1, C, 1, h, w]
    far = None if max_depth is None else depth > max_depth  # [H, W]
    update = memory.initialize(Observation.single(camera, depth, first_latent[0, :, 0], image, far))
    return first_latent, update


def _continue(previous: ChunkRecord, continuation: Continuation, chunking: Chunking, codec,
              device: torch.device) -> Tensor:  # fmt: skip
    """The pinned latents ``[1, C, P, h, w]`` of the next chunk from the previous chunk's record."""
    if continuation == "latent":
        return previous.latents[None, :, -chunking.pinned_latents(codec.temporal_stride) :].to(device)
    stop = previous.frame_range[1]
    shared = history_frames([previous], list(range(stop - chunking.overlap, stop)))[None].to(device)  # [1, 3, overlap, H, W]
    return codec.encode(shared).float()  # encoded on their own: [1, C, P, h, w]


def run_chunk(
    memory: SpatialMemory,
    path: CameraPath,
    first_latent: Tensor,  # [1, C, 1, h, w] the input image's latent (chunk 0's pinned latent)
    parts: ChunkParts,
    frame_range: tuple[int, int],  # (start, stop) pixel frames of the path this chunk covers
    history: list[ChunkRecord],  # the chunks before this one, in order
    chunking: Chunking = Chunking(),
    *,
    continuation: Continuation = "reencode",
    max_depth: float | None = None,
    restore_first: bool = False,
    first_timings: dict[str, float] | None = None,
) -> ChunkResult:
    """The chunk of ``path`` at ``frame_range`` on ``memory``, which holds the image and the chunks in
    ``history``: read -> condition -> denoise -> decode -> depth -> update (module docstring).
    restore_first: the first chunk's update stores its latent 0 (the image) again with the depth estimated
    for it, as the official Mirage code does (``mirage.families``). first_timings: stages measured before
    the chunk (``prompt``, ``init``), added to its record."""
    if not isinstance(path, CameraPath):
        raise TypeError(f"path must be a mirage.paths.CameraPath (frame 0 = the source camera), got {type(path).__name__}")
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")
    ts = parts.codec.temporal_stride
    index = len(history)
    device = first_latent.device
    on_cuda = device.type == "cuda"
    report = parts.on_stage if parts.on_stage is not None else (lambda c, s: None)
    timer = StageTimer(device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start, stop = frame_range
    t_chunk, t_hook = time.perf_counter(), 0.0
    cams = path[start:stop]  # [T_c] pixel-frame cameras
    latent_cams = latent_aligned(cams, ts)  # [F_c]
    extras: dict[str, Any] = {}
    scale, pinned = (history[-1].depth_scale, None) if history else (1.0, first_latent)  # pinned: [1, C, P, h, w]
    with timer.record(f"chunk {index}") as rec:
        rec.update(first_timings or {})
        if history:
            with timer.stage("condition"):  # the first latents of this chunk continue the last chunk
                pinned = _continue(history[-1], continuation, chunking, parts.codec, device)
        report(index, "readout")
        with timer.stage("readout"):
            readout = memory.read(cams, render=parts.render)  # latents [C, F, h, w], mask and depth [F, h, w]
        rec.update(readout.timings)
        chunk = Chunk(index, (start, stop), cams, latent_cams, pinned, readout, list(history))
        if parts.on_readout is not None:
            t0 = time.perf_counter()
            extras["on_readout"] = parts.on_readout(chunk)
            t_hook = time.perf_counter() - t0
        report(index, "condition")
        with timer.stage("condition"):
            conditioning = parts.condition(chunk)
        report(index, "denoise")
        with timer.stage("denoise"):
            latents = parts.denoise(chunk, conditioning)  # [1, C, F, h, w]
        report(index, "decode")
        with timer.stage("decode"):
            frames = parts.codec.decode(latents)[0].float()  # [3, T_c, H, W]
        report(index, "depth")
        P = pinned.shape[2]  # the pinned latents are already in the memory: the new ones follow
        U = 0 if restore_first and index == 0 else P  # the first latent the update stores
        with timer.stage("depth"):
            new_frames = new_latent_frames(frames, U, ts)  # [3, F-U, H, W] the latent-aligned frames 4k to store
            est = parts.depth(chunk, new_frames, scale)
        report(index, "update")
        with timer.stage("update"):
            far = None if max_depth is None else est.depth > max_depth  # [F-U, H, W] far / sky cells
            update = memory.update(Observation(latent_cams[U:], est.depth, latents[0, :, U:], new_frames, far))
    rec["total"] = time.perf_counter() - t_chunk - t_hook
    return ChunkResult(
        index=index, frame_range=(start, stop), latents=latents[0].float().cpu(), frames=frames.cpu(),
        readout=readout.cpu(), update=update.cpu(),
        timings=dict(rec), peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else 0,
        depth_scale=est.scale, depth_aligned=est.aligned, pinned_latents=P, updated_from=U, extras=extras,
    )  # fmt: skip


@dataclass
class ChunkRun:
    """One memory along one path, chunk by chunk, resumable: everything the next chunk needs and
    nothing more (the memory, the records of the chunks so far, the image's latent), so that a run can
    stop after any chunk, cross a process boundary pickled (on the CPU: ``to("cpu")``), go on
    (``step``), grow a longer path (``extend``) or take its last chunk back (``undo``)."""

    memory: SpatialMemory
    path: CameraPath  # the whole path so far; chunks run along it in order
    first_latent: Tensor  # [1, C, 1, h, w] the image's latent (chunk 0's pinned latent)
    chunking: Chunking
    continuation: Continuation = "reencode"
    max_depth: float | None = None  # metres: cells farther than this are not stored
    restore_first: bool = False  # the first chunk's update stores latent 0 again (run_chunk)
    initial: MemoryUpdate | None = None  # what the memory stored of the image (None: it came in holding a scene)
    history: list[ChunkRecord] = field(default_factory=list)  # the chunks run, in order
    rng_state: Tensor | None = None  # the random state the next chunk starts from (a torch.Generator's, if any)
    snapshots: list[tuple[MemorySnapshot, Tensor | None]] = field(default_factory=list)  # before each chunk: memory, rng

    @property
    def ranges(self) -> list[tuple[int, int]]:  # (start, stop) of every chunk: those run, then those to run
        done = [r.frame_range for r in self.history]
        return self.chunking.ranges(len(self.path), self.first_latent_stride, done)

    @property
    def first_latent_stride(self) -> int:  # pixel frames per latent frame of the memory's codec
        return self.memory.config.temporal_stride

    @property
    def done(self) -> bool:
        return len(self.history) == len(self.ranges)

    def to(self, device: torch.device | str) -> "ChunkRun":
        """The run with its memory and the image's latent on ``device`` (the records stay on the CPU)."""
        self.memory.to(device)
        self.first_latent = self.first_latent.to(device)
        return self

    def extend(self, path: CameraPath) -> "ChunkRun":
        """Go on along ``path``, which must begin with this run's path (same cameras) and be longer."""
        n = len(self.path)
        if not isinstance(path, CameraPath) or len(path) <= n:
            raise ValueError(f"a continued path must be a longer CameraPath than the {n} frames run so far")
        if not (torch.equal(path.cam_from_world[:n].cpu(), self.path.cam_from_world.cpu())
                and torch.equal(path.K[:n].cpu(), self.path.K.cpu())):  # fmt: skip
            raise ValueError("a continued path must begin with the frames run so far, camera for camera")
        self.path = path
        return self

    def undo(self) -> ChunkRecord:
        """Take the last chunk back: the memory as it was before it, its record dropped, the random
        state it started from restored. Returns the record dropped."""
        if not self.history:
            raise ValueError("no chunk to undo")
        snapshot, rng = self.snapshots.pop()
        self.memory.restore(snapshot)
        self.rng_state = rng
        return self.history.pop()


def step(run: ChunkRun, parts: ChunkParts, first_timings: dict[str, float] | None = None) -> ChunkResult:
    """The run's next chunk (``run_chunk``); its record joins the run's history."""
    ranges = run.ranges
    if run.done:
        raise ValueError(f"all {len(ranges)} chunks of the {len(run.path)}-frame path are done: extend the path to go on")
    run.snapshots.append((run.memory.snapshot(), run.rng_state))
    try:
        result = run_chunk(run.memory, run.path, run.first_latent, parts, ranges[len(run.history)], run.history,
                           run.chunking, continuation=run.continuation, max_depth=run.max_depth,
                           restore_first=run.restore_first, first_timings=first_timings)  # fmt: skip
    except BaseException:
        snapshot, _ = run.snapshots.pop()
        run.memory.restore(snapshot)  # a chunk that failed leaves the memory as it was
        raise
    run.history.append(result.record(run.chunking.overlap, parts.keep_frame))
    return result


def run_chunks(
    memory: SpatialMemory,
    path: CameraPath,
    first_latent: Tensor,  # [1, C, 1, h, w] the input image's latent
    parts: ChunkParts,
    chunking: Chunking = Chunking(),
    *,
    continuation: Continuation = "reencode",
    max_depth: float | None = None,
    restore_first: bool = False,
    first_timings: dict[str, float] | None = None,
) -> list[ChunkResult]:
    """Every chunk of ``path`` on an initialized ``memory``, one ``step`` after another."""
    run = ChunkRun(memory, path, first_latent, chunking.check(parts.codec.temporal_stride), continuation, max_depth,
                   restore_first)  # fmt: skip
    results = []
    while not run.done:
        results.append(step(run, parts, first_timings if not results else None))
    return results
