"""Camera paths: analytic preset checks, keyframes, strokes, resampling, bounds."""

import math
import re

import numpy as np
import pytest
import torch

from mirage.cameras import Camera, Cameras, look_at
from mirage.frames import check_num_frames
from mirage.paths import (
    KEYFRAME_COLUMNS,
    MAX_KEYFRAMES,
    MAX_PATH_DISTANCE,
    PRESETS,
    CameraPath,
    Keyframe,
    anchored_path,
    interpolate_keyframes,
    keyframe_path,
    keyframe_camera,
    keyframe_table_rows,
    keyframes_from_cameras,
    keyframes_from_table,
    make_preset_path,
    path_bounds_check,
    path_from_points,
    resample_path,
)

W, H, D = 64, 48, 2.0


def identity_source() -> Camera:
    return Camera.from_fov(W, H, 60.0)


def tilted_source() -> Camera:
    """A source with a non-trivial rotation and translation."""
    eye, target = torch.tensor([0.3, -0.2, -1.0]), torch.tensor([0.5, 0.1, 1.0])
    return Camera.from_fov(W, H, 60.0, look_at(eye, target))


def rel(cams: Cameras, source: Camera) -> torch.Tensor:  # -> [T, 4, 4] src_from_new in float64
    """Pose of every path camera in the source camera's frame."""
    return source.cam_from_world.double() @ cams.world_from_cam.double()


def forward(cams: Cameras) -> torch.Tensor:  # -> [T, 3] optical axes in world coordinates
    return cams.world_from_cam[:, :3, 2].double()


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [..., 3] unit vectors -> [...]
    return torch.rad2deg(torch.arccos((a * b).sum(-1).clamp(-1, 1)))


def ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


# ----------------------------------------------------------------------------- frame counts
@pytest.mark.parametrize("bad", [0, 1, 4, 6, 32, 34, -3, 33.0, True, "33"])
def test_frame_count_rejected_everywhere(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        check_num_frames(bad, min_latent_frames=2)
    with pytest.raises(ValueError, match="4N\\+1"):
        make_preset_path("pan_left", identity_source(), num_frames=bad)
    kfs = [Keyframe((0, 0, 0)), Keyframe((0, 0, 1))]
    with pytest.raises(ValueError, match="4N\\+1"):
        interpolate_keyframes(kfs, bad, W, H)
    with pytest.raises(ValueError, match="4N\\+1"):
        path_from_points(identity_source(), torch.tensor([[0.0, 0.0, 1.0]]), bad)
    with pytest.raises(ValueError, match="4N\\+1"):
        resample_path(make_preset_path("pan_left", identity_source(), 9), bad)


@pytest.mark.parametrize("T", [5, 9, 33, 65, 97])
def test_frame_counts_accepted(T):
    assert check_num_frames(T, min_latent_frames=2) == T
    assert len(make_preset_path("orbit_left", identity_source(), T)) == T


# ----------------------------------------------------------------------------- presets: generic
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_starts_at_source_and_is_relative_to_it(preset):
    src = tilted_source()
    cams = make_preset_path(preset, src, 33, scene_depth=D)
    assert len(cams) == 33 and (cams.width, cams.height) == (W, H)
    assert torch.equal(cams.K[0], src.K) and torch.equal(cams.cam_from_world[0], src.cam_from_world)
    R = cams.cam_from_world[:, :3, :3].double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(33, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(33, dtype=torch.float64), atol=1e-5)
    # The same motion from an identity source, composed with the source pose.
    ref = make_preset_path(preset, identity_source(), 33, scene_depth=D)
    expected = ref.cam_from_world.double() @ src.cam_from_world.double()
    assert torch.allclose(cams.cam_from_world.double(), expected, atol=1e-5)
    assert torch.equal(cams.K, ref.K)
    # Smooth: no step between consecutive frames larger than 1.6x the mean step (cosine ease peaks at pi/2).
    steps = (cams.centers[1:] - cams.centers[:-1]).norm(dim=-1)
    assert steps.max() <= 1.6 * steps.mean() + 1e-6
    assert steps[0] < 0.1 * steps.max() + 1e-6  # eases in


def test_preset_argument_errors():
    src = identity_source()
    with pytest.raises(ValueError, match="'spin'"):
        make_preset_path("spin", src)
    for depth in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scene_depth"):
            make_preset_path("orbit_left", src, scene_depth=depth)
    with pytest.raises(ValueError, match="-5"):
        make_preset_path("pan_left", src, amount=-5)
    with pytest.raises(ValueError, match="0.5"):
        make_preset_path("zoom_in", src, amount=0.5)
    with pytest.raises(TypeError, match="Camera"):
        make_preset_path("pan_left", src.batch())


# Each preset's accepted amounts [min, max], as documented beside PRESETS.
AMOUNT_BOUNDS = {
    "orbit_left": (0, 360), "orbit_right": (0, 360), "pan_left": (0, 360), "pan_right": (0, 360),
    "pan_up": (0, 90), "pan_down": (0, 90), "dolly_in": (0, 1), "dolly_out": (0, 10), "zoom_in": (1, 10),
    "zoom_out": (1, 10), "truck_left": (0, 10), "truck_right": (0, 10), "pedestal_up": (0, 10),
    "pedestal_down": (0, 10), "look_around": (0, 180), "detour_revisit": (0, 180),
}  # fmt: skip


def test_preset_bounds_are_the_documented_ones():
    assert {p: (i.min, i.max) for p, i in PRESETS.items()} == AMOUNT_BOUNDS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_amount_outside_its_bounds_refused(preset):
    src, (low, high), unit = identity_source(), AMOUNT_BOUNDS[preset], PRESETS[preset].unit
    for bad in (high * 1.001, low - 0.001, -high, float("nan"), float("inf"), float("-inf")):
        expected = rf"amount for '{preset}' must be finite and in \[{low}, {high}\] \({unit}\), got {bad!r}"
        with pytest.raises(ValueError, match=expected.replace("(>= 1)", r"\(>= 1\)")):
            make_preset_path(preset, src, 9, amount=bad, scene_depth=D)
    for bad in ("abc", [1.0], True, {"a": 1}):
        with pytest.raises(ValueError, match=rf"amount for '{preset}' must be a number in \[{low}, {high}\]"):
            make_preset_path(preset, src, 9, amount=bad, scene_depth=D)


def test_preset_amount_refusals_say_why():
    src = identity_source()
    cases = [
        ("dolly_in", 2.0, r"\[0, 1\] \(fraction of the scene depth\), got 2.0: at 1 the camera reaches the scene at its "
                          r"median depth; past it the camera would go through the scene$"),
        ("pan_up", 91, r"got 91: at 90 degrees the camera looks straight up; past it the view turns upside down$"),
        ("orbit_left", -5, r"got -5: amounts are magnitudes; for the other direction use 'orbit_right'$"),
        ("dolly_out", -0.1, r"got -0.1: amounts are magnitudes; for the other direction use 'dolly_in'$"),
        ("zoom_in", 0.5, r"got 0.5: zoom factors are at least 1; for the other direction use 'zoom_out'$"),
        ("look_around", -1, r"got -1: amounts are magnitudes$"),
        ("truck_left", float("nan"), r"got nan$"),
    ]  # fmt: skip
    for preset, amount, message in cases:
        with pytest.raises(ValueError, match=rf"^amount for '{preset}' must be finite and in .*{message}"):
            make_preset_path(preset, src, 9, amount=amount, scene_depth=D)


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"dolly_in"}))
def test_preset_amount_at_its_bounds_accepted(preset):
    src, (low, high) = tilted_source(), AMOUNT_BOUNDS[preset]
    # An orbit circles the point at the median depth: past ~84 degrees it crosses the median plane
    # (z = D (1 - cos a) >= 0.9 D), so a full orbit needs a depth map showing the background far behind.
    far = torch.full((H, W), 10.0) if preset.startswith("orbit") else None  # [H, W] metres
    for amount in (low, high):
        cams = make_preset_path(preset, src, 9, amount=amount, scene_depth=D, depth=far)
        assert torch.equal(cams.cam_from_world[0], src.cam_from_world)
    if preset.startswith("orbit"):
        with pytest.raises(ValueError, match=r"scene depth 2 m\): the camera would go through the scene"):
            make_preset_path(preset, src, 9, amount=high, scene_depth=D)
    if preset in ("dolly_out", "truck_left", "pedestal_down"):  # 10 scene depths away, within the 20x bound
        assert float((cams.centers[-1] - src.center).norm()) == pytest.approx(10 * D, rel=1e-6)
    if preset == "zoom_in":
        assert float(cams.K[-1, 0, 0] / src.K[0, 0]) == pytest.approx(10.0, rel=1e-6)


