"""Analytic checks of the geometry core and the fast z-buffer against a per-point reference."""

import math

import pytest
import torch

from mirage.cameras import Camera, Cameras, intrinsics_from_fov, invert_rigid, look_at
from mirage.geometry import (
    downsample_depth,
    downsample_mask_any,
    pixel_centers,
    project_points,
    splat_zbuffer,
    surface_band_slack,
    transform_points,
    unproject_depth,
)


def reference_splat(points, features, K, cam_from_world, height, width, surface_tolerance=0.0):
    """Slow, obviously-correct z-buffer: every point in Python, closest depth, oldest within the band."""
    uv, z = project_points(points, K, cam_from_world)  # [V, N, 2], [V, N]
    V, N = z.shape
    index = torch.full((V, height, width), -1, dtype=torch.long)

    def cell(v, i):
        if not float(z[v, i]) > 1e-6:
            return None
        c, r = math.floor(float(uv[v, i, 0])), math.floor(float(uv[v, i, 1]))
        return (r, c) if 0 <= c < width and 0 <= r < height else None

    for v in range(V):
        zmin = torch.full((height, width), math.inf)
        for i in range(N):
            rc = cell(v, i)
            if rc is not None:
                zmin[rc] = min(float(zmin[rc]), float(z[v, i]))
        band = zmin * (1 + surface_tolerance)
        if surface_tolerance > 0:
            band = band + surface_band_slack(zmin[None])[0]
        for i in range(N):  # points are visited oldest first
            rc = cell(v, i)
            if rc is not None and z[v, i] <= band[rc] and index[v][rc] < 0:
                index[v][rc] = i
    feats = torch.zeros(V, features.shape[1], height, width, dtype=features.dtype)
    for v in range(V):
        m = index[v] >= 0
        feats[v][:, m] = features[index[v][m]].T
    return index, feats


def test_surface_band_slack_is_the_capped_neighbour_step():
    z = torch.tensor([[[4.0, 4.5, 6.0], [4.1, float("inf"), 6.0]]])
    slack = surface_band_slack(z)
    # 8-neighbourhoods; the infinite (empty) cell is ignored as a neighbour and gets no slack itself
    assert torch.allclose(slack[0, 0], torch.tensor([0.5, 1.125, 1.5]))  # 4.5-4; min(6-4.5, 0.25*4.5); min(6-4.5, 1.5)
    assert torch.allclose(slack[0, 1], torch.tensor([0.4, 0.0, 1.5]))  # 4.5-4.1 (diagonal); empty; 6-4.5 (diagonal)


def test_pixel_centers_are_half_integers():
    c = pixel_centers(2, 3)
    assert c.shape == (2, 3, 2)
    assert c[0, 0].tolist() == [0.5, 0.5]
    assert c[1, 2].tolist() == [2.5, 1.5]


def test_unproject_principal_point_and_corner():
    K = torch.tensor([[100.0, 0, 2.0], [0, 100.0, 1.0], [0, 0, 1]])  # principal point at the centre of cell (1, 0)
    depth = torch.full((2, 4), 3.0)
    pts = unproject_depth(depth, K, torch.eye(4))
    assert torch.allclose(pts[0, 1], torch.tensor([-0.5 / 100 * 3, -0.5 / 100 * 3, 3.0]))
    assert torch.allclose(pts[1, 2], torch.tensor([0.5 / 100 * 3, 0.5 / 100 * 3, 3.0]))


def test_project_unproject_round_trip_random_cameras():
    torch.manual_seed(0)
    K = intrinsics_from_fov(64, 48, 70.0)
    eye = torch.randn(3)
    cam_from_world = look_at(eye, eye + torch.tensor([0.3, -0.2, 1.0]))
    depth = 1 + 4 * torch.rand(48, 64)
    pts = unproject_depth(depth, K, invert_rigid(cam_from_world)).reshape(-1, 3)
    uv, z = project_points(pts, K[None], cam_from_world[None])
    assert torch.allclose(z[0], depth.reshape(-1), rtol=1e-5)
    assert torch.allclose(uv[0], pixel_centers(48, 64).reshape(-1, 2), atol=1e-3)


