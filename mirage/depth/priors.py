"""Depth that is given rather than estimated: known ground truth, and the planar prior placeholder."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cameras import intrinsics_from_fov
from .base import DepthEstimate, _check_fov, _check_image, _check_K, _resolve_K, nan_invalid

__all__ = ["GroundTruthDepth", "PlanarPriorBackend"]


class GroundTruthDepth:
    """A known depth map and its intrinsics (bundled examples with ground truth)."""

    name = "ground-truth"
    needs_weights = False

    def __init__(self, depth: Tensor, K: Tensor):  # depth [H, W] metres; K [3, 3]
        depth = torch.as_tensor(depth)
        if depth.dim() != 2:
            raise ValueError(f"depth must be 2-D [H, W], got shape {tuple(depth.shape)}")
        self.depth = nan_invalid(depth)  # [H, W]
        self.K = _check_K(K)  # [3, 3]

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        if tuple(image.shape[1:]) != tuple(self.depth.shape):
            (h, w), (H, W) = self.depth.shape, image.shape[1:]
            raise ValueError(f"ground-truth depth is {w}x{h} (WxH) but the image is {W}x{H}")
        K = _resolve_K(self.K, K, "GroundTruthDepth")
        return DepthEstimate(self.depth.clone().to(image.device), K.to(image.device), "ground-truth")


class PlanarPriorBackend:
    """PLACEHOLDER GEOMETRY, NOT A DEPTH ESTIMATE: a flat ground plane and a back wall, for offline use.

    The camera looks horizontally (OpenCV axes, +y down) from a height chosen so that the ground is at
    depth ``near`` at the bottom image edge; above the ground's intersection with it, a fronto-parallel
    wall stands at depth ``far``. With ray slope ``t = (v + 1/2 - cy) / fy`` for pixel row ``v`` and
    camera height ``h = near * (H - cy) / fy``, ``depth(v) = min(far, h / t)`` for ``t > 0`` and ``far``
    above the horizon. Depth grows toward the top of the image, is the same in every column, positive
    and valid everywhere, and deterministic. It lets the pipeline run without weights; it says nothing
    about the actual scene.
    """

    name = "planar-prior (placeholder geometry, not a depth estimate)"
    needs_weights = False

    def __init__(self, fov_x_deg: float = 60.0, near: float = 1.5, far: float = 8.0):
        if not (0 < float(near) < float(far) and math.isfinite(float(far))):
            raise ValueError(f"need 0 < near < far < inf, got near={near}, far={far}")
        self.fov_x_deg = _check_fov(fov_x_deg)
        self.near, self.far = float(near), float(far)

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        _, H, W = image.shape
        K = _check_K(K) if K is not None else intrinsics_from_fov(W, H, self.fov_x_deg)
        fy, cy = float(K[1, 1]), float(K[1, 2])
        if not (0 <= cy < H):
            raise ValueError(f"planar prior needs the principal point inside the image: cy={cy}, H={H}")
        height = self.near * (H - cy) / fy  # camera height above the ground (m)
        t = (torch.arange(H, dtype=torch.float64) + 0.5 - cy) / fy  # [H] ray slope dy/dz per row
        ground = torch.where(t > 0, height / t.clamp(min=1e-12), torch.full_like(t, math.inf))  # [H]
        rows = ground.clamp(max=self.far).float()  # [H]
        depth = rows[:, None].expand(H, W).contiguous()  # [H, W] same in every column
        return DepthEstimate(depth.to(image.device), K.to(image.device), "planar-prior")


