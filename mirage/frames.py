"""Frame arithmetic, in one place: ``4N + 1`` video lengths, the causal pixel <-> latent frame
mapping and the chunking of a long video.

Causal mapping (``CONVENTIONS.md``): ``T = sN + 1`` pixel frames (``s`` = temporal stride, 4 for the
Wan2.2 VAE) give ``F = N + 1`` latent frames; latent frame 0 is pixel frame 0 and latent frame
``k >= 1`` covers pixel frames ``s(k-1)+1 .. sk`` and uses the camera and depth of pixel frame ``sk``.

Chunks (``Chunking``): by default as in the paper, the first covers pixel frames ``0 .. 32`` (33
frames, 9 latent frames), each later one the next 32 frames plus the previous chunk's last frame, so
a video of ``33 + 32k`` frames has ``k + 1`` chunks; any ``4N + 1`` length works (the last chunk is
then shorter). Other layouts (Spatia's: 121 frames, then rounds of 81 that repeat the last 9) set
the first chunk's length, the later chunks' length and the frames they share with the previous one.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
from torch import Tensor

__all__ = [
    "TEMPORAL_STRIDE",
    "CHUNK_FRAMES",
    "check_num_frames",
    "num_latent_frames",
    "latent_frame_indices",
    "pixel_frames_of_latent",
    "pixel_to_latent_frame",
    "latent_aligned",
    "new_latent_frames",
    "causal_upsample",
    "Chunking",
    "chunk_ranges",
    "stitch_chunks",
]

TEMPORAL_STRIDE = 4  # pixel frames per latent frame of the Wan2.2 VAE
CHUNK_FRAMES = 33  # frames of the first chunk (9 latent frames); later chunks add 32

_S = TypeVar("_S")


def check_num_frames(num_frames: int, temporal_stride: int = TEMPORAL_STRIDE, *, min_latent_frames: int = 1) -> int:
    """Return ``num_frames`` if it is ``sN + 1`` with at least ``min_latent_frames`` latent frames
    (``N >= min_latent_frames - 1``); ``ValueError`` naming the value otherwise."""
    if not isinstance(temporal_stride, int) or isinstance(temporal_stride, bool) or temporal_stride < 1:
        raise ValueError(f"temporal_stride must be a positive int, got {temporal_stride!r}")
    s = temporal_stride
    valid = isinstance(num_frames, numbers.Integral) and not isinstance(num_frames, bool) and num_frames >= 1
    if not valid or (num_frames - 1) % s != 0 or (num_frames - 1) // s + 1 < min_latent_frames:
        first = s * (min_latent_frames - 1) + 1
        raise ValueError(
            f"num_frames must be {s}N+1 with at least {first} frames ({first}, {first + s}, {first + 2 * s}, ...), "
            f"got {num_frames!r}"
        )
    return int(num_frames)


def num_latent_frames(num_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> int:
    """``F = (T - 1) / s + 1`` for a valid ``T``."""
    return (check_num_frames(num_frames, temporal_stride) - 1) // temporal_stride + 1


def latent_frame_indices(num_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> list[int]:
    """The pixel frame whose camera and depth each latent frame uses: ``[0, s, 2s, ..., T-1]``."""
    return list(range(0, check_num_frames(num_frames, temporal_stride), temporal_stride))


def pixel_frames_of_latent(k: int, temporal_stride: int = TEMPORAL_STRIDE) -> range:
    """Pixel frames covered by latent frame ``k``: ``[0]`` for ``k = 0``, else ``s(k-1)+1 .. sk``."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"latent frame index must be an int >= 0, got {k!r}")
    check_num_frames(1, temporal_stride)  # validates the stride
    if k == 0:
        return range(0, 1)
    return range(temporal_stride * (k - 1) + 1, temporal_stride * k + 1)