def test_dolly_in_up_to_the_surface_is_left_to_the_bounds_check():
    src = identity_source()
    with pytest.raises(ValueError, match="the camera would go through the scene"):  # within [0, 1], but at the surface
        make_preset_path("dolly_in", src, 9, amount=1.0, scene_depth=D)
    assert len(make_preset_path("dolly_in", src, 9, amount=0.89, scene_depth=D)) == 9


# ----------------------------------------------------------------------------- presets: analytic
@pytest.mark.parametrize("preset", ["orbit_left", "orbit_right"])
def test_orbit_keeps_target_centred_at_constant_distance(preset):
    src, amount = tilted_source(), 30.0
    cams = make_preset_path(preset, src, 33, amount=amount, scene_depth=D)
    target = src.center.double() + D * src.world_from_cam[:3, 2].double()  # [3] world
    assert torch.allclose((cams.centers.double() - target).norm(dim=-1), torch.full((33,), D, dtype=torch.float64), atol=1e-5)
    in_cam = (cams.cam_from_world.double() @ torch.cat([target, torch.ones(1, dtype=torch.float64)]))[:, :3]  # [T, 3]
    assert torch.allclose(in_cam, torch.tensor([0.0, 0.0, D], dtype=torch.float64).expand(33, 3), atol=1e-5)
    assert angle_deg(forward(cams)[-1], forward(cams)[0]) == pytest.approx(amount, abs=1e-3)
    x_last = rel(cams, src)[-1, 0, 3]  # sideways displacement in the source frame
    sign = -1 if preset == "orbit_left" else 1
    assert x_last == pytest.approx(sign * D * math.sin(math.radians(amount)), abs=1e-5)


@pytest.mark.parametrize("preset,axis,sign", [("pan_left", 0, -1), ("pan_right", 0, 1), ("pan_up", 1, -1), ("pan_down", 1, 1)])
def test_pan_rotates_about_the_centre(preset, axis, sign):
    src, amount = tilted_source(), 25.0
    cams = make_preset_path(preset, src, 33, amount=amount)
    assert torch.allclose(cams.centers, src.center.expand(33, 3), atol=1e-5)
    f_last = rel(cams, src)[-1, :3, 2]  # new optical axis in source coordinates
    assert float(f_last[axis]) == pytest.approx(sign * math.sin(math.radians(amount)), abs=1e-5)
    assert float(f_last[2]) == pytest.approx(math.cos(math.radians(amount)), abs=1e-5)
    assert torch.equal(cams.K, src.K.expand(33, 3, 3))


