"""One chunk step, written once: read -> condition -> denoise -> decode -> depth -> update.

``run_chunks`` drives a memory along a camera path chunk by chunk (``mirage.frames.Chunking``:
33 frames, then +32) with pluggable parts, the way diffusers plugs schedulers into one sampling loop:

* ``condition(chunk) -> conditioning``: what the denoiser needs from the readout (and, for trained
  side branches, from earlier chunks: ``chunk.history``);
* ``denoise(chunk, conditioning) -> latents [1, C, F, h, w]`` with its first latents pinned to
  ``chunk.pinned``;
* ``decode(latents) -> frames [3, T_c, H, W]``;
* ``depth(chunk, new_frames, previous_scale) -> DepthResult``: metric depth of the new latent-aligned
  frames ``4k`` (those after the pinned ones) for the memory update.

``MiragePipeline`` plugs in the diffusion model, the VAE and a depth backend aligned to the memory;
the offline readout preview plugs in the identity (the latents are the readout) and the readout's
own depth. Everything else — chunking, latent-aligned slicing, the update with far cells excluded,
the continuation latent, timings with CUDA synchronisation, peak memory — is here and nowhere else.

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
from typing import Any, Callable, Literal, Protocol

import torch
from torch import Tensor

from .cameras import Cameras
from .frames import Chunking, latent_aligned
from .memory import MemoryReadout, Observation, SpatialMemory
from .paths import CameraPath
from .timing import StageTimer

__all__ = [
    "Continuation",
    "CONTINUATIONS",
    "STAGES",
    "READOUT_PARTS",
    "Chunk",
    "DepthResult",
    "ChunkResult",
    "run_chunks",
    "identity_denoise",
    "readout_depth",
]

Continuation = Literal["reencode", "latent"]
CONTINUATIONS = ("reencode", "latent")
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
    depth: Tensor  # [F_c - 1, H, W] (or on the latent grid) metres for the frames 4k, k >= 1
    scale: float = 1.0  # scale applied to the estimate to match the memory
    aligned: bool = True  # False when too few cells overlapped and the previous scale was kept


@dataclass
class ChunkResult:
    """What one chunk produced, on the CPU."""

    index: int
    frame_range: tuple[int, int]
    latents: Tensor  # [C, F_c, h, w] float32 denoised latents
    frames: Tensor  # [3, T_c, H, W] float32 decoded frames in [-1, 1]
    readout: MemoryReadout  # the readout the chunk was conditioned on
    timings: dict[str, float]  # STAGES present + READOUT_PARTS present + "total", seconds
    peak_memory_bytes: int  # torch.cuda.max_memory_allocated during the chunk (0 on CPU)
    cache_bytes: int  # memory.nbytes after the update
    added: int  # points the update appended
    added_cells: Tensor | None  # [F_c - 1, g_h, g_w] bool: the grid cells the update appended (memory.last_added)
    depth_scale: float = 1.0
    depth_aligned: bool = True
    pinned_latents: int = 1  # P: the first latents were given (pinned), the memory was updated with the others
    extras: dict[str, Any] = field(default_factory=dict)  # what on_readout returned for this chunk


class ChunkPart(Protocol):
    def __call__(self, *args: Any) -> Any: ...


def identity_denoise(chunk: Chunk, conditioning: Any) -> Tensor:  # -> [1, C, F, h, w]
    """The preview's denoiser: the latents are the readout, the first ones the pinned latents."""
    latents = chunk.readout.latents[None].float().clone()  # [1, C, F, h, w]
    latents[:, :, : chunk.pinned.shape[2]] = chunk.pinned.to(latents)
    return latents


def readout_depth(chunk: Chunk, new_frames: Tensor, previous_scale: float) -> DepthResult:
    """The preview's depth: what the memory itself reported for the new frames 4k (no estimation)."""
    ts = (len(chunk.cameras) - 1) // (len(chunk.latent_cameras) - 1)
    return DepthResult(chunk.readout.frame_depths(ts, chunk.pinned.shape[2]), previous_scale, True)


def _continue(previous: "ChunkResult", continuation: Continuation, chunking: Chunking, temporal_stride: int,
              encode: Callable[[Tensor], Tensor], device: torch.device) -> Tensor:  # fmt: skip
    """The pinned latents ``[1, C, P, h, w]`` of the next chunk from the previous chunk's results."""
    if continuation == "latent":
        return previous.latents[None, :, -chunking.pinned_latents(temporal_stride) :].to(device)
    shared = previous.frames[None, :, -chunking.overlap :].to(device)  # [1, 3, overlap, H, W] the shared frames
    return encode(shared).float()  # encoded on their own: [1, C, P, h, w]


