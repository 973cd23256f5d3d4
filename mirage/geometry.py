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
    P = K.float() @ cam_from_world[:, :3, :].float()  # [V, 3, 4] full projection
    proj = points.float() @ P[:, :, :3].transpose(1, 2) + P[:, None, :, 3]  # [V, N, 3] = (z u, z v, z)
    z = proj[..., 2]  # [V, N]
    uv = proj[..., :2] / z.unsqueeze(-1)  # [V, N, 2]
    return uv, z


@dataclass
class SplatResult:
    """Output of ``splat_zbuffer`` for ``V`` views of an ``h x w`` grid."""

    index: Tensor  # [V, h, w] long, index of the point each cell shows, -1 where empty
    mask: Tensor  # [V, h, w] bool, True where a point landed
    depth: Tensor  # [V, h, w] float32 depth of the shown point, NaN where empty
    features: Tensor | None  # [V, C, h, w] features of the shown point, zeros where empty


def _splat_indices(
    points: Tensor,  # [N, 3]
    K: Tensor,  # [V, 3, 3]
    cam_from_world: Tensor,  # [V, 4, 4]
    height: int,
    width: int,
    surface_tolerance: float,
    near: float,
) -> tuple[Tensor, Tensor]:  # index [V, h, w] long (N where empty), zbuf [V, h, w]
    V, N = K.shape[0], points.shape[0]
    uv, z = project_points(points, K, cam_from_world)  # [V, N, 2], [V, N]
    col = torch.floor(uv[..., 0])  # [V, N] nearest cell: the one containing the projection
    row = torch.floor(uv[..., 1])  # [V, N]
    inside = (z > near) & (col >= 0) & (col < width) & (row >= 0) & (row < height)  # [V, N]; NaN -> False
    cells = height * width
    dump = V * cells  # one extra slot collects every point that lands nowhere
    view_base = torch.arange(V, device=points.device).unsqueeze(1) * cells  # [V, 1]
    flat = torch.where(
        inside, view_base + row.clamp(0, height - 1).long() * width + col.clamp(0, width - 1).long(), dump
    ).reshape(-1)  # [V*N] flat cell id per (view, point)
    z_in = torch.where(inside, z, torch.inf).reshape(-1)  # [V*N]
    # pass 1: closest depth per cell (amin is order independent -> deterministic)
    zbuf = torch.full((dump + 1,), torch.inf, device=points.device, dtype=z.dtype)
    zbuf.scatter_reduce_(0, flat, z_in, reduce="amin")
    # pass 2: among points within the surface band of the closest one, the lowest index (the oldest)
    band = zbuf.gather(0, flat) * (1.0 + surface_tolerance)  # [V*N]
    if surface_tolerance > 0:
        band = band + surface_band_slack(zbuf[:dump].view(V, height, width)).reshape(-1).gather(0, flat.clamp(max=dump - 1))
    candidate = inside.reshape(-1) & (z_in <= band)
    point_id = torch.arange(N, device=points.device).expand(V, N).reshape(-1)  # [V*N]
    best = torch.full((dump + 1,), N, device=points.device, dtype=torch.long)
    best.scatter_reduce_(0, flat, torch.where(candidate, point_id, N), reduce="amin")
    return best[:dump].view(V, height, width), zbuf[:dump].view(V, height, width)


def surface_band_slack(zbuf: Tensor, max_fraction: float = 0.25) -> Tensor:  # [V, h, w] -> [V, h, w]
    """How much a surface's depth may vary inside one cell: the largest depth step to a
    4-neighbour's closest point, capped at ``max_fraction`` of the cell's depth so that an
    occluding edge never hides what lies well behind it. Grazing surfaces (floors, ceilings) get a
    wide band, fronto-parallel ones a narrow one. Empty cells and empty neighbours give 0."""
    z = torch.where(torch.isfinite(zbuf), zbuf, torch.nan)  # [V, h, w]
    padded = F.pad(z[:, None], (1, 1, 1, 1), value=float("nan"))[:, 0]  # [V, h+2, w+2]
    steps = torch.stack(
        [(padded[:, 1:-1, :-2] - z).abs(), (padded[:, 1:-1, 2:] - z).abs(), (padded[:, :-2, 1:-1] - z).abs(), (padded[:, 2:, 1:-1] - z).abs()]
    )  # [4, V, h, w]
    step = torch.nan_to_num(steps, nan=0.0).amax(0)  # [V, h, w]
    return torch.minimum(step, max_fraction * torch.nan_to_num(z, nan=0.0))


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
    K, cam_from_world = K.to(device), cam_from_world.to(device)
    group = max(1, max_elements // max(N, 1))
    idx_parts = []
    for s in range(0, V, group):
        i, _ = _splat_indices(points, K[s : s + group], cam_from_world[s : s + group], height, width, surface_tolerance, near)
        idx_parts.append(i)
    best = torch.cat(idx_parts)  # [V, h, w], N where empty
    mask = best < N  # [V, h, w]
    safe = best.clamp(max=max(N - 1, 0))  # [V, h, w]
    # depth of the shown point (not always the closest one when surface_tolerance > 0)
    shown = points[safe.reshape(-1)].view(V, height, width, 3) if N > 0 else torch.zeros(V, height, width, 3, device=device)
    z_row = cam_from_world[:, 2, :].float()  # [V, 4] camera-z row of each view
    z_shown = torch.einsum("vj,vhwj->vhw", z_row[:, :3], shown.float()) + z_row[:, 3, None, None]  # [V, h, w]
    depth = torch.where(mask, z_shown, torch.nan)  # [V, h, w]
    feats = None
    if features is not None:
        if N == 0:
            feats = torch.zeros(V, features.shape[1], height, width, dtype=features.dtype, device=device)
        else:
            gathered = features[safe.reshape(-1)].view(V, height, width, -1)  # [V, h, w, C]
            gathered = gathered * mask.unsqueeze(-1).to(gathered.dtype)  # zero empty cells
            feats = gathered.permute(0, 3, 1, 2).contiguous()  # [V, h, w, C] -> [V, C, h, w]
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