@pytest.mark.parametrize("preset,factor", [("zoom_in", 1.5), ("zoom_out", 1 / 1.5)])
def test_zoom_scales_focal_only(preset, factor):
    src = tilted_source()
    cams = make_preset_path(preset, src, 33, amount=1.5)
    assert torch.equal(cams.cam_from_world, src.cam_from_world.expand(33, 4, 4))
    scale = cams.K[:, 0, 0] / src.K[0, 0]
    assert float(scale[-1]) == pytest.approx(factor, rel=1e-6)
    assert torch.allclose(cams.K[:, 1, 1] / src.K[1, 1], scale)
    assert torch.equal(cams.K[:, :2, 2], src.K[:2, 2].expand(33, 2))
    assert bool(((scale[1:] - scale[:-1]) * (1 if factor > 1 else -1) > 0).all())  # monotone
    assert float(scale[16]) == pytest.approx(1.5 ** (0.5 if factor > 1 else -0.5), rel=1e-6)  # log-linear, eased


@pytest.mark.parametrize(
    "preset,direction",
    [("dolly_in", (0, 0, 1)), ("dolly_out", (0, 0, -1)), ("truck_left", (-1, 0, 0)), ("truck_right", (1, 0, 0)),
     ("pedestal_up", (0, -1, 0)), ("pedestal_down", (0, 1, 0))],
)  # fmt: skip
def test_translations_move_by_amount_times_depth_along_the_source_axes(preset, direction):
    src, amount = tilted_source(), 0.4
    cams = make_preset_path(preset, src, 33, amount=amount, scene_depth=D)
    moved = rel(cams, src)  # [T, 4, 4]
    t = torch.linspace(0, 1, 33, dtype=torch.float64)
    expected = (0.5 - 0.5 * torch.cos(math.pi * t))[:, None] * amount * D * torch.tensor(direction, dtype=torch.float64)
    assert torch.allclose(moved[:, :3, 3], expected, atol=1e-5)
    assert torch.allclose(moved[:, :3, :3], torch.eye(3, dtype=torch.float64).expand(33, 3, 3), atol=1e-6)


def test_loops_end_exactly_at_start_and_detour_goes_far():
    src, amount = tilted_source(), 60.0
    detour = make_preset_path("detour_revisit", src, 33, amount=amount, scene_depth=D)
    look = make_preset_path("look_around", src, 33, amount=20.0)
    for cams in (detour, look):
        assert torch.equal(cams.cam_from_world[-1], src.cam_from_world)
        assert torch.equal(cams.K[-1], src.K)
    mid = rel(detour, src)[16]
    assert float(mid[:3, 3].norm()) == pytest.approx(0.5 * D, abs=1e-5)  # half the scene depth to the right
    assert float(mid[0, 3]) == pytest.approx(0.5 * D, abs=1e-5)
    assert float(angle_deg(forward(detour)[16], forward(detour)[0])) == pytest.approx(amount, abs=1e-3)
    # Out ahead of the start (z > 0), back behind it (z < 0): a different route.
    z = rel(detour, src)[:, 2, 3]
    assert bool((z[1:16] > 0).all()) and bool((z[17:-1] < 0).all())
    # look_around stays in place and reaches the full yaw amplitude.
    assert torch.allclose(look.centers, src.center.expand(33, 3), atol=1e-5)
    assert float(angle_deg(forward(look), forward(look)[0]).max()) > 19.0


def test_path_bounds_check_names_the_frame():
    src = tilted_source()
    with pytest.raises(ValueError, match=r"frame \d+ .*scene depth 2"):
        make_preset_path("dolly_in", src, 33, amount=0.95, scene_depth=D)
    cams = make_preset_path("dolly_in", src, 33, amount=0.85, scene_depth=D)  # within the 10% margin
    path_bounds_check(cams, scene_depth=D)
    first = next(i for i in range(33) if 1.7 * ease(i / 32) >= 0.9 * 1.5)  # first frame past 90% of 1.5 m
    with pytest.raises(ValueError, match=f"frame {first} of the path is {1.7 * ease(first / 32):.4g} m"):
        path_bounds_check(cams, scene_depth=1.5)
    with pytest.raises(ValueError, match="scene_depth"):
        path_bounds_check(cams, scene_depth=float("nan"))


def box_depth(inside: float) -> torch.Tensor:  # -> [H, W] metres
    """A fronto-parallel plane at 2 m with a 16 x 16 box at ``inside`` metres in the image centre
    (rows 16..31, columns 24..39; 256 of 3072 pixels, so the median stays 2 m)."""
    depth = torch.full((H, W), 2.0)
    depth[16:32, 24:40] = inside
    return depth


def cameras_at(*centres) -> Cameras:
    """Cameras with the source's intrinsics and orientation (identity) at the given world centres."""
    T = torch.eye(4).repeat(len(centres), 1, 1)  # [N, 4, 4]
    T[:, :3, 3] = -torch.tensor(centres, dtype=torch.float32)  # t = -R c with R = I
    return Cameras(identity_source().K, T, W, H)


