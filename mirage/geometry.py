"""Pure geometry: unproject, transform, project, surface footprints and a hard z-buffer splat.

Stateless functions on tensors (CPU or CUDA). The memories in ``mirage.memory`` are thin state
around them. Conventions (``CONVENTIONS.md``): OpenCV camera axes, ``K`` in continuous image
coordinates with cell centres at ``u + 1/2``, depth = camera ``z``, transforms named by direction.

``splat_footprints`` is the fast path: every point carries the parallelogram its source cell
covers on the surface (``cell_footprints``), so that magnifying views read back without cracks.
It is vectorised over views, points and candidate cells with three ``scatter_reduce(amin)``
passes, no host synchronisation and no atomics whose order matters, so it is deterministic on
CPU and CUDA, ties included. ``splat_zbuffer`` (the nearest-cell splat) is the same core with
point-like footprints.
``tests/test_geometry.py`` and ``tests/test_footprints.py`` check both against per-point
Python references.
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
    "unproject_points",
    "unproject_depth",
    "transform_points",
    "project_points",
    "splat_zbuffer",
    "cell_footprints",
    "project_footprints",
    "splat_footprints",
    "FOOTPRINT_INFLATION",
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


def unproject_points(
    uv: Tensor,  # [..., N, 2] continuous image coordinates (a cell centre is (u + 1/2, v + 1/2))
    depth: Tensor,  # [..., N] camera-z depth
    K: Tensor,  # [..., 3, 3] intrinsics of the image the coordinates are in
    world_from_cam: Tensor,  # [..., 4, 4]
) -> Tensor:  # [..., N, 3] world points, in uv's dtype
    """Lift image points to the world: ``p = world_from_cam * (d * K^-1 [u, v, 1])``.

    Invalid depth yields non-finite or behind-camera points; callers select with ``valid_depth``.
    """
    dtype = uv.dtype
    uv1 = F.pad(uv, (0, 1), value=1.0)  # [..., N, 3]
    rays = torch.einsum("...ij,...nj->...ni", torch.linalg.inv(K.to(dtype)), uv1)  # [..., N, 3], z = 1
    cam_pts = rays * depth.to(dtype).unsqueeze(-1)  # [..., N, 3]
    R = world_from_cam[..., :3, :3].to(dtype)  # [..., 3, 3]
    t = world_from_cam[..., :3, 3].to(dtype)  # [..., 3]
    return torch.einsum("...ij,...nj->...ni", R, cam_pts) + t[..., None, :]  # [..., N, 3]


def unproject_depth(
    depth: Tensor,  # [..., h, w] camera-z depth
    K: Tensor,  # [..., 3, 3] intrinsics of the same grid
    world_from_cam: Tensor,  # [..., 4, 4]
) -> Tensor:  # [..., h, w, 3] world points (float32)
    """Lift every cell centre ``(u + 1/2, v + 1/2)`` to a world point (``unproject_points``)."""
    h, w = depth.shape[-2:]
    uv = pixel_centers(h, w, depth.device, torch.float32).reshape(h * w, 2)  # [h*w, 2]
    pts = unproject_points(uv, depth.float().reshape(*depth.shape[:-2], h * w), K, world_from_cam)  # [..., h*w, 3]
    return pts.reshape(*depth.shape[:-2], h, w, 3)  # [..., h, w, 3]


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


# How much every footprint grows (relative) so that a cell centre on the shared edge of two
# neighbouring footprints is not lost. Each footprint is the projection linearised at its own
# point, so the edges of neighbours disagree at second order, by more than float rounding: with
# 1e-4 a 10 degree pan lost 0.3% of the cells and a 15 degree orbit of the room 2.8%, whole
# columns of centres on shared edges (tests/test_footprints.py); 1% closes those gaps and stays
# far below the factor 2 at which a point would reach its neighbour's centre in the source view.
FOOTPRINT_INFLATION = 1e-2

# The largest (frame, depth) key: marks a candidate that is not in the surface band.
_NO_KEY = torch.iinfo(torch.int64).max


def cell_footprints(
    depth: Tensor,  # [..., h, w] camera-z depth; NaN, inf and <= 0 are invalid
    K: Tensor,  # [..., 3, 3] intrinsics of the same grid
    world_from_cam: Tensor,  # [..., 4, 4]
    max_step: float = 0.25,
) -> Tensor:  # [..., h, w, 2, 3] world half-axes (a, b) of every cell's footprint
    """The parallelogram every cell covers on the locally planar surface, as world half-axes.

    With ``p(u, v) = world_from_cam * (d(u, v) * K^-1 [u+1/2, v+1/2, 1])``, ``a = 0.5 dp/du`` and
    ``b = 0.5 dp/dv`` for one-cell steps: ``dp/du = R (d_u * ray + d * K^-1 e_x)``. The depth
    derivative ``d_u`` per axis is the one-sided difference (left/right, up/down) of smaller
    magnitude; a side is unusable when its neighbour is invalid or its relative step
    ``|d_n - d| / d`` exceeds ``max_step`` (a depth discontinuity: silhouettes are not stretched
    across it); with no usable side the derivative is 0 (a fronto-parallel footprint). Equal
    magnitudes take the forward side.

    Projected into the source camera the axes are exactly ``(0.5, 0)`` and ``(0, 0.5)`` cells
    whatever the derivative (the ray component projects to 0), so the footprints tile the source
    grid. Invalid cells get NaN axes.
    """
    if not max_step > 0:
        raise ValueError(f"max_step must be positive, got {max_step}")
    h, w = depth.shape[-2:]
    d = torch.where(valid_depth(depth), depth.float(), torch.nan)  # [..., h, w]
    d_du = _one_sided_slope(d, -1, max_step)  # [..., h, w] depth change per cell along u (columns)
    d_dv = _one_sided_slope(d, -2, max_step)  # [..., h, w] along v (rows)
    K_inv = torch.linalg.inv(K.float())  # [..., 3, 3]
    uv1 = F.pad(pixel_centers(h, w, depth.device), (0, 1), value=1.0)  # [h, w, 3]
    rays = torch.einsum("...ij,hwj->...hwi", K_inv, uv1)  # [..., h, w, 3], z = 1
    ray_du = K_inv[..., None, None, :, 0]  # [..., 1, 1, 3] K^-1 e_x: ray change per cell along u
    ray_dv = K_inv[..., None, None, :, 1]  # [..., 1, 1, 3] K^-1 e_y
    dp_du = d_du.unsqueeze(-1) * rays + d.unsqueeze(-1) * ray_du  # [..., h, w, 3] camera space
    dp_dv = d_dv.unsqueeze(-1) * rays + d.unsqueeze(-1) * ray_dv  # [..., h, w, 3]
    half_axes = 0.5 * torch.stack([dp_du, dp_dv], dim=-2)  # [..., h, w, 2, 3] camera space
    R = world_from_cam[..., :3, :3].float()  # [..., 3, 3]
    return torch.einsum("...ij,...hwaj->...hwai", R, half_axes)  # [..., h, w, 2, 3] world space


def _one_sided_slope(d: Tensor, dim: int, max_step: float) -> Tensor:  # [..., h, w] NaN = invalid -> [..., h, w]
    """Per-cell depth derivative along ``dim``: the usable one-sided difference of smaller magnitude, else 0."""
    missing = torch.full_like(d.narrow(dim, 0, 1), torch.nan)  # [..., 1, w] or [..., h, 1]
    step = torch.diff(d, dim=dim)  # d[k+1] - d[k], one shorter along dim
    forward = torch.cat([step, missing], dim)  # d[k+1] - d[k]; none for the last cell
    backward = torch.cat([missing, step], dim)  # d[k] - d[k-1]; none for the first cell
    forward_ok = forward.abs() <= max_step * d  # NaN (invalid cell or neighbour) compares False
    backward_ok = backward.abs() <= max_step * d
    use_forward = forward_ok & (~backward_ok | (forward.abs() <= backward.abs()))
    return torch.where(use_forward, forward, torch.where(backward_ok, backward, 0.0))


def project_footprints(
    points: Tensor,  # [N, 3] world points
    axes: Tensor,  # [N, 2, 3] world half-axes (a, b) of each point's footprint
    K: Tensor,  # [V, 3, 3]
    cam_from_world: Tensor,  # [V, 4, 4]
) -> tuple[Tensor, Tensor, Tensor]:  # uv [V, N, 2], z [V, N], axes_uv [V, N, 2, 2]
    """Project points and their footprint axes into ``V`` cameras.

    The axes go through the Jacobian of the projection at the point,
    ``J = (K[:2] - uv e_z^T) R / z`` (skew included), giving ``a' = J a`` and ``b' = J b`` in cells:
    ``axes_uv[v, n, 0]`` is ``a'`` as ``(du, dv)``, ``axes_uv[v, n, 1]`` is ``b'``.
    """
    return _project_with_axes(points, axes, K.float() @ cam_from_world[:, :3, :].float())


def _project_with_axes(points: Tensor, axes: Tensor, P: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # points [N, 3], axes [N, 2, 3], P [V, 3, 4] -> uv [V, N, 2], z [V, N], axes_uv [V, N, 2, 2]
    uv, z = _project(points, P)  # [V, N, 2], [V, N]
    directions = torch.einsum("vij,naj->vnai", P[:, :, :3], axes.float())  # [V, N, 2, 3] axes through K R
    axes_uv = (directions[..., :2] - uv.unsqueeze(2) * directions[..., 2:]) / z[:, :, None, None]  # [V, N, 2, 2]
    return uv, z, axes_uv


@dataclass
class SplatResult:
    """Output of ``splat_footprints`` / ``splat_zbuffer`` for ``V`` views of an ``h x w`` grid."""

    index: Tensor  # [V, h, w] long, index of the point each cell shows, -1 where empty
    mask: Tensor  # [V, h, w] bool, True where a point landed
    depth: Tensor  # [V, h, w] float32 depth of the shown point, NaN where empty
    features: Tensor | None  # [V, C, h, w] features of the shown point, zeros where empty
    closest: Tensor | None = None  # [V, h, w] float32 depth of the closest covering point (the band's base), NaN where empty


def _covered_cells(
    uv: Tensor,  # [V, N, 2] projected centres
    z: Tensor,  # [V, N] camera depth
    axes_uv: Tensor | None,  # [V, N, 2, 2] projected half-axes (a', b'), or None for point-like footprints
    height: int,
    width: int,
    max_cells: int,
    near: float,
) -> tuple[Tensor, Tensor]:  # slot [V, N, M, M] long flat cell ids, covered [V, N, M, M] bool
    """Candidate cells of every (view, point): the ``M x M`` cells whose centres are nearest the
    projection (rows, then columns), and whether the point covers each of them.

    A point covers the cell containing its projection, and every candidate whose centre lies in
    the parallelogram ``{uv + s a' + t b' : |s|, |t| <= 1 + FOOTPRINT_INFLATION}``. Candidates
    outside the grid get the nearest border cell as slot (covered False) so that no single dump
    slot collects them all. Per-axis masks are applied on ``[V, N, 2, M]`` before the outer
    product, so that few operations run on the full ``[V, N, M, M]``.
    """
    V, M = z.shape[0], max_cells
    first = torch.floor(uv - (M - 1) / 2)  # [V, N, 2] first of the M nearest cells per axis
    cells = first.unsqueeze(-1) + torch.arange(M, device=uv.device, dtype=uv.dtype)  # [V, N, 2, M] columns, rows
    below_size = torch.stack([cells[:, :, 0] < width, cells[:, :, 1] < height], 2)  # [V, N, 2, M]
    in_front = (z > near)[:, :, None, None]  # [V, N, 1, 1]
    usable = in_front & (cells >= 0) & below_size  # [V, N, 2, M] in the grid (NaN and inf compare False)
    home = usable & (cells == torch.floor(uv).unsqueeze(-1))  # [V, N, 2, M] the cell containing the projection
    covered = home[:, :, 1, :, None] & home[:, :, 0, None, :]  # [V, N, M, M] rows x columns
    if axes_uv is not None:
        # an infinite offset fails the inside test, so unusable candidates cover nothing
        delta = torch.where(usable, cells + 0.5 - uv.unsqueeze(-1), torch.inf)  # [V, N, 2, M]
        covered |= _inside_parallelogram(delta, axes_uv)
    cells = cells.nan_to_num(0.0)  # [V, N, 2, M] finite, so that the nearest grid cell below is defined
    col = cells[:, :, 0].clamp(0, width - 1).long()  # [V, N, M]
    row = cells[:, :, 1].clamp(0, height - 1).long()  # [V, N, M]
    view_base = torch.arange(V, device=uv.device)[:, None, None] * (height * width)  # [V, 1, 1]
    slot = (view_base + row * width).unsqueeze(-1) + col.unsqueeze(-2)  # [V, N, M, M] view * h*w + row * w + col
    return slot, covered


def _inside_parallelogram(
    delta: Tensor,  # [V, N, 2, M] candidate centre minus projection: x offsets of the M columns, y of the M rows
    axes_uv: Tensor,  # [V, N, 2, 2] (a', b'), each (du, dv)
) -> Tensor:  # [V, N, M, M] (row, column) centre inside the inflated parallelogram
    """Solve ``s a' + t b' = delta`` by Cramer's rule without dividing: ``|s|, |t| <= 1 + inflation``
    becomes ``|s det|, |t det| <= (1 + inflation) |det|``. A degenerate (``det = 0``) or NaN
    footprint, or an infinite offset, contains no centre."""
    dx, dy = delta[:, :, 0], delta[:, :, 1]  # [V, N, M] each
    ax, ay = axes_uv[:, :, 0, 0, None], axes_uv[:, :, 0, 1, None]  # [V, N, 1] each
    bx, by = axes_uv[:, :, 1, 0, None], axes_uv[:, :, 1, 1, None]  # [V, N, 1] each
    det = ax * by - ay * bx  # [V, N, 1]
    bound = torch.where(det != 0, det.abs() * (1 + FOOTPRINT_INFLATION), -1.0).unsqueeze(-1)  # [V, N, 1, 1]
    s_det = (by * dx).unsqueeze(-2) - (bx * dy).unsqueeze(-1)  # [V, N, M, M] by dx - bx dy
    t_det = (ax * dy).unsqueeze(-1) - (ay * dx).unsqueeze(-2)  # [V, N, M, M] ax dy - ay dx
    return (s_det.abs_() <= bound).logical_and_(t_det.abs_() <= bound)  # in place: fewer full-size buffers


def _candidates(
    points: Tensor,  # [n, 3] one span of the points
    axes: Tensor | None,  # [n, 2, 3] or None (point-like)
    frame_key: Tensor,  # [n] int64 frame * 2^32
    P: Tensor,  # [V, 3, 4]
    height: int,
    width: int,
    max_cells: int,
    near: float,
    compact: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (view, point, candidate cell) triples of one span of points, flat: cell ``slot`` (long),
    depth ``z`` (inf where the point does not cover the cell), ``(frame, depth) key`` (int64) and
    ``point`` index within the span (long). ``compact`` keeps only the covered triples (a host
    synchronisation for ``nonzero``), so later passes touch a few cells per point instead of
    ``max_cells**2``."""
    if axes is None:
        uv, z = _project(points, P)  # [V, n, 2], [V, n]
        axes_uv = None
    else:
        uv, z, axes_uv = _project_with_axes(points, axes, P)  # [V, n, 2], [V, n], [V, n, 2, 2]
    V, n = z.shape
    slot, covered = _covered_cells(uv, z, axes_uv, height, width, max_cells, near)  # [V, n, M, M] each
    # positive float32 bit patterns order like the floats, so the key orders by frame, then depth
    key = frame_key + z.view(torch.int32).long()  # [V, n]; z > near > 0 wherever it is used
    per = max_cells * max_cells
    if compact:
        flat = covered.view(-1).nonzero().squeeze(1)  # [K] covered triples, in (view, point, cell) order
        pair = flat // per  # [K] (view, point) pair of each
        return slot.view(-1)[flat], z.view(-1)[pair], key.view(-1)[pair], pair % n
    z_cand = torch.where(covered, z[:, :, None, None], torch.inf).view(-1)  # [V*n*M*M], inf: not covered
    key_cand = key[:, :, None, None].expand(V, n, max_cells, max_cells).reshape(-1)  # [V*n*M*M]
    point = torch.arange(n, device=z.device)[None, :, None].expand(V, n, per).reshape(-1)  # [V*n*M*M]
    return slot.view(-1), z_cand, key_cand, point


