"""Surface footprints: analytic checks of cell_footprints, the fast footprint splat against a
per-point reference, and crack rates on ray-cast scenes (run with ``pytest -s`` to see them)."""

import math

import numpy as np
import pytest
import torch

from mirage.cameras import Cameras, intrinsics_from_fov, invert_rigid, look_at
from mirage.geometry import (
    FOOTPRINT_INFLATION,
    cell_footprints,
    project_footprints,
    project_points,
    splat_footprints,
    splat_zbuffer,
    surface_band_slack,
    unproject_depth,
)
from mirage.synthetic import Box, SyntheticScene, default_scene


# ---------------------------------------------------------------------------------------- reference
def reference_footprint_splat(points, axes, frames, features, K, cam_from_world, height, width,
                              surface_tolerance=0.0, max_cells=4, near=1e-6):  # fmt: skip
    """Slow, obviously-correct footprint z-buffer: loops over views, points and candidate cells.

    The inside test is written in numpy float32 scalars with the same formula as the fast path,
    so that centres lying on a footprint's edge (to the last bit) are decided the same way.
    """
    uv, z, axes_uv = project_footprints(points, axes, K, cam_from_world)  # [V, N, 2], [V, N], [V, N, 2, 2]
    V, N = z.shape
    M = max_cells
    frames = [0] * N if frames is None else frames.tolist()
    f32 = np.float32
    grow = f32(1 + FOOTPRINT_INFLATION)

    def covered_cells(v, i):  # the (row, col) cells point i covers in view v
        u, w_, zi = float(uv[v, i, 0]), float(uv[v, i, 1]), float(z[v, i])
        if not (zi > near and math.isfinite(u) and math.isfinite(w_)):
            return []
        (ax, ay), (bx, by) = ((f32(c) for c in row) for row in axes_uv[v, i].tolist())
        det = ax * by - ay * bx
        cells = []
        for row in range(math.floor(w_ - (M - 1) / 2), math.floor(w_ - (M - 1) / 2) + M):  # M nearest rows
            for col in range(math.floor(u - (M - 1) / 2), math.floor(u - (M - 1) / 2) + M):  # M nearest columns
                if not (0 <= row < height and 0 <= col < width):
                    continue
                dx, dy = f32(col + 0.5) - f32(u), f32(row + 0.5) - f32(w_)
                s_det, t_det = by * dx - bx * dy, ax * dy - ay * dx  # s * det, t * det (Cramer)
                inside = det != 0 and abs(s_det) <= abs(det) * grow and abs(t_det) <= abs(det) * grow
                home = col == math.floor(u) and row == math.floor(w_)
                if inside or home:
                    cells.append((row, col))
        return cells

    index = torch.full((V, height, width), -1, dtype=torch.long)
    depth = torch.full((V, height, width), math.nan)
    for v in range(V):
        covers = [covered_cells(v, i) for i in range(N)]
        zmin = torch.full((height, width), math.inf)
        for i in range(N):
            for rc in covers[i]:
                zmin[rc] = min(float(zmin[rc]), float(z[v, i]))
        band = zmin * (1 + surface_tolerance)
        if surface_tolerance > 0:
            band = band + surface_band_slack(zmin[None])[0]
        best = {}  # (row, col) -> (frame, z, i) of the winner so far
        for i in range(N):
            for rc in covers[i]:
                if z[v, i] <= band[rc]:  # in the surface band (z == zmin when surface_tolerance == 0)
                    key = (frames[i], float(z[v, i]), i)  # oldest frame, then closest, then lowest index
                    best[rc] = min(best.get(rc, key), key)
        for rc, (_, zi, i) in best.items():
            index[v][rc], depth[v][rc] = i, zi
    feats = None
    if features is not None:
        feats = torch.zeros(V, features.shape[1], height, width, dtype=features.dtype)
        for v in range(V):
            m = index[v] >= 0
            feats[v][:, m] = features[index[v][m]].T
    return index, depth, feats


def _assert_same(fast, index, depth, feats):
    assert torch.equal(fast.index, index)
    assert torch.equal(fast.mask, index >= 0)
    assert torch.equal(torch.isnan(fast.depth), index < 0)
    assert torch.equal(fast.depth[index >= 0], depth[index >= 0])
    if feats is not None:
        assert torch.equal(fast.features, feats)


