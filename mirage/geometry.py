"""Pure geometry: unproject, transform, project, and a hard z-buffer splat.

Stateless functions on tensors (CPU or CUDA). The memories in ``mirage.memory`` are thin state
around them. Conventions (``CONVENTIONS.md``): OpenCV camera axes, ``K`` in continuous image
coordinates with cell centres at ``u + 1/2``, depth = camera ``z``, transforms named by direction.

``splat_zbuffer`` is the fast path: fully vectorised over views and points with two
``scatter_reduce(amin)`` passes, no host synchronisation and no atomics whose order matters, so it
is deterministic on CPU and CUDA, ties included. ``tests/test_geometry.py`` checks it against a
per-point Python reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SplatResult",
    "valid_depth",
    "pixel_centers",
    "unproject_depth",
    "transform_points",
    "project_points",
    "splat_zbuffer",
    "surface_band_slack",
    "downsample_depth",
    "downsample_mask_any",
]


def valid_depth(depth: Tensor) -> Tensor:  # [...] -> [...] bool
    """Valid depth is finite and strictly positive (NaN, inf and <= 0 mark holes)."""
    return torch.isfinite(depth) & (depth > 0)


def pixel_centers(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:  # -> [h, w, 2]
    """Continuous coordinates ``(u + 1/2, v + 1/2)`` of every cell centre, last axis ``(x, y)``."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )  # [h, w] each
    return torch.stack([u, v], dim=-1)  # [h, w, 2]


def unproject_depth(
    depth: Tensor,  # [..., h, w] camera-z depth
    K: Tensor,  # [..., 3, 3] intrinsics of the same grid
    world_from_cam: Tensor,  # [..., 4, 4]
) -> Tensor:  # [..., h, w, 3] world points
    """Lift every cell centre to a world point: ``p = world_from_cam * (d * K^-1 [u+1/2, v+1/2, 1])``.

    Invalid depth yields non-finite or behind-camera points; callers select with ``valid_depth``.
    """
    h, w = depth.shape[-2:]
    uv1 = F.pad(pixel_centers(h, w, depth.device, torch.float32), (0, 1), value=1.0)  # [h, w, 3]
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K.float()), uv1)  # [..., h, w, 3], z = 1
    cam_pts = rays * depth.float().unsqueeze(-1)  # [..., h, w, 3]
    R = world_from_cam[..., :3, :3].float()  # [..., 3, 3]
    t = world_from_cam[..., :3, 3].float()  # [..., 3]
    return torch.einsum("...ij,...hwj->...hwi", R, cam_pts) + t[..., None, None, :]  # [..., h, w, 3]


def transform_points(dst_from_src: Tensor, points: Tensor) -> Tensor:
    """dst_from_src: ``[..., 4, 4]``; points: ``[..., N, 3]`` -> ``[..., N, 3]``."""
    R = dst_from_src[..., :3, :3]  # [..., 3, 3]
    t = dst_from_src[..., :3, 3]  # [..., 3]
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)  # [..., N, 3]


def project_points(
    points: Tensor,  # [N, 3] world points
    K: Tensor,  # [V, 3, 3]
    cam_from_world: Tensor,  # [V, 4, 4]
) -> tuple[Tensor, Tensor]:  # uv [V, N, 2] continuous coordinates, z [V, N] camera depth
    """Project world points into ``V`` cameras. Points with ``z <= 0`` get meaningless ``uv``."""
    return _project(points, K.float() @ cam_from_world[:, :3, :].float())