def test_one_unit_translation_at_unit_depth_shifts_by_focal():
    # kornia-style: unit depth, camera moved 1 unit along +x -> the point moves fx pixels left.
    K = torch.tensor([[10.0, 0, 50.0], [0, 10.0, 50.0], [0, 0, 1]])
    p = torch.tensor([[0.0, 0.0, 1.0]])
    moved = torch.eye(4)
    moved[0, 3] = -1.0  # cam_from_world of a camera centred at x = +1
    uv, _ = project_points(p, torch.stack([K, K]), torch.stack([torch.eye(4), moved]))
    assert uv[0, 0].tolist() == [50.0, 50.0]
    assert uv[1, 0].tolist() == [40.0, 50.0]


def test_transform_points_matches_matrix_product():
    T = look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 0.0]))
    p = torch.tensor([[0.5, -1.0, 2.0]])
    expected = (T @ torch.tensor([0.5, -1.0, 2.0, 1.0]))[:3]
    assert torch.allclose(transform_points(T, p)[0], expected)
    assert torch.allclose(transform_points(invert_rigid(T), transform_points(T, p)), p, atol=1e-6)


def test_closest_depth_wins_and_ties_go_to_lowest_index():
    K = torch.tensor([[[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]])
    pts = torch.tensor([[0, 0, 2.0], [0, 0, 1.0], [0, 0, 1.0], [0, 0, -1.0]])  # far, near, near tie, behind
    feats = torch.arange(4.0)[:, None]
    out = splat_zbuffer(pts, feats, K, torch.eye(4)[None], 10, 10)
    assert out.index[0, 5, 5] == 1 and out.features[0, 0, 5, 5] == 1.0 and out.depth[0, 5, 5] == 1.0
    assert int(out.mask.sum()) == 1 and torch.isnan(out.depth[0, 0, 0])
    # the oldest point inside the surface band wins over a slightly closer new one
    pts2 = torch.tensor([[0, 0, 1.02], [0, 0, 1.0]])
    assert splat_zbuffer(pts2, None, K, torch.eye(4)[None], 10, 10).index[0, 5, 5] == 1
    band = splat_zbuffer(pts2, None, K, torch.eye(4)[None], 10, 10, surface_tolerance=0.05)
    assert band.index[0, 5, 5] == 0 and abs(float(band.depth[0, 5, 5]) - 1.02) < 1e-6


@pytest.mark.parametrize("tol", [0.0, 0.05])
def test_fast_splat_equals_reference_with_ties(tol):
    torch.manual_seed(1)
    N = 400
    pts = torch.randn(N, 3) * torch.tensor([1.0, 0.7, 0.5]) + torch.tensor([0.0, 0.0, 3.0])
    pts[N // 2 :] = pts[: N // 2]  # exact duplicates: every depth is tied with another point
    pts[::7, 2] = -1.0  # some behind the camera
    feats = torch.randn(N, 5)
    K = intrinsics_from_fov(24, 16, 60.0).expand(3, 3, 3)
    T = torch.stack([torch.eye(4), look_at(torch.tensor([0.3, 0, 0]), torch.tensor([0, 0, 3.0])), look_at(torch.tensor([-0.5, 0.2, 0.5]), torch.tensor([0, 0, 3.0]))])
    fast = splat_zbuffer(pts, feats, K, T, 16, 24, surface_tolerance=tol)
    index, ref_feats = reference_splat(pts, feats, K, T, 16, 24, surface_tolerance=tol)
    assert int(fast.mask.sum()) > 100
    assert torch.equal(fast.index, index)
    assert torch.equal(fast.features, ref_feats)
    # chunking over views gives the same answer
    chunked = splat_zbuffer(pts, feats, K, T, 16, 24, surface_tolerance=tol, max_elements=N)
    assert torch.equal(chunked.index, fast.index)
    spanned = splat_zbuffer(pts, feats, K, T, 16, 24, surface_tolerance=tol, max_elements=9)  # spans of 9 points
    assert torch.equal(spanned.index, fast.index) and torch.equal(spanned.depth.nan_to_num(-1), fast.depth.nan_to_num(-1))


def test_splat_is_deterministic_across_point_permutations_of_equal_keys():
    # Same set of points, different storage order: the winner is always the lowest index.
    K = torch.tensor([[[4.0, 0, 2], [0, 4.0, 2], [0, 0, 1]]])
    pts = torch.tensor([[0, 0, 1.0]] * 5)
    out = splat_zbuffer(pts, None, K, torch.eye(4)[None], 4, 4)
    assert out.index[0, 2, 2] == 0


def test_splat_rejects_bad_shapes():
    K = torch.eye(3)[None]
    with pytest.raises(ValueError, match="points must be"):
        splat_zbuffer(torch.zeros(5, 2), None, K, torch.eye(4)[None], 4, 4)
    with pytest.raises(ValueError, match="features must be"):
        splat_zbuffer(torch.zeros(5, 3), torch.zeros(4, 2), K, torch.eye(4)[None], 4, 4)
    with pytest.raises(ValueError, match="cam_from_world"):
        splat_zbuffer(torch.zeros(5, 3), None, K, torch.eye(4)[None].repeat(2, 1, 1), 4, 4)


def test_downsample_depth_bilinear_centre_and_holes():
    d = torch.arange(32.0).repeat(32, 1) + 1  # depth = column + 1
    out = downsample_depth(d, 16)
    # cell centre at pixel coordinate 16*i + 8 -> bilinear between columns 16i+7 and 16i+8 (values +1)
    assert torch.allclose(out, torch.tensor([[8.5, 24.5], [8.5, 24.5]]))
    d[:, 8] = float("nan")  # one of the two sampled columns becomes a hole: never blended in
    assert torch.allclose(downsample_depth(d, 16)[:, 0], torch.tensor([8.0, 8.0]))
    d[:, 7] = 0.0  # both sampled neighbours invalid -> the cell is a hole
    assert torch.isnan(downsample_depth(d, 16)[:, 0]).all()
    with pytest.raises(ValueError, match="not divisible"):
        downsample_depth(torch.ones(30, 32), 16)


def test_downsample_mask_any():
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[1, 17, 3] = True
    out = downsample_mask_any(m, 16)
    assert out.shape == (2, 2, 2) and out.sum() == 1 and out[1, 1, 0]


def test_rescaled_intrinsics_keep_cell_centres():
    cam = Camera.from_fov(1280, 704, 60.0)
    lat = cam.rescaled(80, 44)
    # the centre of latent cell (i, j) is pixel coordinate 16*(i + 1/2): both see the same ray
    p = unproject_depth(torch.ones(44, 80), lat.K, torch.eye(4))[10, 20]
    uv, _ = project_points(p[None], cam.K[None], torch.eye(4)[None])
    assert torch.allclose(uv[0, 0], torch.tensor([16 * 20.5, 16 * 10.5]), atol=1e-3)


def test_cameras_reject_singular_and_bad_intrinsics():
    with pytest.raises(ValueError, match="not a rigid transform"):
        Cameras(torch.eye(3)[None], torch.zeros(1, 4, 4), 8, 8)
    bad_K = torch.eye(3)
    bad_K[0, 0] = 0.0
    with pytest.raises(ValueError, match="positive focal"):
        Camera(bad_K, torch.eye(4), 8, 8)
    with pytest.raises(ValueError, match="non-finite"):
        Camera(torch.full((3, 3), float("nan")), torch.eye(4), 8, 8)
    with pytest.raises(ValueError, match="trailing shape"):
        Cameras(torch.eye(3)[None], torch.eye(3)[None], 8, 8)
