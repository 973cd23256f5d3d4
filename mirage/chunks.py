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
  frames ``4k`` (those after the pinned ones) for the memory update.

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
from .memory import MemoryReadout, MemoryUpdate, Observation, SpatialMemory
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
    "ChunkResult",
    "start_memory",
    "run_chunk",
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
    history: list["ChunkResult"]  # the chunks before this one (their latents, frames and readouts)


@dataclass
class DepthResult:
    depth: Tensor  # [F_c - P, H, W] (or on the latent grid) metres for the new latent-aligned frames
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
    extras: dict[str, Any] = field(default_factory=dict)  # what on_readout returned for this chunk

    @property
    def added(self) -> int:  # points the update appended
        return self.update.added

    @property
    def added_cells(self) -> Tensor:  # [F_c - P, g_h, g_w] bool: the grid cells the update appended
        return self.update.cells

    @property
    def cache_bytes(self) -> int:  # memory.nbytes after the update
        return self.update.nbytes

    def new_frames(self, temporal_stride: int) -> Tensor:  # -> [3, F_c - P, H, W]
        """The latent-aligned frames the memory was updated with (those after the pinned latents)."""
        return new_latent_frames(self.frames, self.pinned_latents, temporal_stride)


def identity_denoise(chunk: Chunk, conditioning: Any) -> Tensor:  # -> [1, C, F, h, w]
    """The preview's denoiser: the latents are the readout, the first ones the pinned latents."""
    latents = chunk.readout.latents[None].float().clone()  # [1, C, F, h, w]
    latents[:, :, : chunk.pinned.shape[2]] = chunk.pinned.to(latents)
    return latents


def readout_depth(chunk: Chunk, new_frames: Tensor, previous_scale: float) -> DepthResult:
    """The preview's depth: what the memory itself reported for the new frames 4k (no estimation)."""
    return DepthResult(chunk.readout.frame_depths(chunk.pinned.shape[2]), previous_scale, True)


def start_memory(memory: SpatialMemory, camera: Camera, image: Tensor, depth: Tensor, encode: Callable[[Tensor], Tensor],
                 max_depth: float | None = None) -> tuple[Tensor, MemoryUpdate]:  # fmt: skip
    """Encode the image (``[3, H, W]`` in ``[-1, 1]``) and initialize ``memory`` from it with its depth
    ``[H, W]`` (cells farther than ``max_depth`` excluded). Returns the image's latent ``[1, C, 1, h, w]``
    (float32, the first chunk's pinned latent) and what the memory stored."""
    first_latent = encode(image[None, :, None]).float()  # [1, 3, 1, H, W] -> [1, C, 1, h, w]
    far = None if max_depth is None else depth > max_depth  # [H, W]
    update = memory.initialize(Observation.single(camera, depth, first_latent[0, :, 0], image, far))
    return first_latent, update


def _continue(previous: ChunkResult, continuation: Continuation, chunking: Chunking, codec,
              device: torch.device) -> Tensor:  # fmt: skip
    """The pinned latents ``[1, C, P, h, w]`` of the next chunk from the previous chunk's results."""
    if continuation == "latent":
        return previous.latents[None, :, -chunking.pinned_latents(codec.temporal_stride) :].to(device)
    shared = previous.frames[None, :, -chunking.overlap :].to(device)  # [1, 3, overlap, H, W] the shared frames
    return codec.encode(shared).float()  # encoded on their own: [1, C, P, h, w]


def run_chunk(
    memory: SpatialMemory,
    path: CameraPath,
    first_latent: Tensor,  # [1, C, 1, h, w] the input image's latent (chunk 0's pinned latent)
    parts: ChunkParts,
    index: int,
    history: list[ChunkResult],  # the chunks before this one, in order
    chunking: Chunking = Chunking(),
    *,
    continuation: Continuation = "reencode",
    max_depth: float | None = None,
    first_timings: dict[str, float] | None = None,
) -> ChunkResult:
    """Chunk ``index`` of ``path`` on ``memory``, which holds the image and the chunks in ``history``:
    read -> condition -> denoise -> decode -> depth -> update (module docstring). first_timings:
    stages measured before the chunk (``prompt``, ``init``), added to its record."""
    if not isinstance(path, CameraPath):
        raise TypeError(f"path must be a mirage.paths.CameraPath (frame 0 = the source camera), got {type(path).__name__}")
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")
    ts = parts.codec.temporal_stride
    ranges = chunking.check(ts).ranges(len(path), ts)
    if not (0 <= index < len(ranges)) or len(history) != index:
        raise ValueError(f"chunk {index} of {len(ranges)} needs the {index} chunks before it, got {len(history)}")
    device = first_latent.device
    on_cuda = device.type == "cuda"
    report = parts.on_stage if parts.on_stage is not None else (lambda c, s: None)
    timer = StageTimer(device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start, stop = ranges[index]
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
        with timer.stage("depth"):
            new_frames = new_latent_frames(frames, P, ts)  # [3, F-P, H, W] the latent-aligned frames 4k generated
            est = parts.depth(chunk, new_frames, scale)
        report(index, "update")
        with timer.stage("update"):
            far = None if max_depth is None else est.depth > max_depth  # [F-P, H, W] far / sky cells
            update = memory.update(Observation(latent_cams[P:], est.depth, latents[0, :, P:], new_frames, far))
    rec["total"] = time.perf_counter() - t_chunk - t_hook
    return ChunkResult(
        index=index, frame_range=(start, stop), latents=latents[0].float().cpu(), frames=frames.cpu(),
        readout=readout.cpu(), update=update.cpu(),
        timings=dict(rec), peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else 0,
        depth_scale=est.scale, depth_aligned=est.aligned, pinned_latents=P, extras=extras,
    )  # fmt: skip


def run_chunks(
    memory: SpatialMemory,
    path: CameraPath,
    first_latent: Tensor,  # [1, C, 1, h, w] the input image's latent
    parts: ChunkParts,
    chunking: Chunking = Chunking(),
    *,
    continuation: Continuation = "reencode",
    max_depth: float | None = None,
    first_timings: dict[str, float] | None = None,
) -> list[ChunkResult]:
    """Every chunk of ``path`` on an initialized ``memory``, one ``run_chunk`` after another."""
    results: list[ChunkResult] = []
    for c in range(len(chunking.check(parts.codec.temporal_stride).ranges(len(path), parts.codec.temporal_stride))):
        results.append(run_chunk(memory, path, first_latent, parts, c, results, chunking, continuation=continuation,
                                 max_depth=max_depth, first_timings=first_timings if c == 0 else None))  # fmt: skip
    return results