def test_bounds_check_judges_the_surface_the_camera_crosses():
    src, box = identity_source(), box_depth(1.0)
    assert float(box.median()) == D
    cams = make_preset_path("dolly_in", src, 33, amount=0.475, scene_depth=D)  # ends at z = 0.95 m
    assert float(cams.centers[-1, 2]) == pytest.approx(0.95, abs=1e-6)
    path_bounds_check(cams, scene_depth=D)  # the median rule: 0.95 m < 0.9 x 2 m
    first = next(i for i in range(33) if 0.95 * ease(i / 32) >= 0.9)  # first frame at 90% of the box's 1 m
    message = (
        rf"frame {first} of the path is {0.95 * ease(first / 32):.4g} m along the first camera's optical axis, "
        r"at or past 0.9 m \(90% of the nearest surface the first camera sees around pixel \(32, 24\), 1 m\): "
        r"the camera would go through the scene"
    )
    with pytest.raises(ValueError, match=message):
        path_bounds_check(cams, scene_depth=D, depth=box)
    with pytest.raises(ValueError, match=message):  # the preset passes its depth map through
        make_preset_path("dolly_in", src, 33, amount=0.475, scene_depth=D, depth=box)
    with pytest.raises(ValueError, match=message):  # numpy depth maps too
        path_bounds_check(cams, scene_depth=D, depth=box.numpy())
    short = make_preset_path("dolly_in", src, 33, amount=0.425, scene_depth=D, depth=box)  # ends at 0.85 m
    assert float(short.centers[-1, 2]) == pytest.approx(0.85, abs=1e-6)
    # Before a far surface the depth map allows more than the median rule: 1.85 m < 0.9 x 3 m.
    far = make_preset_path("dolly_in", src, 9, amount=0.925, scene_depth=D, depth=box_depth(3.0))
    assert float(far.centers[-1, 2]) == pytest.approx(1.85, abs=1e-6)
    with pytest.raises(ValueError, match=r"scene depth 2 m\)"):
        path_bounds_check(far, scene_depth=D)


def test_bounds_check_window_is_five_pixels_wide_at_this_size():
    fx = float(identity_source().K[0, 0])
    x_at = lambda u: (u + 0.5 - 32) * 0.95 / fx  # noqa: E731  centre at z = 0.95 m projecting to column u
    box = box_depth(1.0)  # the box starts at column 24: a 5 x 5 window reaches it from column 22
    with pytest.raises(ValueError, match=r"around pixel \(22, 24\), 1 m"):
        path_bounds_check(cameras_at((0, 0, 0), (x_at(22), 0, 0.95)), scene_depth=D, depth=box)
    path_bounds_check(cameras_at((0, 0, 0), (x_at(21), 0, 0.95)), scene_depth=D, depth=box)  # sees 2 m only


def test_bounds_check_judges_only_where_the_first_camera_sees():
    plane = torch.full((H, W), D)  # [H, W] a wall at 2 m
    fx = float(identity_source().K[0, 0])
    visible = cameras_at((0, 0, 0), (0.5, 0, 1.85))  # u = 32 + fx 0.5 / 1.85 = 47.0: inside the image
    assert 0 <= 32 + fx * 0.5 / 1.85 < W
    with pytest.raises(ValueError, match=r"frame 1 of the path is 1.85 m .*around pixel \(46, 24\), 2 m"):
        path_bounds_check(visible, scene_depth=D, depth=plane)
    aside = cameras_at((0, 0, 0), (1.5, 0, 0.5), (3.0, 0, 1.85))  # u = 32 + fx 3 / 1.85 = 121.9: off the image
    assert 32 + fx * 3.0 / 1.85 >= W
    path_bounds_check(aside, scene_depth=D, depth=plane)  # no known geometry there: not judged
    with pytest.raises(ValueError, match=r"frame 2 of the path is 1.85 m .*scene depth 2 m\)"):
        path_bounds_check(aside, scene_depth=D)  # the median rule judges it
    behind = cameras_at((0, 0, 0), (0, 0, -5.0))
    path_bounds_check(behind, scene_depth=D, depth=plane)


def test_bounds_check_falls_back_to_the_median_without_valid_depth():
    holes = box_depth(float("nan"))  # no valid depth in the window around the image centre
    holes[16:32, 24:26] = 0.0  # <= 0 is invalid too
    path_bounds_check(make_preset_path("dolly_in", identity_source(), 9, amount=0.85, scene_depth=D), D, depth=holes)
    with pytest.raises(ValueError, match=r"frame 1 of the path is 1.85 m .*\(90% of the scene depth 2 m\)"):
        path_bounds_check(cameras_at((0, 0, 0), (0, 0, 1.85)), scene_depth=D, depth=holes)
    with pytest.raises(ValueError, match=r"depth must be \[H, W\] = \[48, 64\] \(the first camera's image size\), got shape \(64, 48\)"):
        path_bounds_check(cameras_at((0, 0, 0), (0, 0, 1.0)), scene_depth=D, depth=torch.ones(W, H))


def test_bounds_check_refuses_leaving_the_scene():
    assert MAX_PATH_DISTANCE == 20.0
    path_bounds_check(cameras_at((0, 0, 0), (0, -39.9, 0)), scene_depth=D)  # 19.95 x the scene depth
    for depth in (None, box_depth(1.0)):
        with pytest.raises(ValueError, match=r"the path leaves the scene: frame 1 is 40.1 m from the source, more than 20x the scene depth 2 m"):
            path_bounds_check(cameras_at((0, 0, 0), (0, -40.1, 0)), scene_depth=D, depth=depth)
        with pytest.raises(ValueError, match=r"the path leaves the scene: frame 2 is 200 m from the source"):
            path_bounds_check(cameras_at((0, 0, 0), (0, 0, -1.0), (0, -200.0, 0)), scene_depth=D, depth=depth)
    # An imported path with an absurd translation, re-anchored to the source, is refused the same way.
    imported = anchored_path(identity_source(), cameras_at((5.0, 0, 0), (5.0, 0, -1e4)), 9)
    with pytest.raises(ValueError, match=r"the path leaves the scene: frame \d+ is \d+ m from the source"):
        path_bounds_check(imported, scene_depth=D)