def _splat_group(
    points: Tensor,  # [N, 3]
    axes: Tensor | None,  # [N, 2, 3] or None (point-like)
    frame_key: Tensor,  # [N] int64 frame * 2^32: the high half of the (frame, depth) key
    P: Tensor,  # [V, 3, 4] full projections K @ cam_from_world[:3]
    height: int,
    width: int,
    surface_tolerance: float,
    max_cells: int,
    near: float,
    frames_are_indices: bool,
    span: int,  # points per span: candidates of at most this many points are in memory at once
    compact: bool,  # keep only the covered candidates (one host synchronisation per span)
) -> tuple[Tensor, Tensor, Tensor]:  # index [V, h, w] long (N where empty), depth of the shown point, closest depth
    V, N, device = P.shape[0], points.shape[0], points.device
    starts = range(0, N, span)
    one = len(starts) == 1  # one span: its candidates are computed once and kept for all passes
    kept = _candidates(points, axes, frame_key, P, height, width, max_cells, near, compact) if one else None

    def spans():  # (first point, slot, z, key, point) of each span, recomputed per pass when there are several
        for s in starts:
            e = min(N, s + span)
            c = kept if one else _candidates(points[s:e], None if axes is None else axes[s:e], frame_key[s:e], P,
                                             height, width, max_cells, near, compact)  # fmt: skip
            yield s, *c

    cells = V * height * width
    # pass 1: closest depth per cell (amin is order independent -> deterministic)
    zmin = torch.full((cells,), torch.inf, device=device)
    for _, slot, z_cand, _, _ in spans():
        zmin.scatter_reduce_(0, slot, z_cand, reduce="amin")
    # pass 2: among points in the surface band of the closest one, the smallest (frame, depth) key
    band = zmin * (1.0 + surface_tolerance)  # [V*h*w]
    if surface_tolerance > 0:
        band = band + surface_band_slack(zmin.view(V, height, width)).view(-1)
    band = torch.where(zmin < torch.inf, band, -torch.inf)  # an empty cell has no band: inf <= -inf is False

    def in_band(slot, z_cand, key):  # candidates not covered have z inf: never members
        return torch.where(z_cand <= band.gather(0, slot), key, _NO_KEY)

    best_key = torch.full((cells,), _NO_KEY, device=device)
    for _, slot, z_cand, key, _ in spans():
        best_key.scatter_reduce_(0, slot, in_band(slot, z_cand, key), reduce="amin")
    if frames_are_indices:  # every point is its own frame: the key's high half is the point index
        index = best_key >> 32  # [V*h*w]
    else:
        # pass 3: among members with exactly that key, the lowest point index (non-members carry
        # _NO_KEY, which matches only empty cells; those are emptied again below)
        index = torch.full((cells,), N, device=device)
        for s, slot, z_cand, key, point in spans():
            winner = in_band(slot, z_cand, key) == best_key.gather(0, slot)
            index.scatter_reduce_(0, slot, torch.where(winner, point + s, N), reduce="amin")
    index = torch.where(best_key < _NO_KEY, index, N).view(V, height * width)  # [V, h*w], N where empty
    z = _project(points, P)[1]  # [V, N] depth of every point (cheap: no candidates)
    depth = torch.where(index < N, z.gather(1, index.clamp(max=N - 1)), torch.nan)  # [V, h*w]
    closest = torch.where(zmin < torch.inf, zmin, torch.nan)  # [V*h*w]
    return index.view(V, height, width), depth.view(V, height, width), closest.view(V, height, width)


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


