"""Camera paths: analytic preset checks, keyframes, strokes, resampling, bounds."""

import math

import pytest
import torch

from mirage.cameras import Camera, Cameras, look_at
from mirage.frames import check_num_frames
from mirage.paths import (
    KEYFRAME_COLUMNS,
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
        make_preset_path("dolly_in", src, 33, amount=1.2, scene_depth=D)
    cams = make_preset_path("dolly_in", src, 33, amount=0.85, scene_depth=D)  # within the 10% margin
    path_bounds_check(cams, scene_depth=D)
    first = next(i for i in range(33) if 1.7 * ease(i / 32) >= 0.9 * 1.5)  # first frame past 90% of 1.5 m
    with pytest.raises(ValueError, match=f"frame {first} of the path is {1.7 * ease(first / 32):.4g} m"):
        path_bounds_check(cams, scene_depth=1.5)
    with pytest.raises(ValueError, match="scene_depth"):
        path_bounds_check(cams, scene_depth=float("nan"))


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
    mem = LatentSpatialMemory().initialize(Observation.single(src, depth, latent))
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