# ----------------------------------------------------------------------------- keyframes
def test_keyframe_euler_convention():
    a = math.radians(30)
    yaw = keyframe_camera(Keyframe((0, 0, 0), yaw=30), W, H).world_from_cam[:3, :3]
    assert torch.allclose(yaw[:, 2], torch.tensor([-math.sin(a), 0, math.cos(a)]), atol=1e-6)  # turns left
    pitch = keyframe_camera(Keyframe((0, 0, 0), pitch=30), W, H).world_from_cam[:3, :3]
    assert torch.allclose(pitch[:, 2], torch.tensor([0, -math.sin(a), math.cos(a)]), atol=1e-6)  # looks up
    roll = keyframe_camera(Keyframe((0, 0, 0), roll=30), W, H).world_from_cam[:3, :3]
    assert torch.allclose(roll[:, 0], torch.tensor([math.cos(a), math.sin(a), 0]), atol=1e-6)  # +x towards +y
    cam = keyframe_camera(Keyframe((1, 2, 3), fov_x=90), W, H)
    assert torch.allclose(cam.center, torch.tensor([1.0, 2, 3]))
    assert float(cam.K[0, 0]) == pytest.approx(W / 2) and float(cam.K[0, 2]) == W / 2


def keyframes4():
    return [
        Keyframe((0, 0, 0), 0, 0, 0, 60),
        Keyframe((0.5, -0.1, 0.3), 20, 5, 0, 55),
        Keyframe((1.0, 0.0, 0.8), 35, -5, 3, 50),
        Keyframe((1.2, 0.2, 1.5), 10, 0, 0, 65),
    ]


@pytest.mark.parametrize("times", [None, [0, 5, 20, 32]])
def test_interpolate_keyframes_hits_keyframes_and_is_smooth(times):
    kfs = keyframes4()
    cams = interpolate_keyframes(kfs, 33, W, H, times=times)
    idx = [0, 11, 21, 32] if times is None else times
    for k, i in zip(kfs, idx):
        cam = keyframe_camera(k, W, H)
        assert torch.equal(cams.K[i], cam.K) and torch.equal(cams.cam_from_world[i], cam.cam_from_world)
    steps = (cams.centers[1:] - cams.centers[:-1]).norm(dim=-1)
    assert float(steps.max()) < 0.2
    turns = angle_deg(forward(cams)[1:], forward(cams)[:-1])
    assert float(turns.max()) < 6.0
    # No kinks: consecutive steps differ little (second differences are small).
    accel = (cams.centers[2:] - 2 * cams.centers[1:-1] + cams.centers[:-2]).norm(dim=-1)
    assert float(accel.max()) < 0.02


def test_slerp_midpoint_of_two_yaws_is_the_mean_yaw_and_fov_is_log_linear():
    kfs = [Keyframe((0, 0, 0), yaw=10, fov_x=40), Keyframe((2, 0, 0), yaw=50, fov_x=80)]
    cams = interpolate_keyframes(kfs, 5, W, H)
    mid = keyframes_from_cameras(cams, [2])[0]
    assert mid.yaw == pytest.approx(30.0, abs=1e-4)
    assert mid.pitch == pytest.approx(0.0, abs=1e-4) and mid.roll == pytest.approx(0.0, abs=1e-4)
    assert mid.position == pytest.approx((1.0, 0.0, 0.0), abs=1e-6)  # linear for two keyframes
    f = [0.5 * W / math.tan(math.radians(v) / 2) for v in (40, 80)]
    assert float(cams.K[2, 0, 0]) == pytest.approx(math.sqrt(f[0] * f[1]), rel=1e-6)


def test_keyframe_argument_errors():
    kfs = keyframes4()
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_keyframes(kfs[:1], 33, W, H)
    for times in ([0, 5, 20], [1, 5, 20, 32], [0, 20, 5, 32], [0, 5, 20, 31], [0, 5.5, 20, 32]):
        with pytest.raises(ValueError, match="times"):
            interpolate_keyframes(kfs, 33, W, H, times=times)
    with pytest.raises(ValueError, match="fov_x"):
        Keyframe((0, 0, 0), fov_x=180)
    with pytest.raises(ValueError, match="position"):
        Keyframe((0, 0), fov_x=60)
    with pytest.raises(ValueError, match="position"):
        Keyframe((0, float("nan"), 0))


def test_keyframes_from_cameras_round_trip():
    kfs = keyframes4()
    cams = interpolate_keyframes(kfs, 33, W, H, times=[0, 5, 20, 32])
    back = keyframes_from_cameras(cams, [0, 5, 20, 32])
    for a, b in zip(kfs, back):
        assert b.position == pytest.approx(a.position, abs=1e-5)
        assert (b.yaw, b.pitch, b.roll, b.fov_x) == pytest.approx((a.yaw, a.pitch, a.roll, a.fov_x), abs=1e-4)
    # Every frame of a preset path as a keyframe reproduces the path.
    src = tilted_source()
    orbit = make_preset_path("orbit_right", src, 9)
    again = interpolate_keyframes(keyframes_from_cameras(orbit), 9, W, H, times=list(range(9)))
    assert torch.allclose(again.cam_from_world, orbit.cam_from_world, atol=1e-5)
    assert torch.allclose(again.K, orbit.K, rtol=1e-5)
    off_centre = Cameras(torch.tensor([[50.0, 0, 40], [0, 50, 24], [0, 0, 1]]), torch.eye(4), W, H)
    with pytest.raises(ValueError, match="camera 0 .*cx=40"):
        keyframes_from_cameras(off_centre)


