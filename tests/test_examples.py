"""Tests for mirage.examples (Middlebury conversion, registry) and mirage.synthetic (exact renderer).

The warps here are written out in plain torch (K @ (R p + t)) on purpose, independent of
mirage.geometry, so that they check the cameras and depth themselves.
"""

from __future__ import annotations

import math

import pytest
import torch

from mirage.cameras import Camera, Cameras, look_at
from mirage.examples import (
    EXAMPLES,
    MOTORCYCLE_BASELINE_M,
    MOTORCYCLE_DOFFS_PX,
    SYNTHETIC_ROOM_SIZE,
    crop_to_multiple,
    load_example,
    load_middlebury_motorcycle,
)
from mirage.synthetic import Box, Sphere, SyntheticScene, default_camera, default_scene


# ---------------------------------------------------------------------------- reference math
def unproject(depth, K, world_from_cam):  # depth [H, W], K [3, 3], world_from_cam [4, 4] -> [H, W, 3] world
    H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u)], -1)  # [H, W, 3] pixel centres
    cam = (pix @ torch.linalg.inv(K.double()).T) * depth.double()[..., None]  # [H, W, 3] camera points
    T = world_from_cam.double()
    return cam @ T[:3, :3].T + T[:3, 3]


def project(points, K, cam_from_world):  # points [..., 3] world -> uv [..., 2], z [...]
    T = cam_from_world.double()
    cam = points.double() @ T[:3, :3].T + T[:3, 3]  # [..., 3]
    uvw = cam @ K.double().T  # [..., 3]
    return uvw[..., :2] / uvw[..., 2:], cam[..., 2]


def sample_nearest(image, uv):  # image [C, H, W], uv [N, 2] continuous -> values [C, N], inside [N]
    C, H, W = image.shape
    ij = torch.floor(uv).long()  # [N, 2] pixel containing the point
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)
    ij = ij.clamp(min=0)
    ij[:, 0].clamp_(max=W - 1)
    ij[:, 1].clamp_(max=H - 1)
    return image[:, ij[:, 1], ij[:, 0]], inside


@pytest.fixture(scope="module")
def moto():
    return load_middlebury_motorcycle()


# ---------------------------------------------------------------------------- Middlebury
def test_motorcycle_shapes_and_depth_range(moto):
    assert moto.left.shape == moto.right.shape == (3, 500, 741)
    assert moto.left.dtype == torch.float32 and -1 <= moto.left.min() and moto.left.max() <= 1
    assert moto.depth_left.shape == (500, 741)
    valid = torch.isfinite(moto.depth_left)
    assert torch.equal(valid, torch.isfinite(moto.disparity_left))
    assert 0.85 < valid.float().mean() < 0.99  # Middlebury leaves a few % without ground truth
    d = moto.depth_left[valid]
    # disparities 7..60 px -> Z = 0.193 * 995 / (d + 31) = 2.1 .. 5.0 m
    assert 2.0 < float(d.min()) and float(d.max()) < 5.2 and 2.3 < float(d.median()) < 3.5
    # Z = B f / (d + doffs) at one pixel, by hand
    i, j = 250, 370
    expected = MOTORCYCLE_BASELINE_M * 994.978 / (float(moto.disparity_left[i, j]) + 31.086)
    assert math.isclose(float(moto.depth_left[i, j]), expected, rel_tol=1e-6)
    # cameras: identity left, right centre at +baseline along x, cx offset by doffs, +1/2 convention
    assert torch.equal(moto.camera_left.cam_from_world, torch.eye(4))
    torch.testing.assert_close(moto.camera_right.center, torch.tensor([MOTORCYCLE_BASELINE_M, 0.0, 0.0]))
    assert math.isclose(float(moto.camera_left.K[0, 2]), 311.193 + 0.5, abs_tol=1e-4)
    assert math.isclose(float(moto.camera_left.K[1, 2]), 254.877 + 0.5, abs_tol=1e-4)
    assert math.isclose(float(moto.camera_right.K[0, 2] - moto.camera_left.K[0, 2]), MOTORCYCLE_DOFFS_PX, abs_tol=1e-4)