def run_chunks(
    memory: SpatialMemory,
    path: CameraPath,
    first_latent: Tensor,  # [1, C, 1, h, w] the input image's latent
    *,
    encode: Callable[[Tensor], Tensor],  # [1, 3, T, H, W] -> [1, C, F, h, w] (continuation "reencode")
    decode: Callable[[Tensor], Tensor],  # [1, C, F, h, w] -> [3, T, H, W]
    condition: Callable[[Chunk], Any],
    denoise: Callable[[Chunk, Any], Tensor],
    depth: Callable[[Chunk, Tensor, float], DepthResult],
    chunking: Chunking = Chunking(),
    temporal_stride: int = 4,
    continuation: Continuation = "reencode",
    max_depth: float | None = None,
    device: torch.device | str = "cpu",
    first_timings: dict[str, float] | None = None,
    on_readout: Callable[[Chunk], Any] | None = None,
    on_stage: Callable[[int, str], None] | None = None,
) -> list[ChunkResult]:
    """Run every chunk of ``path`` on an initialized ``memory`` (module docstring).

    first_timings: stages measured before chunk 0 (``prompt``, ``init``), added to its record.
    on_readout(chunk): called after each read, before the update (e.g. to render what the memory
    shows at every pixel frame); its return value is kept in ``ChunkResult.extras["on_readout"]`` and
    its time is not counted. on_stage(chunk_index, stage): called as each stage starts (progress).
    """
    if not isinstance(path, CameraPath):
        raise TypeError(f"path must be a mirage.paths.CameraPath (frame 0 = the source camera), got {type(path).__name__}")
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")
    chunking.check(temporal_stride)
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    timer = StageTimer(device)
    report = on_stage if on_stage is not None else (lambda c, s: None)
    results: list[ChunkResult] = []
    scale, pinned = 1.0, first_latent  # pinned: [1, C, P, h, w] the given latents at the start of the chunk
    for c, (start, stop) in enumerate(chunking.ranges(len(path), temporal_stride)):
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t_chunk, t_hook = time.perf_counter(), 0.0
        cams = path[start:stop]  # [T_c] pixel-frame cameras
        latent_cams = latent_aligned(cams, temporal_stride)  # [F_c]
        extras: dict[str, Any] = {}
        with timer.record(f"chunk {c}") as rec:
            if c == 0 and first_timings:
                rec.update(first_timings)
            if results:
                with timer.stage("condition"):  # the first latents of this chunk continue the last chunk
                    pinned = _continue(results[-1], continuation, chunking, temporal_stride, encode, device)
            report(c, "readout")
            with timer.stage("readout"):
                readout = memory.read(cams)  # latents [C, F, h, w], mask [F, h, w], depth [F, h, w]
            rec.update(readout.timings)
            chunk = Chunk(c, (start, stop), cams, latent_cams, pinned, readout, list(results))
            if on_readout is not None:
                t0 = time.perf_counter()
                extras["on_readout"] = on_readout(chunk)
                t_hook = time.perf_counter() - t0
            report(c, "condition")
            with timer.stage("condition"):
                conditioning = condition(chunk)
            report(c, "denoise")
            with timer.stage("denoise"):
                latents = denoise(chunk, conditioning)  # [1, C, F, h, w]
            report(c, "decode")
            with timer.stage("decode"):
                frames = decode(latents).float()  # [3, T_c, H, W]
            report(c, "depth")
            P = pinned.shape[2]  # the pinned latents are already in the memory: the new ones follow
            with timer.stage("depth"):
                new_frames = frames[:, P * temporal_stride :: temporal_stride]  # [3, F-P, H, W] new latent-aligned frames 4k
                est = depth(chunk, new_frames, scale)
                scale = est.scale
            report(c, "update")
            with timer.stage("update"):
                far = None if max_depth is None else est.depth > max_depth  # [F-P, H, W] far / sky cells
                added = memory.update(Observation(latent_cams[P:], est.depth, latents[0, :, P:], new_frames, far))
        rec["total"] = time.perf_counter() - t_chunk - t_hook
        results.append(ChunkResult(
            index=c, frame_range=(start, stop), latents=latents[0].float().cpu(), frames=frames.cpu(),
            readout=readout.cpu(), timings=dict(rec), cache_bytes=int(memory.nbytes), added=added,
            added_cells=None if memory.last_added is None else memory.last_added.cpu(),
            peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else 0,
            depth_scale=est.scale, depth_aligned=est.aligned, pinned_latents=P, extras=extras,
        ))  # fmt: skip
    return results