def test_keyframe_table_round_trip_and_errors():
    kfs = keyframes4()
    rows = keyframe_table_rows(kfs)
    assert len(rows[0]) == len(KEYFRAME_COLUMNS) == 7
    assert keyframes_from_table(rows) == kfs
    as_text = [[str(v) for v in r] for r in rows] + [["", "", "", "", "", "", ""]]  # a blank UI row is skipped
    assert keyframes_from_table(as_text) == kfs
    cases = [
        ([[0, 0, 0, 0, 0, 60]], r"row 1 has 6 values"),
        ([rows[0], [0, 0, "abc", 0, 0, 0, 60]], r"row 2, column 'z': 'abc' is not a number"),
        ([[0, 0, 0, 0, None, 0, 60]], r"row 1, column 'pitch': None"),
        ([[0, 0, 0, 0, 0, 0, 0]], r"row 1, column 'fov_x'.*\(0, 180\)"),
        ([[0, 0, 0, 0, 0, 0, 180]], r"column 'fov_x'"),
        ([[0, 0, 0, float("inf"), 0, 0, 60]], r"column 'yaw'.*not finite"),
        ([], "empty"),
        (["0 0 0 0 0 0 60"], "row 1 must be a list"),
    ]
    for table, message in cases:
        with pytest.raises(ValueError, match=message):
            keyframes_from_table(table)


def test_keyframe_table_refuses_malformed_rows_and_cells():
    ok = [0, 0, 0, 0, 0, 0, 60]
    cases = [
        ([ok, [0, 0, 0, 0, 0, 60]], r"^keyframe table row 2 has 6 values, expected 7 \(x, y, z, yaw, pitch, roll, fov_x\): \[0, 0, 0, 0, 0, 60\]$"),
        ([[0, 0, 0, 0, 0, 0, 60, 1]], r"^keyframe table row 1 has 8 values, expected 7 \(x, y, z, yaw, pitch, roll, fov_x\): "),
        ([ok, {"x": 0, "y": 0, "z": 0, "yaw": 0, "pitch": 0, "roll": 0, "fov_x": 60}], r"^keyframe table row 2 must be a list of 7 numbers, got \{'fov_x': 60, 'pitch': 0, .*\.\.\.\}$"),
        ([None], r"^keyframe table row 1 must be a list of 7 numbers, got None$"),
        ([42], r"^keyframe table row 1 must be a list of 7 numbers, got 42$"),
        ([[0, 0, 0, "ten", 0, 0, 60]], r"^keyframe table row 1, column 'yaw': 'ten' is not a number$"),
        ([[0, 0, 0, 0, 0, {"a": 1}, 60]], r"^keyframe table row 1, column 'roll': \{'a': 1\} is not a number$"),
        ([[0, [1, [2, [3, [4]]]], 0, 0, 0, 0, 60]], r"^keyframe table row 1, column 'y': \[1, \[2, \[3, \[\.\.\.\]\]\]\] is not a number$"),
        ([[0, 0, 0, 0, 0, 0, 10**400]], r"^keyframe table row 1, column 'fov_x': 1000.*0000 is not a number$"),
        ([[0, 0, "1e999", 0, 0, 0, 60]], r"^keyframe table row 1, column 'z': '1e999' is not finite$"),
        (None, r"^the keyframe table must be a list of rows, got NoneType: None$"),
        ("0 0 0 0 0 0 60", r"^the keyframe table must be a list of rows, got str: '0 0 0 0 0 0 60'$"),
        ({"rows": []}, r"^the keyframe table must be a list of rows, got dict"),
    ]  # fmt: skip
    for table, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            keyframes_from_table(table)
        assert len(str(info.value)) < 250  # reprs of what was sent are bounded
    huge_cell = [0, 0, 0, 0, 0, 0, "x" * 100000]
    with pytest.raises(ValueError, match=r"column 'fov_x': 'xxx.*xxx' is not a number$") as info:
        keyframes_from_table([huge_cell])
    assert len(str(info.value)) < 200


def test_keyframe_table_holds_at_most_64_keyframes():
    assert MAX_KEYFRAMES == 64
    row = lambda i: [0.01 * i, 0, 0, 0, 0, 0, 60]  # noqa: E731
    blank = [None] * 7
    assert len(keyframes_from_table([row(i) for i in range(64)] + [blank] * 100)) == 64  # blank rows do not count
    with pytest.raises(ValueError, match=r"^keyframe table row 66: the table holds at most 64 keyframes$"):
        keyframes_from_table([row(i) for i in range(32)] + [blank] + [row(i) for i in range(33)])
    assert keyframes_from_table(np.array([row(0), row(1)])) == [Keyframe((0, 0, 0)), Keyframe((0.01, 0, 0))]


def test_keyframe_angles_are_bounded_like_preset_amounts():
    """A yaw past a full turn, a pitch past straight up or down, a roll past upside down: refused by name."""
    assert Keyframe((0, 0, 0), yaw=-360, pitch=90, roll=180).yaw == -360.0  # the bounds themselves are fine
    for name, value, bound in (("yaw", 1e9, 360), ("pitch", -90.5, 90), ("roll", 181, 180)):
        with pytest.raises(ValueError, match=rf"Keyframe.{name} must be within \+-{bound} degrees \(.*\), got {re.escape(f'{value:g}')}"):
            Keyframe((0, 0, 0), **{name: value})
        row = [0.1, 0, 0, 0, 0, 0, 60]
        row[KEYFRAME_COLUMNS.index(name)] = value
        with pytest.raises(ValueError, match=rf"^keyframe table row 2, column '{name}': {re.escape(f'{value:g}')} is past \+-{bound} degrees"):
            keyframes_from_table([[0, 0, 0, 0, 0, 0, 60], row])