def splat_footprints(
    points: Tensor,  # [N, 3] world points
    axes: Tensor | None,  # [N, 2, 3] world half-axes (a, b) from cell_footprints, or None (point-like)
    frames: Tensor | None,  # [N] integer frame of each point (smaller = older), or None: one frame
    features: Tensor | None,  # [N, C] per-point features, or None for indices only
    K: Tensor,  # [V, 3, 3] intrinsics of the target grid
    cam_from_world: Tensor,  # [V, 4, 4]
    height: int,
    width: int,
    *,
    surface_tolerance: float = 0.0,
    max_cells: int = 4,
    compact: bool = False,
    compiled: bool = False,
    near: float = 1e-6,
    max_elements: int = 1 << 26,
) -> SplatResult:
    """Hard z-buffer of surface footprints: every point covers the cells of the target grid whose
    centres lie in its projected footprint, so that magnified surfaces read back without cracks.

    Coverage: the point's centre and axes are projected (``project_footprints``); it covers the
    cell containing its projected centre (today's nearest-cell rule is the minimum, so a zero,
    NaN or degenerate footprint still shows as one cell), plus every candidate cell whose centre
    lies in the closed parallelogram ``{uv + s a' + t b' : |s|, |t| <= 1}``, grown by
    ``FOOTPRINT_INFLATION`` (1%) against edge mismatches. Candidates are the ``max_cells`` cells
    per axis nearest the projected centre: that holds the whole footprint while it spans at most
    ``max_cells`` cell centres per axis (an axis-aligned footprint magnified less than about
    ``max_cells`` times; rotated ones need more room); more magnified points get a footprint
    truncated to those cells.
    Points with ``z <= near`` or non-finite projections cover nothing.

    Z-buffer: per cell ``zmin`` is the smallest covering depth. The surface band is
    ``z <= zmin * (1 + surface_tolerance) + surface_band_slack(zmin)`` when ``surface_tolerance > 0``,
    else ``z == zmin``. Among the points in the band the oldest frame wins (smallest ``frames``),
    within it the closest point, exact ties the lowest index. So a memory built from one frame
    reads like the plain z-buffer whatever the tolerance, and first observations stay stable under
    revisits. ``frames`` must lie in ``[-2^31, 2^31)`` (they are packed with the depth bits).

    Deterministic on CPU and CUDA: three ``scatter_reduce(amin)`` passes, no host synchronisation.
    With ``compact=True`` only the candidates a point covers are kept after the coverage test (a
    footprint of half a cell covers one to four of its 16 candidates): the same result for a
    fraction of the work on large point clouds, at the price of one host synchronisation per view
    group (``nonzero``). ``compiled=True`` runs the passes through ``torch.compile`` (dynamic shapes,
    compiled once per grid size and process, then a few fused kernels instead of about 150 small
    ones; for reads that are launch-bound on a GPU; ignored with ``compact``). At most ``max_elements`` (view, point,
    candidate) triples are in memory at once: views go in groups, and when one view's candidates
    exceed that, the points go in spans (each pass then recomputes their projections).
    """
    _check_splat_inputs(points, features, K, cam_from_world, surface_tolerance)
    N = points.shape[0]
    if axes is not None and axes.shape != (N, 2, 3):
        raise ValueError(f"axes must be [N, 2, 3] with N={N}, got {tuple(axes.shape)}")
    if frames is not None and (frames.shape != (N,) or frames.is_floating_point() or frames.is_complex()):
        raise ValueError(f"frames must be an integer [N] tensor with N={N}, got {frames.dtype} {tuple(frames.shape)}")
    if max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}")
    return _splat(points, axes, frames, features, K, cam_from_world, height, width, surface_tolerance, max_cells, near,
                  max_elements, frames_are_indices=False, compact=compact, compiled=compiled and not compact)  # fmt: skip