def _messy_points(N=240, seed=2):
    """Points with duplicates, exact depth ties, points behind the camera, on its plane, outside the
    view, and footprints of every kind: tiny, cell-sized, magnified past max_cells, zero, NaN,
    degenerate (b = 2a)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(N, 3, generator=g) * torch.tensor([1.2, 0.8, 0.4]) + torch.tensor([0.0, 0.0, 3.0])
    pts[: N // 4, 2] = torch.round(pts[: N // 4, 2] * 4) / 4  # depths on a 0.25 m grid: ties across points
    pts[N // 2 : N // 2 + N // 6] = pts[: N // 6]  # exact duplicates
    pts[::11, 2] = -1.0  # behind the camera
    pts[5] = torch.tensor([0.3, 0.2, 0.0])  # on the camera plane: non-finite projection
    pts[7] = torch.tensor([9.0, 0.0, 3.0])  # far outside the view
    scale = torch.tensor([0.0, 0.01, 0.05, 0.08, 0.4])[torch.arange(N) % 5]  # 0.4 m at 3 m: beyond 4 cells
    axes = torch.randn(N, 2, 3, generator=g) * scale[:, None, None]  # [N, 2, 3]
    axes[3] = math.nan
    axes[9, 1] = 2 * axes[9, 0]  # degenerate parallelogram
    axes[N // 2 : N // 2 + N // 6] = axes[: N // 6]  # duplicates keep their footprints
    frames = torch.randint(0, 3, (N,), generator=g)  # interleaved frames
    frames[N // 2 : N // 2 + N // 6] = torch.randint(0, 3, (N // 6,), generator=g)
    feats = torch.randn(N, 5, generator=g)
    return pts, axes, frames, feats


def _views(width=24, height=16):
    K = intrinsics_from_fov(width, height, 60.0)
    zoom = K.clone()
    zoom[:2, :2] *= 1.7
    zoom[0, 1] = 3.0  # skew
    Ks = torch.stack([K, K, K, zoom])
    target = torch.tensor([0.0, 0.0, 3.0])
    T = torch.stack([torch.eye(4), look_at(torch.tensor([0.3, 0.0, 0.0]), target),
                     look_at(torch.tensor([-0.5, 0.2, 0.8]), target), look_at(torch.tensor([0.1, -0.1, 0.4]), target)])  # fmt: skip
    return Ks, T


@pytest.mark.parametrize("tol", [0.0, 0.05])
@pytest.mark.parametrize("with_frames", [True, False])
def test_fast_footprint_splat_equals_reference(tol, with_frames):
    pts, axes, frames, feats = _messy_points()
    frames = frames if with_frames else None
    K, T = _views()
    index, depth, ref_feats = reference_footprint_splat(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol)
    assert int((index >= 0).sum()) > 300  # most cells are covered, many by several points
    fast = splat_footprints(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol)
    _assert_same(fast, index, depth, ref_feats)
    # one view per group gives the same answer, and so do spans of points within a view (7 points
    # at a time: ties and duplicates fall in different spans)
    grouped = splat_footprints(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol, max_elements=len(pts) * 16)
    _assert_same(grouped, index, depth, ref_feats)
    spanned = splat_footprints(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol, max_elements=7 * 16)
    _assert_same(spanned, index, depth, ref_feats)
    compact = splat_footprints(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol, compact=True)
    _assert_same(compact, index, depth, ref_feats)  # only the covered candidates: the same answer
    compact = splat_footprints(pts, axes, frames, feats, K, T, 16, 24, surface_tolerance=tol, compact=True, max_elements=7 * 16)
    _assert_same(compact, index, depth, ref_feats)


@pytest.mark.parametrize("max_cells", [1, 2, 3])
def test_truncated_footprints_equal_reference(max_cells):
    pts, axes, frames, feats = _messy_points(seed=3)
    K, T = _views()
    index, depth, _ = reference_footprint_splat(pts, axes, frames, None, K, T, 16, 24, 0.05, max_cells)
    fast = splat_footprints(pts, axes, frames, None, K, T, 16, 24, surface_tolerance=0.05, max_cells=max_cells)
    _assert_same(fast, index, depth, None)


def test_footprints_beyond_max_cells_are_truncated_to_the_nearest_cells():
    # one fronto-parallel point at 2 m, half-axes of 3 cells: a 6x6-cell square around (10.2, 8.7)
    K = torch.tensor([[[20.0, 0, 0], [0, 20.0, 0], [0, 0, 1]]])
    pts = torch.tensor([[10.2 / 10, 8.7 / 10, 2.0]])
    axes = torch.tensor([[[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]])
    full = splat_footprints(pts, axes, None, None, K, torch.eye(4)[None], 20, 20, max_cells=8).mask[0]
    assert full.nonzero()[:, 0].unique().tolist() == [6, 7, 8, 9, 10, 11]  # centres 6.5 .. 11.5 within 8.7 +- 3
    assert full.nonzero()[:, 1].unique().tolist() == [7, 8, 9, 10, 11, 12]  # centres 7.5 .. 12.5 within 10.2 +- 3
    cut = splat_footprints(pts, axes, None, None, K, torch.eye(4)[None], 20, 20, max_cells=3).mask[0]
    assert cut.nonzero()[:, 0].unique().tolist() == [7, 8, 9]  # the 3 rows nearest v = 8.7
    assert cut.nonzero()[:, 1].unique().tolist() == [9, 10, 11]  # the 3 columns nearest u = 10.2


def test_oldest_frame_wins_in_the_band_then_the_closest_point():
    K = torch.tensor([[[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]])
    pts = torch.tensor([[0, 0, 1.03], [0, 0, 1.02], [0, 0, 1.0], [0, 0, 1.02]])
    axes = torch.zeros(4, 2, 3)
    frames = torch.tensor([1, 0, 2, 0])  # points 1 and 3: frame 0, tied depth; point 2 the closest, but newest
    out = splat_footprints(pts, axes, frames, None, K, torch.eye(4)[None], 10, 10, surface_tolerance=0.05)
    assert out.index[0, 5, 5] == 1 and abs(float(out.depth[0, 5, 5]) - 1.02) < 1e-6  # frame 0, lowest index
    # within one frame the closest point wins, not the lowest index
    one = splat_footprints(pts, axes, torch.zeros(4, dtype=torch.long), None, K, torch.eye(4)[None], 10, 10, surface_tolerance=0.05)
    assert one.index[0, 5, 5] == 2
    # with no tolerance the plain z-buffer
    hard = splat_footprints(pts, axes, frames, None, K, torch.eye(4)[None], 10, 10)
    assert hard.index[0, 5, 5] == 2 and int(hard.mask.sum()) == 1


def test_splat_footprints_rejects_bad_arguments():
    K, T = torch.eye(3)[None], torch.eye(4)[None]
    pts = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="axes must be"):
        splat_footprints(pts, torch.zeros(5, 3), None, None, K, T, 4, 4)
    with pytest.raises(ValueError, match="frames must be"):
        splat_footprints(pts, None, torch.zeros(5), None, K, T, 4, 4)
    with pytest.raises(ValueError, match="max_cells"):
        splat_footprints(pts, None, None, None, K, T, 4, 4, max_cells=0)
    with pytest.raises(ValueError, match="surface_tolerance"):
        splat_footprints(pts, None, None, None, K, T, 4, 4, surface_tolerance=-0.1)


# ---------------------------------------------------------------------------------------- cell_footprints
def test_fronto_parallel_plane_footprint_is_half_a_cell_at_its_depth():
    K = torch.tensor([[40.0, 0, 3.0], [0, 50.0, 2.0], [0, 0, 1]])
    depth = torch.full((4, 6), 2.0)
    ax = cell_footprints(depth, K, torch.eye(4))  # [4, 6, 2, 3]
    assert torch.allclose(ax[..., 0, :], torch.tensor([0.025, 0.0, 0.0]).expand(4, 6, 3))  # 0.5 * 2 / 40
    assert torch.allclose(ax[..., 1, :], torch.tensor([0.0, 0.02, 0.0]).expand(4, 6, 3))  # 0.5 * 2 / 50
    # a rotated camera rotates the axes into the world
    world_from_cam = invert_rigid(look_at(torch.tensor([1.0, 0.5, -2.0]), torch.tensor([0.0, 0.0, 3.0])))
    rotated = cell_footprints(depth, K, world_from_cam)
    R = world_from_cam[:3, :3]
    assert torch.allclose(rotated[2, 3, 0], R @ torch.tensor([0.025, 0.0, 0.0]), atol=1e-7)
    assert torch.allclose(rotated[2, 3, 1], R @ torch.tensor([0.0, 0.02, 0.0]), atol=1e-7)


def test_tilted_plane_footprint_is_the_analytic_tangent():
    # plane z = 2 + 0.5 x (camera space): along a row z(u) = 2 / (1 - 0.5 (u + 1/2 - cx) / f)
    f, cx, cy = 500.0, 32.0, 16.0
    K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    xn = (torch.arange(64.0) + 0.5 - cx) / f  # [64] x / z of every column's ray
    depth = (2.0 / (1 - 0.5 * xn)).expand(32, 64)  # [32, 64]
    ax = cell_footprints(depth, K, torch.eye(4))[..., 0, :]  # [32, 64, 3] half-axis along u
    dz_du = 2.0 * 0.5 / f / (1 - 0.5 * xn) ** 2  # analytic dz/du
    yn = (torch.arange(32.0) + 0.5 - cy) / f  # [32]
    tangent = torch.stack([(xn * dz_du + depth / f), yn[:, None] * dz_du, dz_du.expand(32, 64)], -1)  # [32, 64, 3] dp/du
    # a one-sided difference is off by about d''/(2 d') = 0.5 z / (2 f) relative, here 1e-3
    assert torch.allclose(ax, 0.5 * tangent, rtol=2e-3, atol=1e-9)


def test_depth_slope_uses_the_smaller_usable_side():
    K = torch.tensor([[10.0, 0, 3.0], [0, 10.0, 0.5], [0, 0, 1]])
    # columns: 2.0, 2.1, 2.3, then a jump of 74% (a discontinuity), 4.0, 4.2, then an invalid cell
    depth = torch.tensor([[2.0, 2.1, 2.3, 4.0, 4.2, math.nan]])
    a = cell_footprints(depth, K, torch.eye(4))[0, :, 0]  # [6, 3]; camera z of a = slope / 2
    # col 0: only right (0.1); col 1: min(0.1, 0.2); col 2: right jumps, left 0.2; col 3: left jumps,
    # right 0.2; col 4: right invalid, left 0.2; col 5: invalid -> NaN
    assert torch.allclose(a[:5, 2], torch.tensor([0.05, 0.05, 0.1, 0.1, 0.1]))
    assert torch.isnan(a[5]).all()
    # a cell with a jump on both sides (or isolated among holes) is fronto-parallel: slope 0
    spike = torch.tensor([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0], [1.0, 9.0, 1.0]])
    ax = cell_footprints(spike, torch.tensor([[10.0, 0, 1.5], [0, 10.0, 1.5], [0, 0, 1]]), torch.eye(4))  # [3, 3, 2, 3]
    assert ax[1, 1].tolist() == [[0.15000000596046448, 0.0, 0.0], [0.0, 0.15000000596046448, 0.0]]  # 0.5 * 3 / 10
    lonely = torch.tensor([[math.nan, 0.0, math.nan], [-1.0, 2.0, math.inf]])
    ax = cell_footprints(lonely, torch.tensor([[10.0, 0, 1.5], [0, 10.0, 1.0], [0, 0, 1]]), torch.eye(4))
    assert ax[1, 1].tolist() == [[0.10000000149011612, 0.0, 0.0], [0.0, 0.10000000149011612, 0.0]]
    assert torch.isnan(ax[0]).all() and torch.isnan(ax[1, 0]).all() and torch.isnan(ax[1, 2]).all()


def test_projected_axes_are_the_projection_jacobian():
    torch.manual_seed(0)
    K = torch.tensor([[300.0, 7.0, 40.0], [0, 280.0, 30.0], [0, 0, 1]], dtype=torch.float64)  # with skew
    T = look_at(torch.tensor([0.4, -0.3, 0.2]), torch.tensor([0.0, 0.1, 3.0])).double()
    pts = torch.randn(20, 3, dtype=torch.float64) * 0.5 + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    axes = torch.randn(20, 2, 3, dtype=torch.float64) * 1e-6  # small: the projection is linear over them

    def project(p):  # [N, 3] -> [N, 2] in float64
        q = (p @ T[:3, :3].T + T[:3, 3]) @ K.T
        return q[:, :2] / q[:, 2:]

    uv, z, axes_uv = project_footprints(pts, axes, K[None], T[None])  # computed in float32
    assert torch.allclose(uv[0].double(), project(pts), rtol=1e-5, atol=1e-3)
    for k in range(2):
        central = (project(pts + axes[:, k]) - project(pts - axes[:, k])) / 2  # [N, 2]
        assert torch.allclose(axes_uv[0, :, k].double(), central, rtol=1e-4, atol=1e-10)


def _smooth_depth(h, w):  # [h, w] a bumpy surface between about 1.4 and 2.6 m
    v, u = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    return 2.0 + 0.4 * torch.sin(5 * u + 1) * torch.cos(4 * v) + 0.3 * u - 0.2 * v


def _stepped_depth(h, w):  # [h, w] blocks at different depths (discontinuities) and invalid cells
    d = _smooth_depth(h, w)
    d[:, w // 3 : w // 2] *= 2.0
    d[h // 2 :, : w // 4] *= 0.4
    d[3, 5], d[7, 20], d[10, 11:14] = math.nan, 0.0, math.inf
    return d


@pytest.mark.parametrize("make_depth", [_smooth_depth, _stepped_depth])
def test_source_view_reads_back_every_cell_from_its_own_point_only(make_depth):
    h, w = 24, 40
    K = intrinsics_from_fov(w, h, 60.0)
    cam_from_world = look_at(torch.tensor([0.5, -0.2, 0.3]), torch.tensor([0.0, 0.3, 3.0]))
    depth = make_depth(h, w)
    valid = torch.isfinite(depth) & (depth > 0)  # [h, w]
    world_from_cam = invert_rigid(cam_from_world)
    pts = unproject_depth(depth, K, world_from_cam)[valid]  # [N, 3]
    axes = cell_footprints(depth, K, world_from_cam)[valid]  # [N, 2, 3]
    _, _, axes_uv = project_footprints(pts, axes, K[None], cam_from_world[None])
    assert torch.allclose(axes_uv[0], torch.tensor([[0.5, 0.0], [0.0, 0.5]]).expand_as(axes_uv[0]), atol=1e-4)
    own = torch.full((h, w), -1)
    own[valid] = torch.arange(len(pts))
    # every point in its own frame and a band wide enough to hold them all: the oldest point (then
    # the newest) covering a cell wins, so each cell seeing its own point means no other covers it
    N = len(pts)
    for frames in (torch.arange(N), -torch.arange(N)):
        out = splat_footprints(pts, axes, frames, None, K[None], cam_from_world[None], h, w, surface_tolerance=10.0)
        assert torch.equal(out.index[0], own)
    plain = splat_footprints(pts, axes, None, None, K[None], cam_from_world[None], h, w)
    assert torch.allclose(plain.depth[0][valid], depth[valid], rtol=1e-5)


# ---------------------------------------------------------------------------------------- crack rates
# Latent-sized grid and scenes ray cast by mirage.synthetic. The source camera is the world frame.
GRID_W, GRID_H = 40, 24
GRID_K = intrinsics_from_fov(GRID_W, GRID_H, 60.0)  # [3, 3]
_ROOM = dict(room_min=(-4.0, -3.0, -2.0), room_max=(4.0, 3.0, 3.0))  # back wall at 3 m fills the view
SCENES = {
    "plane": SyntheticScene(**_ROOM),
    "box": SyntheticScene(**_ROOM, boxes=(Box((-0.6, -0.5, 1.5), (0.3, 0.4, 2.0), (0.9, 0.8, 0.2)),)),
    # the default room (floor, ceiling and side walls at grazing angles, spheres, crates)
    "room": SyntheticScene(spheres=default_scene().spheres, boxes=default_scene().boxes),
}


def _motion(name):  # -> (K [3, 3], cam_from_world [4, 4]) of the target camera
    def eye_at(eye, target):
        return look_at(torch.tensor(eye), torch.tensor(target))

    def zoom(s):
        K = GRID_K.clone()
        K[:2, :2] *= s
        return K

    a8, a15, a10 = math.radians(8), math.radians(15), math.radians(10)
    return {
        "dolly in 0.3": (GRID_K, eye_at([0, 0, 0.3], [0, 0, 3.0])),
        "dolly in 0.6": (GRID_K, eye_at([0, 0, 0.6], [0, 0, 3.0])),
        "dolly out 0.5": (GRID_K, eye_at([0, 0, -0.5], [0, 0, 3.0])),
        "zoom in 1.5x": (zoom(1.5), torch.eye(4)),
        "zoom out 1.5x": (zoom(1 / 1.5), torch.eye(4)),
        "orbit 8": (GRID_K, eye_at([3 * math.sin(a8), 0, 3 - 3 * math.cos(a8)], [0, 0, 3.0])),  # around (0, 0, 3)
        "orbit 15": (GRID_K, eye_at([3 * math.sin(a15), 0, 3 - 3 * math.cos(a15)], [0, 0, 3.0])),
        "truck 0.3": (GRID_K, eye_at([0.3, 0, 0], [0.3, 0, 3.0])),
        "pan 10": (GRID_K, eye_at([0, 0, 0], [math.sin(a10), 0, math.cos(a10)])),
    }[name]


MOTIONS = ["dolly in 0.3", "dolly in 0.6", "dolly out 0.5", "zoom in 1.5x", "zoom out 1.5x",
           "orbit 8", "orbit 15", "truck 0.3", "pan 10"]  # fmt: skip


def _memory(scene):  # one point per source cell: points [N, 3], axes [N, 2, 3]
    _, depth = scene.render(Cameras(GRID_K[None], torch.eye(4)[None], GRID_W, GRID_H))  # [1, h, w]
    pts = unproject_depth(depth[0], GRID_K, torch.eye(4)).reshape(-1, 3)  # [h*w, 3]
    axes = cell_footprints(depth[0], GRID_K, torch.eye(4)).reshape(-1, 2, 3)  # [h*w, 2, 3]
    return pts, axes


def _ground_truth(scene, K, cam_from_world):
    """Which target cells should come back, which are disoccluded, and what each one sees.

    X = the first hit of the ray through a target cell's centre. The cell should come back iff the
    source sees X (X projects inside the source image and the source's first hit towards X is X)
    and the source cell X projects into sampled the same surface at its centre (its stored point
    is on X's wall or object): a sliver of a surface narrower than a cell beside a silhouette was
    never stored, so no splat can bring it back. Disoccluded: X projects inside the source image
    but the source sees something else in front of it.
    Returns should [h, w] bool, occluded [h, w] bool, the surface id of X [h, w] and the surface id
    each source cell sampled [h*w] (the surface of each stored point).
    """
    origins = torch.zeros(GRID_H * GRID_W, 3)  # [h*w, 3] the source camera centre
    centres = unproject_depth(torch.ones(GRID_H, GRID_W), GRID_K, torch.eye(4)).reshape(-1, 3)  # source rays
    _, source_surface, _ = scene._cast(origins, centres)  # [h*w] what each source cell sampled
    _, depth = scene.render(Cameras(K[None], cam_from_world[None], GRID_W, GRID_H))  # [1, h, w]
    X = unproject_depth(depth[0], K, invert_rigid(cam_from_world)).reshape(-1, 3)  # [h*w, 3]
    uv, z = project_points(X, GRID_K[None], torch.eye(4)[None])  # [1, h*w, 2], [1, h*w]
    u, v, z = uv[0, :, 0], uv[0, :, 1], z[0]
    inside = (z > 0) & (u >= 0) & (u < GRID_W) & (v >= 0) & (v < GRID_H)  # [h*w]
    t, surface, _ = scene._cast(origins, X)  # first hit towards X at origin + t X
    seen = inside & ((t - 1).abs() < 1e-3)
    cell = v.nan_to_num(0).clamp(0, GRID_H - 1).long() * GRID_W + u.nan_to_num(0).clamp(0, GRID_W - 1).long()
    sampled = source_surface[cell] == surface  # [h*w]
    target_origins = invert_rigid(cam_from_world)[:3, 3].expand_as(X)  # [h*w, 3]
    _, target_surface, _ = scene._cast(target_origins, X - target_origins)  # [h*w] the surface of X
    should, occluded = (seen & sampled).view(GRID_H, GRID_W), (inside & ~seen).view(GRID_H, GRID_W)
    return should, occluded, target_surface.view(GRID_H, GRID_W), source_surface


def _away_from(region):  # [h, w] bool -> [h, w]: cells of region whose 8 neighbours are all in region too
    outside = (~region).float()[None, None]
    return region & (torch.nn.functional.max_pool2d(outside, 3, 1, 1)[0, 0] == 0)


def _inside_one_surface(surface):  # [h, w] ids -> [h, w] bool: the 8 neighbours see the same surface
    padded = torch.nn.functional.pad(surface[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    same = [padded[dy : dy + GRID_H, dx : dx + GRID_W] == surface for dy in range(3) for dx in range(3)]
    return torch.stack(same).all(0)


@pytest.mark.parametrize("scene_name", ["plane", "box", "room"])
def test_crack_rate_of_footprints_is_below_one_percent(scene_name):
    """Cracks: cells that should come back but are empty. Disoccluded cells more than one cell from
    anything the source saw must stay holes. See-through: cells more than one cell from a surface
    boundary that show a point of another surface (the background through a crack)."""
    scene = SCENES[scene_name]
    pts, axes = _memory(scene)
    print(f"\n{scene_name} scene, {GRID_W}x{GRID_H} cells, fov 60: crack rate (nearest cell -> footprints)")
    for name in MOTIONS:
        K, T = _motion(name)
        should, occluded, surface, stored_surface = _ground_truth(scene, K, T)
        before = splat_zbuffer(pts, None, K[None], T[None], GRID_H, GRID_W)
        after = splat_footprints(pts, axes, None, None, K[None], T[None], GRID_H, GRID_W, surface_tolerance=0.05)
        crack_before = float((should & ~before.mask[0]).sum() / should.sum())
        crack_after = float((should & ~after.mask[0]).sum() / should.sum())
        deep = _away_from(occluded)  # disoccluded cells more than one cell from anything the source saw
        holes = float((deep & ~after.mask[0]).sum() / deep.sum()) if deep.any() else 1.0
        interior = should & _inside_one_surface(surface)

        def see_through(out):  # [V=1, h, w] readout -> cells of interior showing another surface
            shown = stored_surface[out.index[0].clamp(min=0)]  # [h, w]
            return int((interior & out.mask[0] & (shown != surface)).sum())

        print(f"  {name:14s} {int(should.sum()):4d} cells  {100 * crack_before:6.2f}% -> {100 * crack_after:5.2f}%"
              f"   disoccluded holes kept {int((deep & ~after.mask[0]).sum())}/{int(deep.sum())}"
              f"   see-through {see_through(before)} -> {see_through(after)}")  # fmt: skip
        assert should.sum() > 300
        assert crack_after <= 0.01, (name, crack_after)
        assert holes >= 0.95, (name, holes)
        assert see_through(after) == 0, name
    if scene_name == "box":  # the box scene must actually test disocclusions
        assert _away_from(_ground_truth(scene, *_motion("orbit 15"))[1]).sum() >= 20
        assert _away_from(_ground_truth(scene, *_motion("truck 0.3"))[1]).sum() >= 10


def test_single_frame_memory_reads_like_the_plain_zbuffer_whatever_the_tolerance():
    pts, axes = _memory(SCENES["room"])
    N = len(pts)
    K = torch.stack([_motion(name)[0] for name in MOTIONS])  # [9, 3, 3]
    T = torch.stack([_motion(name)[1] for name in MOTIONS])  # [9, 4, 4]
    hard = splat_footprints(pts, axes, None, None, K, T, GRID_H, GRID_W)
    banded = splat_footprints(pts, axes, None, None, K, T, GRID_H, GRID_W, surface_tolerance=0.05)
    same_frame = splat_footprints(pts, axes, torch.full((N,), 7), None, K, T, GRID_H, GRID_W, surface_tolerance=0.05)
    assert torch.equal(banded.index, hard.index) and torch.equal(same_frame.index, hard.index)
    # (the rule matters here: if every point were its own frame, the band would pick other points)
    per_point = splat_footprints(pts, axes, torch.arange(N), None, K, T, GRID_H, GRID_W, surface_tolerance=0.05)
    assert (per_point.index != hard.index).sum() > 10