def check_warp_reproduces_disparity(example):
    valid = torch.isfinite(example.depth_left)
    points = unproject(example.depth_left, example.camera_left.K, example.camera_left.world_from_cam)  # [H, W, 3]
    uv, z = project(points[valid], example.camera_right.K, example.camera_right.cam_from_world)  # [N, 2], [N]
    v, u = valid.nonzero(as_tuple=True)
    expected_x = u.double() + 0.5 - example.disparity_left[valid].double()  # x_right = x_left - d (pixel centres)
    assert (uv[:, 0] - expected_x).abs().max() < 0.01
    assert (uv[:, 1] - (v.double() + 0.5)).abs().max() < 1e-3  # rectified: same row
    assert (z > 0).all()


def test_motorcycle_left_to_right_warp_reproduces_disparity(moto):
    check_warp_reproduces_disparity(moto)


def test_motorcycle_warp_matches_real_right_image(moto):
    valid = torch.isfinite(moto.depth_left)
    points = unproject(moto.depth_left, moto.camera_left.K, moto.camera_left.world_from_cam)[valid]  # [N, 3]
    uv, _ = project(points, moto.camera_right.K, moto.camera_right.cam_from_world)  # [N, 2]
    right_at_match, inside = sample_nearest(moto.right, uv)  # [3, N] backward warp, nearest
    left_vals = moto.left[:, valid]  # [3, N]
    right_same_pixel = moto.right[:, valid]  # [3, N] no warp
    warped_err = (left_vals - right_at_match).abs()[:, inside].mean()
    unwarped_err = (left_vals - right_same_pixel).abs()[:, inside].mean()
    assert inside.float().mean() > 0.95
    assert warped_err < 0.4 * unwarped_err, (float(warped_err), float(unwarped_err))
    assert warped_err < 0.1  # about 8 grey levels of 255


def test_crop_to_multiple_keeps_geometry(moto):
    crop = crop_to_multiple(moto, 16)
    assert crop.left.shape == crop.right.shape == (3, 496, 736) and crop.depth_left.shape == (496, 736)
    assert (crop.camera_left.width, crop.camera_left.height) == (736, 496)
    top, left = 2, 2  # (500 - 496) / 2, (741 - 736) // 2
    torch.testing.assert_close(crop.depth_left, moto.depth_left[top : top + 496, left : left + 736], equal_nan=True)
    torch.testing.assert_close(crop.right, moto.right[:, top : top + 496, left : left + 736])
    # the same pixel content unprojects to the same 3D point with the cropped intrinsics
    p_crop = unproject(crop.depth_left, crop.camera_left.K, crop.camera_left.world_from_cam)
    p_full = unproject(moto.depth_left, moto.camera_left.K, moto.camera_left.world_from_cam)  # [500, 741, 3]
    p_full = p_full[top : top + 496, left : left + 736]  # [496, 736, 3] same crop
    ok = torch.isfinite(crop.depth_left)
    assert (p_crop[ok] - p_full[ok]).abs().max() < 1e-4
    check_warp_reproduces_disparity(crop)  # right camera cropped consistently
    crop32 = crop_to_multiple(moto, 32)
    assert crop32.depth_left.shape == (480, 736)
    with pytest.raises(ValueError, match="multiple"):
        crop_to_multiple(moto, 0)


# ---------------------------------------------------------------------------- registry
def test_examples_registry_loads():
    names = [s.name for s in EXAMPLES]
    assert len(set(names)) == len(names) and {"motorcycle", "synthetic-room"} <= set(names)
    for scene in EXAMPLES:
        image, depth, camera = load_example(scene.name)
        H, W = image.shape[1:]
        assert image.shape == (3, H, W) and image.dtype == torch.float32 and (W, H) == scene.size
        assert -1 <= image.min() and image.max() <= 1 and image.std() > 0.1
        assert (camera.width, camera.height) == (W, H) and torch.equal(camera.cam_from_world, torch.eye(4))
        assert H % 32 == 0 and W % 32 == 0
        assert (depth is None) == (scene.depth is None)
        if depth is not None:
            assert depth.shape == (H, W) and depth.dtype == torch.float32
            assert torch.isfinite(depth).float().mean() > 0.85 and (depth[torch.isfinite(depth)] > 0).all()
        assert scene.credit
    with pytest.raises(ValueError, match="nope"):
        load_example("nope")