def pixel_to_latent_frame(num_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> Tensor:  # -> [T] long
    """Latent frame of each pixel frame: pixel 0 -> 0, pixels ``s(k-1)+1 .. sk`` -> ``k``."""
    t = torch.arange(check_num_frames(num_frames, temporal_stride))  # [T]
    return (t + temporal_stride - 1) // temporal_stride


def latent_aligned(frames: _S, temporal_stride: int = TEMPORAL_STRIDE) -> _S:
    """The latent-aligned items ``0, s, 2s, ...`` of a ``sN + 1`` sequence (``Cameras``, a list, or
    a tensor's first axis)."""
    check_num_frames(len(frames), temporal_stride)
    return frames[::temporal_stride]


def new_latent_frames(video: Tensor, pinned_latents: int, temporal_stride: int = TEMPORAL_STRIDE) -> Tensor:
    """The latent-aligned frames of a chunk's video ``[3, T, H, W]`` after its first ``pinned_latents``
    (those it generated): pixel frames ``s*P, s*(P+1), ..., T-1`` -> ``[3, F-P, H, W]``."""
    return latent_aligned(video.transpose(0, 1), temporal_stride)[pinned_latents:].transpose(0, 1)


def causal_upsample(x: Tensor, num_frames: int, spatial_stride: int = 1,
                    temporal_stride: int = TEMPORAL_STRIDE) -> Tensor:  # [F, h, w] -> [T, h*s, w*s]
    """A latent-grid map at every pixel frame: latent frame ``k`` fills pixel frames ``s(k-1)+1 .. sk``
    (frame 0 fills pixel 0), and each cell its ``spatial_stride`` x ``spatial_stride`` block (nearest)."""
    latent_of_pixel = pixel_to_latent_frame(num_frames, temporal_stride).to(x.device)  # [T]
    need = int(latent_of_pixel[-1]) + 1
    if x.dim() != 3 or x.shape[0] != need:
        raise ValueError(f"latent map {tuple(x.shape)} has {x.shape[0] if x.dim() else 0} frames; {num_frames} pixel "
                         f"frames need {need} ([{need}, h, w])")  # fmt: skip
    s = spatial_stride
    return x[latent_of_pixel].repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)  # [T, h, w] -> [T, h*s, w*s]


@dataclass(frozen=True)
class Chunking:
    """How a long video is cut into chunks that each model call generates."""

    first: int = CHUNK_FRAMES  # frames of the first chunk (sN + 1)
    frames: int = CHUNK_FRAMES  # frames of every later chunk, the shared ones included (sN + 1)
    overlap: int = 1  # frames a later chunk shares with the previous one (sk + 1): its first latents are pinned to them

    def check(self, temporal_stride: int = TEMPORAL_STRIDE) -> "Chunking":
        """``ValueError`` naming the value unless every length fits the causal latent layout."""
        s = temporal_stride
        for name in ("first", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < s + 1 or (value - 1) % s:
                raise ValueError(f"chunk {name} must be {s}N+1 with N >= 1 (a chunk must add frames), got {value!r}")
        if not isinstance(self.overlap, int) or self.overlap < 1 or (self.overlap - 1) % s or self.overlap >= self.frames:
            raise ValueError(f"chunk overlap must be {s}k+1 frames and fewer than the chunk's {self.frames}, got {self.overlap!r}")
        return self

    def pinned_latents(self, temporal_stride: int = TEMPORAL_STRIDE) -> int:
        """Latent frames at the start of a later chunk that are given, not generated: ``(overlap - 1) / s + 1``."""
        return (self.overlap - 1) // temporal_stride + 1

    def ranges(self, num_frames: int, temporal_stride: int = TEMPORAL_STRIDE,
               done: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:  # fmt: skip
        """Pixel-frame ranges ``(start, stop)`` of the chunks of a ``num_frames`` video (stop exclusive).

        The first chunk has ``min(num_frames, first)`` frames; each later one starts ``overlap`` frames
        before the previous chunk's end and ends ``frames`` later or at the video's end, so every
        chunk has ``sN + 1`` frames. ``done``: chunks already run (of a shorter path that this one
        extends); they are kept as they were and the ranges go on from the last of them."""
        check_num_frames(num_frames, temporal_stride)
        self.check(temporal_stride)
        ranges = list(done) or [(0, min(num_frames, self.first))]
        if ranges[-1][1] > num_frames:
            raise ValueError(f"chunks already run reach frame {ranges[-1][1]}, past the video's {num_frames} frames")
        while ranges[-1][1] < num_frames:
            start = ranges[-1][1] - self.overlap
            ranges.append((start, min(num_frames, start + self.frames)))
        return ranges


def chunk_ranges(num_frames: int, chunk_frames: int = CHUNK_FRAMES, temporal_stride: int = TEMPORAL_STRIDE) -> list[tuple[int, int]]:
    """The paper's chunks: ``chunk_frames`` frames, then ``chunk_frames - 1`` new ones each (one frame
    shared). ``chunk_ranges(65) == [(0, 33), (32, 65)]``."""
    return Chunking(chunk_frames, chunk_frames, 1).ranges(num_frames, temporal_stride)


def stitch_chunks(parts: Sequence[Tensor], dim: int, overlap: int = 1) -> Tensor:
    """Concatenate per-chunk tensors along their frame axis ``dim``, dropping the first ``overlap``
    frames of every later chunk (they are the previous chunk's last frames)."""
    if not parts:
        raise ValueError("stitch_chunks needs at least one chunk")
    return torch.cat([p if i == 0 else p.narrow(dim, overlap, p.shape[dim] - overlap) for i, p in enumerate(parts)], dim=dim)