# ----------------------------------------------------------------------------- strokes
def test_path_from_points_follows_a_line_with_source_orientation():
    src = tilted_source()
    R_wfc = src.world_from_cam[:3, :3]
    end = src.center + 0.6 * R_wfc[:, 0] + 0.3 * R_wfc[:, 2]  # right and ahead, in world coordinates
    cams = path_from_points(src, end[None], 33)  # the source centre is prepended
    assert torch.equal(cams.cam_from_world[0], src.cam_from_world) and torch.equal(cams.K[0], src.K)
    assert torch.allclose(cams.centers[-1], end, atol=1e-5)
    assert torch.allclose(cams.cam_from_world[:, :3, :3], src.cam_from_world[:3, :3].expand(33, 3, 3), atol=1e-6)
    d = (end - src.center) / (end - src.center).norm()
    offsets = cams.centers - src.center  # [T, 3] all on the segment
    assert torch.allclose(offsets - (offsets @ d)[:, None] * d, torch.zeros(33, 3), atol=1e-5)
    s = (offsets @ d) / (end - src.center).norm()
    expected = torch.tensor([ease(i / 32) for i in range(33)])
    assert torch.allclose(s, expected, atol=1e-4)


def test_path_from_points_forward_looks_along_travel_and_is_smooth():
    src = identity_source()
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])  # ahead, then an L-turn right
    cams = path_from_points(src, points, 33, look="forward")
    assert torch.equal(cams.cam_from_world[0], src.cam_from_world)
    assert torch.allclose(forward(cams)[-1], torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(cams.centers[-1], points[-1], atol=1e-5)
    assert float(cams.world_from_cam[:, 1, 1].min()) > 0.999  # camera "down" stays the source's down
    steps = (cams.centers[1:] - cams.centers[:-1]).norm(dim=-1)
    assert float(steps.max()) <= 1.6 * float(steps.mean())  # the corner is smoothed and evenly traversed
    assert float(angle_deg(forward(cams)[1:], forward(cams)[:-1]).max()) < 12.0  # the 90-degree turn is spread out
    with pytest.raises(ValueError, match="zero length"):
        path_from_points(src, torch.zeros(3, 3), 33)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        path_from_points(src, torch.zeros(3, 2), 33)
    with pytest.raises(ValueError, match="look"):
        path_from_points(src, points, 33, look="backward")
    with pytest.raises(ValueError, match="vertical"):
        path_from_points(src, torch.tensor([[0.0, -1.0, 0.0]]), 33, look="forward")


# ----------------------------------------------------------------------------- resampling
def test_resample_path_keeps_endpoints_and_geometry():
    src = tilted_source()
    orbit = make_preset_path("orbit_left", src, 33, amount=30.0, scene_depth=D)
    coarse = resample_path(orbit, 13)
    for j, i in ((0, 0), (12, 32), (3, 8), (6, 16)):  # 12 * k / 32 integral -> exact copies
        assert torch.equal(coarse.cam_from_world[j], orbit.cam_from_world[i])
    target = src.center + D * src.world_from_cam[:3, 2]
    dist = (coarse.centers - target).norm(dim=-1)
    assert torch.allclose(dist, torch.full((13,), D), atol=1e-3)  # interpolated frames stay on the orbit
    fine = resample_path(orbit, 65)
    assert torch.equal(fine.cam_from_world[::2], orbit.cam_from_world)
    # Two cameras: linear centres and slerped rotation.
    two = interpolate_keyframes([Keyframe((0, 0, 0), yaw=0), Keyframe((1, 0, 0), yaw=40)], 5, W, H)
    re = resample_path(two[[0, 4]], 5)
    assert torch.allclose(re.cam_from_world, two.cam_from_world, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        resample_path(orbit[:1], 33)


# ----------------------------------------------------------------------------- the path type
def off_centre_source() -> Camera:
    """Like the Motorcycle example at 256 px: principal point well away from the image centre."""
    K = torch.tensor([[180.0, 0.0, 107.7], [0.0, 180.0, 66.4], [0.0, 0.0, 1.0]])
    return Camera(K, look_at(torch.tensor([0.1, -0.2, -0.5]), torch.tensor([0.2, 0.0, 2.0])), 256, 128)


def every_path_source(src: Camera, T: int = 33) -> dict[str, CameraPath]:
    """One path of each kind a user can make, all from ``src``."""
    W_, H_ = src.width, src.height
    world_pts = src.world_from_cam[:3, :3] @ torch.tensor([[0.3, 0.0, 0.4], [0.5, -0.1, 0.8]]).T + src.world_from_cam[:3, 3:]
    imported = Cameras(
        torch.tensor([[[150.0, 0, 128.0], [0, 150.0, 64.0], [0, 0, 1]], [[160.0, 0, 130.0], [0, 160.0, 64.0], [0, 0, 1]]]),
        look_at(torch.tensor([[2.0, 1.0, 0.0], [2.3, 1.0, 0.2]]), torch.tensor([[2.0, 1.0, 5.0], [2.5, 1.0, 5.0]])), W_, H_,
    )  # a file's cameras in their own world frame, with their own (centred) intrinsics
    return {
        "preset": make_preset_path("zoom_in", src, T, scene_depth=D),
        "orbit": make_preset_path("orbit_left", src, T, scene_depth=D),
        "stroke": path_from_points(src, world_pts.T, T, look="forward"),
        "keyframes": keyframe_path(src, [Keyframe((0, 0, 0), fov_x=55.0), Keyframe((0.2, 0.0, 0.3), yaw=8, fov_x=45.0)], T),
        "import": anchored_path(src, imported, T),
    }


@pytest.mark.parametrize("kind", ["preset", "orbit", "stroke", "keyframes", "import"])
def test_frame_zero_of_every_path_source_is_the_source_camera(kind):
    src = off_centre_source()
    path = every_path_source(src)[kind]
    assert isinstance(path, CameraPath) and len(path) == 33
    assert torch.equal(path.K[0], src.K) and torch.equal(path.cam_from_world[0], src.cam_from_world)
    assert not torch.equal(path.cam_from_world[-1], src.cam_from_world) or not torch.equal(path.K[-1], src.K)  # it moves
    assert torch.equal(path.source.K, src.K)
    chunk = path[0:9]
    assert type(chunk) is Cameras  # a slice of a path is not a path
    small = path.rescaled(128, 64)
    assert isinstance(small, CameraPath) and torch.equal(small.K[0], src.rescaled(128, 64).K)


@pytest.mark.parametrize("kind", ["preset", "orbit", "stroke", "keyframes", "import"])
def test_reading_frame_zero_of_any_path_returns_the_source_tokens(kind):
    from mirage.memory import LatentSpatialMemory, Observation

    src = off_centre_source()
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(48, 8, 16, generator=g).to(torch.bfloat16)
    depth = 1.5 + torch.rand(128, 256, generator=g)
    mem = LatentSpatialMemory()
    mem.initialize(Observation.single(src, depth, latent))
    out = mem.read(every_path_source(src)[kind][:9])  # the first chunk's first latent frame is frame 0
    assert out.mask[0].all() and torch.equal(out.latents[:, 0], latent)


def test_camera_path_checks_frame_zero_count_and_size():
    src = off_centre_source()
    path = make_preset_path("pan_left", src, 9, scene_depth=D)
    moved = path.cam_from_world.clone()
    moved[0, 0, 3] += 1e-6
    with pytest.raises(ValueError, match="frame 0 of a camera path must be the source camera exactly"):
        CameraPath(path.K, moved, 256, 128, src)
    K = path.K.clone()
    K[0, 0, 2] = 128.0  # a centred principal point, as keyframes used to make
    with pytest.raises(ValueError, match="differs by 20.3 in K"):
        CameraPath(K, path.cam_from_world, 256, 128, src)
    with pytest.raises(ValueError, match="at least 5 frames.*got 8"):
        CameraPath(path.K[:8], path.cam_from_world[:8], 256, 128, src)
    with pytest.raises(ValueError, match="128x64"):
        CameraPath.starting_at(src.rescaled(128, 64), path)


def test_keyframe_path_is_relative_to_the_source():
    src = off_centre_source()
    with pytest.raises(ValueError, match="first keyframe is the source camera"):
        keyframe_path(src, [Keyframe((0.1, 0, 0)), Keyframe((0.2, 0, 0))], 9)
    path = keyframe_path(src, [Keyframe((0, 0, 0), fov_x=60.0), Keyframe((0.0, 0.0, 0.5), fov_x=30.0)], 9)
    zoom = math.tan(math.radians(30)) / math.tan(math.radians(15))  # tan(fov0/2) / tan(fov1/2)
    assert path.K[-1, 0, 0] / src.K[0, 0] == pytest.approx(zoom, rel=1e-6)
    assert torch.equal(path.K[-1, :2, 2], src.K[:2, 2])  # the principal point stays where the source has it
    src_from_last = src.cam_from_world.double() @ path.world_from_cam[-1].double()
    torch.testing.assert_close(src_from_last[:3, 3], torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64), atol=1e-5, rtol=0)


def test_anchored_path_keeps_relative_motion_and_zoom():
    src = off_centre_source()
    eyes = torch.tensor([[1.0, -0.5, 2.0], [1.2, -0.5, 2.1]])
    cfw = look_at(eyes, eyes + torch.tensor([0.3, 0.1, 1.0]))  # [2, 4, 4]
    K = torch.tensor([[[100.0, 0, 128], [0, 100.0, 64], [0, 0, 1]], [[125.0, 0, 128], [0, 125.0, 64], [0, 0, 1]]])
    path = anchored_path(src, Cameras(K, cfw, 256, 128), 5)
    relative = cfw[1].double() @ torch.linalg.inv(cfw[0].double())  # camera 1 seen from camera 0
    torch.testing.assert_close(path.cam_from_world[-1].double(), relative @ src.cam_from_world.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(path.K[-1, 0, 0], src.K[0, 0] * 1.25)  # the file's 1.25x zoom, about the source's centre
    torch.testing.assert_close(path.K[-1, :2, 2], src.K[:2, 2])


def test_nearest_surface_equals_a_per_pixel_window_minimum():
    """The separable min filter against the obvious loop over each pixel's window (borders, holes)."""
    from mirage.paths import _nearest_surface, _surface_window_radius

    g = torch.Generator().manual_seed(0)
    H, W = 23, 31
    depth = 1.0 + torch.rand(H, W, generator=g, dtype=torch.float64) * 4  # [H, W]
    depth[torch.rand(H, W, generator=g) < 0.3] = float("nan")  # holes: never the nearest
    depth[:, :9] = float("nan")  # a band wider than the window: no surface known there
    fast = _nearest_surface(depth, H, W)  # [H, W]
    r = _surface_window_radius(H, W)
    finite = torch.where(torch.isnan(depth), torch.full_like(depth, math.inf), depth)
    for v in range(H):
        for u in range(W):
            window = finite[max(0, v - r) : v + r + 1, max(0, u - r) : u + r + 1]
            assert float(fast[v, u]) == float(window.min()), (v, u)
    assert math.isinf(float(fast[0, 0])) and math.isfinite(float(fast[0, W - 1]))