def test_motorcycle_asset_is_the_cropped_pair(moto):
    image, depth, camera = load_example("motorcycle")
    crop = crop_to_multiple(moto, 32)
    torch.testing.assert_close(image, crop.left, atol=1e-6, rtol=0)  # lossless PNG of uint8 data
    torch.testing.assert_close(depth, crop.depth_left, equal_nan=True)
    torch.testing.assert_close(camera.K, crop.camera_left.K)


def test_synthetic_asset_is_the_default_render():
    image, depth, camera = load_example("synthetic-room")
    cam = default_camera(*SYNTHETIC_ROOM_SIZE, 60.0)
    torch.testing.assert_close(camera.K, cam.K)
    rgb, ref_depth = default_scene().render(cam)
    assert ((image - rgb[0]).abs() <= 1.01 / 255).all(dim=0).float().mean() > 0.999
    assert torch.isfinite(depth).all()
    # float32 ray casting is not bit-reproducible across CPUs (FMA, vector widths): the stored asset and a
    # fresh render agree to 3e-5 relative at the room's 2-4 m
    torch.testing.assert_close(depth, ref_depth[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- synthetic renderer
def test_render_shapes_range_and_finite_depth():
    side = look_at(torch.tensor([0.5, 0.3, 1.0]), torch.tensor([-2.0, 1.0, -1.0]))  # [4, 4]
    cams = Cameras.cat([default_camera(64, 40).batch(), Camera.from_fov(64, 40, 90.0, side).batch()])
    rgb, depth = default_scene().render(cams)
    assert rgb.shape == (2, 3, 40, 64) and depth.shape == (2, 40, 64)
    assert rgb.min() >= -1 and rgb.max() <= 1 and torch.isfinite(depth).all() and (depth > 0).all()
    assert not torch.allclose(rgb[0], rgb[1])  # different views look different


def test_fronto_parallel_back_wall_depth_is_camera_z():
    room = SyntheticScene()  # empty room; back wall at z = 6
    eye = torch.tensor([0.3, -0.2, 1.0])
    cam = Camera.from_fov(64, 40, 30.0, look_at(eye, eye + torch.tensor([0.0, 0.0, 1.0])))  # sees only the back wall
    rgb, depth = room.render(cam)
    torch.testing.assert_close(depth[0], torch.full((40, 64), 5.0), atol=1e-5, rtol=0)
    # camera z, not ray length: corner and centre pixels agree although the corner ray is longer
    K = cam.K.double()
    corner_ray = torch.linalg.inv(K) @ torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    assert float(corner_ray.norm()) > 1.03  # its ray length would be > 5.15 m
    assert float(depth[0, 0, 0]) == pytest.approx(float(depth[0, 20, 32]), abs=1e-5)


def test_pixel_centres_give_mirror_symmetric_depth():
    room = SyntheticScene()  # symmetric in x about 0
    rgb, depth = room.render(Camera.from_fov(64, 40, 100.0))  # identity pose at x = 0, centred cx
    torch.testing.assert_close(depth, depth.flip(-1), atol=1e-5, rtol=1e-6)


def sdf(points, scene):  # points [N, 3] -> distance to the nearest surface (inside the room), [N]
    lo, hi = torch.tensor(scene.room_min, dtype=points.dtype), torch.tensor(scene.room_max, dtype=points.dtype)
    dist = torch.minimum(points - lo, hi - points).amin(-1)  # distance to the walls from inside
    for s in scene.spheres:
        dist = torch.minimum(dist, (points - torch.tensor(s.center, dtype=points.dtype)).norm(dim=-1) - s.radius)
    for b in scene.boxes:
        blo, bhi = torch.tensor(b.lo, dtype=points.dtype), torch.tensor(b.hi, dtype=points.dtype)
        q = torch.maximum(blo - points, points - bhi)  # [N, 3] per-axis outside distance
        dist = torch.minimum(dist, q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0))
    return dist


STACKED = SyntheticScene(  # objects along the view axis, each listed before the ones it hides
    spheres=(Sphere((0.0, 0.0, 2.0), 0.3, (1.0, 0.2, 0.2)), Sphere((0.3, 0.1, 3.0), 0.6, (0.2, 1.0, 0.2))),
    boxes=(
        Box((-0.4, -0.4, 4.0), (0.8, 0.5, 4.5), (0.2, 0.2, 1.0)),
        Box((-1.0, -1.0, 5.0), (1.0, 1.0, 5.5), (1.0, 1.0, 0.2)),
    ),
)


@pytest.mark.parametrize("scene", [default_scene(), STACKED], ids=["default", "stacked"])
def test_render_matches_sphere_tracing_reference(scene):
    eyes = torch.tensor([[0.0, 0.0, 0.0], [-1.5, 0.8, 1.0], [1.8, -0.9, 5.5]])
    targets = torch.tensor([[0.0, 0.5, 4.0], [1.0, 1.2, 4.0], [-1.0, 0.5, 0.0]])
    cams = Cameras(default_camera(48, 32, 75.0).K.expand(3, 3, 3), look_at(eyes, targets), 48, 32)
    _, depth = scene.render(cams)
    for i in range(3):
        cam = cams.camera(i)
        ray_ends = unproject(torch.ones(32, 48), cam.K, cam.world_from_cam).reshape(-1, 3)  # z = 1 points
        origin = cam.center.double()
        dirs = ray_ends - origin  # [N, 3] camera-z-normalised directions
        unit = dirs / dirs.norm(dim=-1, keepdim=True)
        s = torch.zeros(dirs.shape[0], dtype=torch.float64)  # distance along the ray
        for _ in range(400):
            s = s + sdf(origin + s[:, None] * unit, scene)
        converged = sdf(origin + s[:, None] * unit, scene).abs() < 1e-6
        ref = (s / dirs.norm(dim=-1)).reshape(32, 48)  # ray length -> camera z
        assert converged.float().mean() > 0.97
        err = (depth[i].double() - ref).abs()[converged.reshape(32, 48)]
        assert (err < 1e-3).float().mean() > 0.995, float(err.max())


def test_render_reprojection_consistency():
    scene = default_scene()
    eyes = torch.tensor([[0.0, 0.0, 0.0], [0.6, -0.2, 0.8]])
    targets = torch.tensor([[0.0, 0.4, 4.0], [-0.3, 0.5, 4.5]])
    cams = Cameras(default_camera(128, 80).K.expand(2, 3, 3), look_at(eyes, targets), 128, 80)
    rgb, depth = scene.render(cams)
    a, b = cams.camera(0), cams.camera(1)
    points = unproject(depth[0], a.K, a.world_from_cam).reshape(-1, 3)  # [N, 3]
    uv, z = project(points, b.K, b.cam_from_world)  # [N, 2], [N]
    colors_b, inside = sample_nearest(rgb[1], uv)  # [3, N]
    depth_b, _ = sample_nearest(depth[1][None], uv)  # [1, N]
    visible = inside & ((depth_b[0] - z).abs() < 0.02 * z)  # not occluded in view b
    assert visible.float().mean() > 0.5
    diff = (rgb[0].reshape(3, -1) - colors_b).abs().amax(0)[visible]  # [M]
    assert (diff < 0.02).float().mean() > 0.85
    # and the same check with the wrong camera (no motion) fails: the test can tell
    uv_wrong, _ = project(points, a.K, a.cam_from_world)
    colors_wrong, _ = sample_nearest(rgb[1], uv_wrong)
    assert ((rgb[0].reshape(3, -1) - colors_wrong).abs().amax(0) < 0.02).float().mean() < 0.6


def test_render_rejects_cameras_outside_the_room_or_inside_objects():
    scene = SyntheticScene(
        spheres=(Sphere((0.0, 0.0, 3.0), 0.5, (1.0, 0.0, 0.0)),),
        boxes=(Box((1.0, 0.0, 1.0), (2.0, 1.0, 2.0), (0.0, 1.0, 0.0)),),
    )
    for eye in ([0.0, 0.0, -3.0], [0.0, 0.1, 3.0], [1.5, 0.5, 1.5]):
        with pytest.raises(ValueError, match="centre"):
            scene.render(Camera.from_fov(16, 16, 60.0, look_at(torch.tensor(eye), torch.tensor([0.0, 0.0, 5.9]))))
    with pytest.raises(ValueError, match="inside the room"):
        SyntheticScene(spheres=(Sphere((0.0, 0.0, 5.8), 0.5, (1.0, 0.0, 0.0)),))