def _project(points: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:  # [N, 3], [V, 3, 4] -> [V, N, 2], [V, N]
    proj = torch.baddbmm(P[:, None, :, 3], points.float().expand(P.shape[0], -1, -1), P[:, :, :3].transpose(1, 2))  # [V, N, 3]
    z = proj[..., 2]  # [V, N]
    return proj[..., :2] / z.unsqueeze(-1), z


@dataclass
class SplatResult:
    """Output of ``splat_zbuffer`` for ``V`` views of an ``h x w`` grid."""

    index: Tensor  # [V, h, w] long, index of the point each cell shows, -1 where empty
    mask: Tensor  # [V, h, w] bool, True where a point landed
    depth: Tensor  # [V, h, w] float32 depth of the shown point, NaN where empty
    features: Tensor | None  # [V, C, h, w] features of the shown point, zeros where empty


def _splat_indices(
    points: Tensor,  # [N, 3]
    P: Tensor,  # [V, 3, 4] full projections K @ cam_from_world[:3]
    height: int,
    width: int,
    surface_tolerance: float,
    near: float,
) -> tuple[Tensor, Tensor]:  # index [V, h, w] long (N where empty), depth [V, h, w] of the shown point
    V, N = P.shape[0], points.shape[0]
    uv, z = _project(points, P)  # [V, N, 2], [V, N]
    cell = torch.floor(uv)  # [V, N, 2] nearest cell: the one containing the projection (NaN stays NaN)
    col, row = cell[..., 0], cell[..., 1]  # [V, N] each
    inside = (z > near) & (col >= 0) & (row >= 0) & (col < width) & (row < height)  # [V, N]; NaN compares False
    cells = height * width
    dump = V * cells  # one extra slot collects every point that lands nowhere
    view_base = torch.arange(0, dump, cells, device=points.device).unsqueeze(1)  # [V, 1]
    in_view = torch.add(col, row, alpha=width).long()  # [V, N] col + w * row (exact below 2^24 cells)
    flat = torch.where(inside, in_view + view_base, dump).reshape(-1)  # [V*N] flat cell ids
    z_in = torch.where(inside, z, torch.inf).reshape(-1)  # [V*N]
    # pass 1: closest depth per cell (amin is order independent -> deterministic)
    zbuf = torch.full((dump + 1,), torch.inf, device=points.device, dtype=z.dtype)
    zbuf.scatter_reduce_(0, flat, z_in, reduce="amin")
    # pass 2: among points within the surface band of the closest one, the lowest index (the oldest)
    band = zbuf * (1.0 + surface_tolerance)  # [V*h*w + 1]
    if surface_tolerance > 0:
        band[:dump] += surface_band_slack(zbuf[:dump].view(V, height, width)).reshape(-1)
    # (view, point) pairs are numbered v*N + i; inside one cell v is fixed, so the smallest number
    # is the smallest point index i
    pair = torch.arange(V * N, device=points.device)  # [V*N]
    best = torch.full((dump + 1,), V * N, device=points.device, dtype=torch.long)
    best.scatter_reduce_(0, flat, torch.where(z_in <= band.gather(0, flat), pair, V * N), reduce="amin")
    best = best[:dump].view(V, cells)  # [V, h*w] pair numbers, V*N where empty
    point = best - torch.arange(0, V * N, N, device=points.device).unsqueeze(1)  # [V, h*w] point index i
    shown = best < V * N  # [V, h*w]
    # depth of the shown point (not always the closest one when surface_tolerance > 0)
    depth = torch.where(shown, z.gather(1, point.clamp(0, N - 1)), torch.nan)  # [V, h*w]
    return torch.where(shown, point, N).view(V, height, width), depth.view(V, height, width)


def surface_band_slack(zbuf: Tensor, max_fraction: float = 0.25) -> Tensor:  # [V, h, w] -> [V, h, w]
    """How much a surface's depth may vary inside one cell: the largest depth step to one of the
    8 neighbouring cells' closest points, capped at ``max_fraction`` of the cell's depth so that an
    occluding edge never hides what lies well behind it. Grazing surfaces (floors, ceilings) get a
    wide band, fronto-parallel ones a narrow one. Empty cells give 0; empty neighbours are ignored."""
    finite = torch.isfinite(zbuf)  # [V, h, w]
    z = torch.where(finite, zbuf, 0.0)
    # one 3x3 max-pool over (z, -z) with empty cells at -inf gives the neighbourhood max and -min
    both = torch.stack([torch.where(finite, zbuf, -torch.inf), -zbuf], 1)  # [V, 2, h, w]; -inf stays -inf
    pooled = F.max_pool2d(both, 3, 1, 1)  # [V, 2, h, w]
    step = torch.maximum(pooled[:, 0] - z, pooled[:, 1] + z)  # max(hi - z, z - lo)
    return torch.where(finite, torch.minimum(step, max_fraction * z), 0.0)


def splat_zbuffer(
    points: Tensor,  # [N, 3] world points
    features: Tensor | None,  # [N, C] per-point features, or None for indices only
    K: Tensor,  # [V, 3, 3] intrinsics of the target grid
    cam_from_world: Tensor,  # [V, 4, 4]
    height: int,
    width: int,
    *,
    surface_tolerance: float = 0.0,
    near: float = 1e-6,
    max_elements: int = 1 << 26,
) -> SplatResult:
    """Hard z-buffer: every point goes to the cell that contains its projection (nearest cell, no
    soft splatting); each cell shows the closest point. Points whose depth is within
    ``surface_tolerance`` (relative) of the closest count as the same surface, and among those the
    lowest index wins; the band also widens by the local depth step between neighbouring cells
    (``surface_band_slack``) so that grazing surfaces count as one surface. With
    ``surface_tolerance=0`` this is the plain z-buffer, exact ties broken by the lowest index. Views are processed in groups of at most ``max_elements`` (view, point) pairs.
    """
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    if features is not None and (features.dim() != 2 or features.shape[0] != points.shape[0]):
        raise ValueError(f"features must be [N, C] with N={points.shape[0]}, got {tuple(features.shape)}")
    if K.dim() != 3 or K.shape[1:] != (3, 3) or cam_from_world.shape != (K.shape[0], 4, 4):
        raise ValueError(f"K must be [V,3,3] and cam_from_world [V,4,4], got {tuple(K.shape)}, {tuple(cam_from_world.shape)}")
    if surface_tolerance < 0:
        raise ValueError(f"surface_tolerance must be >= 0, got {surface_tolerance}")
    V, N, device = K.shape[0], points.shape[0], points.device
    P = (K.float() @ cam_from_world[:, :3, :].float()).to(device)  # [V, 3, 4], composed where the cameras live
    if N == 0:
        feats = None if features is None else torch.zeros(V, features.shape[1], height, width, dtype=features.dtype, device=device)
        return SplatResult(index=torch.full((V, height, width), -1, device=device),
                           mask=torch.zeros(V, height, width, dtype=torch.bool, device=device),
                           depth=torch.full((V, height, width), torch.nan, device=device), features=feats)  # fmt: skip
    group = max(1, max_elements // N)
    parts = [_splat_indices(points, P[s : s + group], height, width, surface_tolerance, near) for s in range(0, V, group)]
    best = parts[0][0] if len(parts) == 1 else torch.cat([b for b, _ in parts])  # [V, h, w], N where empty
    depth = parts[0][1] if len(parts) == 1 else torch.cat([d for _, d in parts])  # [V, h, w], NaN where empty
    mask = best < N  # [V, h, w]
    feats = None
    if features is not None:
        safe = best.clamp(max=N - 1).view(-1)  # [V*h*w]
        gathered = features[safe].view(V, height, width, -1) * mask.unsqueeze(-1)  # [V, h, w, C], 0 where empty
        feats = gathered.permute(0, 3, 1, 2)  # [V, h, w, C] -> [V, C, h, w] (a view)
    return SplatResult(index=torch.where(mask, best, -1), mask=mask, depth=depth, features=feats)


def downsample_depth(depth: Tensor, factor: int) -> Tensor:  # [..., H, W] -> [..., H/f, W/f]
    """Bilinear downsampling of depth to a grid ``factor`` times coarser, holes never blended in.

    Each cell samples the image bilinearly at its centre (``F.interpolate`` with
    ``align_corners=False``, i.e. the centre convention), as a normalised convolution: valid depth is
    weighted, invalid neighbours get weight 0, and a cell with no valid neighbour is NaN.
    """
    H, W = depth.shape[-2:]
    if factor < 1 or H % factor or W % factor:
        raise ValueError(f"depth size {H}x{W} is not divisible by factor {factor}")
    if factor == 1:
        return torch.where(valid_depth(depth), depth.float(), torch.nan)
    lead = depth.shape[:-2]
    d = depth.reshape(-1, 1, H, W).float()  # [B, 1, H, W]
    valid = valid_depth(d)
    size = (H // factor, W // factor)
    num = F.interpolate(torch.where(valid, d, 0.0), size=size, mode="bilinear", align_corners=False)
    den = F.interpolate(valid.float(), size=size, mode="bilinear", align_corners=False)
    out = torch.where(den > 1e-6, num / den.clamp_min(1e-6), torch.nan)  # [B, 1, h, w]
    return out.reshape(*lead, *size)  # [..., h, w]


def downsample_mask_any(mask: Tensor, factor: int) -> Tensor:  # [..., H, W] bool -> [..., H/f, W/f]
    """A cell is set when any pixel of its ``factor x factor`` block is set."""
    H, W = mask.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"mask size {H}x{W} is not divisible by factor {factor}")
    lead = mask.shape[:-2]
    m = F.max_pool2d(mask.reshape(-1, 1, H, W).float(), factor)  # [B, 1, h, w]
    return m.reshape(*lead, H // factor, W // factor) > 0
