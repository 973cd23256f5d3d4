"""Revisit consistency: when a path comes back to a camera it has already visited, how close the
frames at the return are to the frames of the first visit. The point of a spatial memory, as one
number per memory.

* ``revisit_pairs``: the ``(first, later)`` frame pairs whose cameras coincide (centres within
  ``position_tol`` x the scene depth, orientations within ``angle_tol_deg``), counted only when the
  path went away in between (a pause is no revisit).
* ``RevisitTally``: fed each chunk's new frames as a run makes them, it keeps only the first-visit
  frames some later frame comes back to, scores each pair as soon as both frames exist (the mean
  squared error and SSIM of the uint8 frames, scikit-image; the PSNR of the mean error over the
  pairs) and forgets the chunks an Undo takes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from skimage.metrics import mean_squared_error, structural_similarity
from torch import Tensor

from .cameras import Cameras

__all__ = ["revisit_pairs", "RevisitScore", "RevisitTally"]


def revisit_pairs(cameras: Cameras, scene_depth: float, *, position_tol: float = 0.005, angle_tol_deg: float = 0.5,
                  away: float = 0.05) -> list[tuple[int, int]]:  # fmt: skip
    """For each frame ``i`` the first earlier frame ``j`` whose camera coincides with it, as ``(j, i)``:
    centres within ``position_tol * scene_depth`` and viewing rotations within ``angle_tol_deg``, and
    some frame between them more than ``away * scene_depth`` from camera ``j`` or turned more than
    ten times ``angle_tol_deg`` from it."""
    if not scene_depth > 0:
        raise ValueError(f"scene_depth must be positive, got {scene_depth!r}")
    c = cameras.centers.double().cpu()  # [N, 3]
    R = cameras.cam_from_world[:, :3, :3].double().cpu()  # [N, 3, 3]
    dist = torch.cdist(c, c)  # [N, N] metres between centres
    cos = ((torch.einsum("iab,jab->ij", R, R) - 1) / 2).clamp(-1, 1)  # [N, N] cos of the relative rotation's angle
    angle = torch.rad2deg(torch.arccos(cos))  # [N, N]
    same = ((dist <= position_tol * scene_depth) & (angle <= angle_tol_deg)).numpy()  # [N, N]
    left = ((dist > away * scene_depth) | (angle > 10 * angle_tol_deg)).numpy()  # [N, N] camera k is away from camera j
    pairs = []
    for i in range(len(c)):
        for j in range(i):
            if same[j, i] and left[j, j + 1 : i].any():
                pairs.append((j, i))
                break
    return pairs


@dataclass(frozen=True)
class RevisitScore:
    """PSNR (dB) of the mean squared error over ``frames`` frames back at an earlier camera (``inf``
    when every pair is identical), their mean SSIM, and the pairs scored."""

    psnr: float
    ssim: float
    frames: int
    pairs: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        psnr = "∞ (identical)" if math.isinf(self.psnr) else f"{self.psnr:.1f} dB"
        first, last = self.pairs[0], self.pairs[-1]
        span = f"frame {first[1]} ↔ {first[0]}" + ("" if len(self.pairs) == 1 else f" … {last[1]} ↔ {last[0]}")
        return f"revisit PSNR {psnr}, SSIM {self.ssim:.3f} over {self.frames} frame(s) back at an earlier camera ({span})"


@dataclass
class RevisitTally:
    """Revisit scores of one memory's video, built chunk by chunk (``add``) and taken back (``truncate``)."""

    pairs: list[tuple[int, int]]
    kept: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # first-visit frame -> (chunk, [H, W, 3] uint8)
    scored: dict[tuple[int, int], tuple[int, float, float]] = field(default_factory=dict)  # pair -> (chunk, mse, ssim)

    def add(self, chunk: int, start: int, frames: Tensor | np.ndarray) -> None:
        """Frames ``start .. start + T - 1`` of the video (``[T, H, W, 3]`` uint8), made by ``chunk``."""
        frames = frames.numpy() if isinstance(frames, Tensor) else np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.dtype} {frames.shape}")
        here = range(start, start + len(frames))
        for j, _ in self.pairs:  # a frame shared by two chunks counts as the first one's
            if j in here and j not in self.kept:
                self.kept[j] = (chunk, frames[j - start].copy())
        for j, i in self.pairs:
            if i in here and j in self.kept and (j, i) not in self.scored:
                a, b = self.kept[j][1], frames[i - start]
                ssim = float(structural_similarity(a, b, channel_axis=-1, data_range=255))
                self.scored[(j, i)] = (chunk, float(mean_squared_error(a, b)), ssim)

    def truncate(self, chunks: int) -> None:
        """Forget what chunks ``chunks`` and later added (taken back by Undo)."""
        self.kept = {j: v for j, v in self.kept.items() if v[0] < chunks}
        self.scored = {p: v for p, v in self.scored.items() if v[0] < chunks}

    def score(self) -> RevisitScore | None:
        """The mean over the pairs scored so far (None before any)."""
        if not self.scored:
            return None
        pairs = sorted(self.scored, key=lambda p: p[1])
        mse = float(np.mean([self.scored[p][1] for p in pairs]))
        psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
        return RevisitScore(psnr, float(np.mean([self.scored[p][2] for p in pairs])), len(pairs), tuple(pairs))