_COMPILED: dict[str, object] = {}


def _compiled_group():
    """``_splat_group`` through ``torch.compile`` (made once per process)."""
    if "group" not in _COMPILED:
        _COMPILED["group"] = torch.compile(_splat_group, dynamic=True)
    return _COMPILED["group"]


def _check_splat_inputs(
    points: Tensor,  # [N, 3]
    features: Tensor | None,  # [N, C] or None
    K: Tensor,  # [V, 3, 3]
    cam_from_world: Tensor,  # [V, 4, 4]
    surface_tolerance: float,
) -> None:
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    N = points.shape[0]
    if features is not None and (features.dim() != 2 or features.shape[0] != N):
        raise ValueError(f"features must be [N, C] with N={N}, got {tuple(features.shape)}")
    if K.dim() != 3 or K.shape[1:] != (3, 3) or cam_from_world.shape != (K.shape[0], 4, 4):
        raise ValueError(f"K must be [V,3,3] and cam_from_world [V,4,4], got {tuple(K.shape)}, {tuple(cam_from_world.shape)}")
    if surface_tolerance < 0:
        raise ValueError(f"surface_tolerance must be >= 0, got {surface_tolerance}")


def _splat(
    points: Tensor,  # [N, 3]
    axes: Tensor | None,  # [N, 2, 3] or None (point-like)
    frames: Tensor | None,  # [N] integer, or None: one frame
    features: Tensor | None,  # [N, C] or None
    K: Tensor,  # [V, 3, 3]
    cam_from_world: Tensor,  # [V, 4, 4]
    height: int,
    width: int,
    surface_tolerance: float,
    max_cells: int,
    near: float,
    max_elements: int,
    frames_are_indices: bool,  # frames[i] == i: the winning key names the point, no third pass
    compact: bool = False,  # keep only covered candidates (one host synchronisation per group)
    compiled: bool = False,  # run the passes through torch.compile
) -> SplatResult:
    N, V, device = points.shape[0], K.shape[0], points.device
    if N == 0:
        feats = None if features is None else torch.zeros(V, features.shape[1], height, width, dtype=features.dtype, device=device)
        return SplatResult(index=torch.full((V, height, width), -1, device=device),
                           mask=torch.zeros(V, height, width, dtype=torch.bool, device=device),
                           depth=torch.full((V, height, width), torch.nan, device=device), features=feats,
                           closest=torch.full((V, height, width), torch.nan, device=device))  # fmt: skip
    P = (K.float() @ cam_from_world[:, :3, :].float()).to(device)  # [V, 3, 4], composed where the cameras live
    max_cells = max_cells if axes is not None else 1  # a point-like footprint only ever covers one cell
    frame_key = torch.zeros(N, dtype=torch.long, device=device) if frames is None else frames.to(device).long() << 32  # [N]
    per_point = max_cells * max_cells  # candidates of one (view, point)
    group = max(1, max_elements // (N * per_point))  # views per group
    span = max(1, max_elements // per_point) if N * per_point > max_elements else N  # points per span, one view at a time
    run = _compiled_group() if compiled else _splat_group
    parts = [
        run(points, axes, frame_key, P[s : s + group], height, width, surface_tolerance, max_cells, near,
            frames_are_indices, span, compact)
        for s in range(0, V, group)
    ]  # fmt: skip
    best, depth, closest = (parts[0][i] if len(parts) == 1 else torch.cat([p[i] for p in parts]) for i in range(3))  # [V, h, w] each
    mask = best < N  # [V, h, w]
    feats = None
    if features is not None:
        safe = best.clamp(max=N - 1).view(-1)  # [V*h*w]
        gathered = features[safe].view(V, height, width, -1) * mask.unsqueeze(-1)  # [V, h, w, C], 0 where empty
        feats = gathered.permute(0, 3, 1, 2)  # [V, h, w, C] -> [V, C, h, w] (a view)
    return SplatResult(index=torch.where(mask, best, -1), mask=mask, depth=depth, features=feats, closest=closest)


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
    """Hard z-buffer of point-like footprints: every point goes to the cell that contains its
    projection (nearest cell, no soft splatting); each cell shows the closest point. Points whose
    depth is within ``surface_tolerance`` (relative, widened by ``surface_band_slack``) of the
    closest count as the same surface, and among those the lowest index wins. With
    ``surface_tolerance=0`` this is the plain z-buffer, exact ties broken by the lowest index.

    This is the core of ``splat_footprints`` with no axes and every point its own frame (its
    index), so "oldest frame" is "lowest index" and the winning (frame, depth) key names the point:
    two ``scatter_reduce(amin)`` passes. Views are processed in groups of at most ``max_elements``
    (view, point) pairs.
    """
    _check_splat_inputs(points, features, K, cam_from_world, surface_tolerance)
    frames = torch.arange(points.shape[0], device=points.device)  # [N] every point its own frame
    return _splat(points, None, frames, features, K, cam_from_world, height, width,
                  surface_tolerance, 1, near, max_elements, frames_are_indices=True)  # fmt: skip


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
