"""Camera paths for generation: the ``CameraPath`` type, presets, keyframes, strokes, imported
paths, resampling and a sanity check.

A *path* (``CameraPath``) is a :class:`~mirage.cameras.Cameras` of ``T = 4N + 1`` frames (``N >= 1``:
5, 9, ..., 33, 65) at the source image size whose frame 0 is exactly (bitwise) the source camera,
pose and intrinsics. The type checks that once, when it is made; every builder here returns one, so
reading frame 0 of any path from a memory built on the source returns the source's tokens.

Preset and stroke motions are defined in the source camera's frame (OpenCV axes: +x right,
+y down, +z forward) as the pose of each new camera in source coordinates, ``src_from_new``, and
composed with the source as

    cam_from_world[t] = inverse(src_from_new[t]) @ source.cam_from_world

so a source with any ``cam_from_world`` gets the same motion relative to itself. Keyframes live in
world coordinates. All arithmetic is float64 (numpy/scipy); results are cast to float32 once.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor

from mirage.cameras import Camera, Cameras, invert_rigid
from mirage.frames import check_num_frames
from mirage.geometry import project_points, valid_depth

__all__ = [
    "CameraPath",
    "KEYFRAME_COLUMNS",
    "Look",
    "LOOKS",
    "MAX_KEYFRAMES",
    "MAX_PATH_DISTANCE",
    "PRESETS",
    "Keyframe",
    "PathPreset",
    "PresetInfo",
    "interpolate_keyframes",
    "keyframe_camera",
    "keyframe_table_rows",
    "keyframes_from_cameras",
    "keyframes_from_table",
    "keyframe_path",
    "anchored_path",
    "return_path",
    "continued",
    "make_preset_path",
    "path_bounds_check",
    "path_from_points",
    "resample_path",
]

PathPreset = Literal[
    "orbit_left", "orbit_right", "pan_left", "pan_right", "pan_up", "pan_down", "dolly_in", "dolly_out",
    "zoom_in", "zoom_out", "truck_left", "truck_right", "pedestal_up", "pedestal_down", "look_around",
    "detour_revisit",
]  # fmt: skip


@dataclass(frozen=True)
class PresetInfo:
    description: str  # one line for the UI
    unit: str  # what `amount` measures
    default: float  # amount used when none is given
    max: float  # largest accepted amount (inclusive), a physical bound in `unit`
    why_max: str  # what happens at `max`, said when an amount above it is refused
    min: float = 0.0  # smallest accepted amount (inclusive): no motion (1 for a zoom factor)


# Amounts are magnitudes in [min, max]: the direction is in the preset's name. The translations'
# max of 10 scene depths is half of MAX_PATH_DISTANCE; path_bounds_check still judges every path
# (an orbit past ~84 degrees crosses the median depth, so it needs a depth map showing room behind).
_DEG, _FRAC, _FACTOR = "degrees", "fraction of the scene depth", "focal-length factor (>= 1)"
_TURN = "360 degrees is a full turn; more only repeats the views"
_THROUGH = "at 1 the camera reaches the scene at its median depth; past it the camera would go through the scene"
_FAR = "10 scene depths away the scene is a tenth of its size or out of view"
_TILT = "at 90 degrees the camera looks straight {}; past it the view turns upside down"
_ZOOM = "a 10x zoom already magnifies every source pixel 10 times (a 60 degree view becomes 6.6 degrees)"
PRESETS: dict[str, PresetInfo] = {
    "orbit_left": PresetInfo(
        "circle left around the point at the scene depth, keeping it centred", _DEG, 20.0, 360.0, _TURN
    ),
    "orbit_right": PresetInfo(
        "circle right around the point at the scene depth, keeping it centred", _DEG, 20.0, 360.0, _TURN
    ),
    "pan_left": PresetInfo("turn left in place", _DEG, 20.0, 360.0, _TURN),
    "pan_right": PresetInfo("turn right in place", _DEG, 20.0, 360.0, _TURN),
    "pan_up": PresetInfo("tilt up in place", _DEG, 15.0, 90.0, _TILT.format("up")),
    "pan_down": PresetInfo("tilt down in place", _DEG, 15.0, 90.0, _TILT.format("down")),
    "dolly_in": PresetInfo("move forward along the optical axis", _FRAC, 0.3, 1.0, _THROUGH),
    "dolly_out": PresetInfo("move backward along the optical axis", _FRAC, 0.3, 10.0, _FAR),
    "zoom_in": PresetInfo("increase the focal length, camera fixed", _FACTOR, 1.5, 10.0, _ZOOM, min=1.0),
    "zoom_out": PresetInfo("decrease the focal length (divide by amount), camera fixed", _FACTOR, 1.5, 10.0,
                           "a 10x zoom out already shows the source image at a tenth of its size", min=1.0),  # fmt: skip
    "truck_left": PresetInfo("slide left, same orientation", _FRAC, 0.3, 10.0, _FAR),
    "truck_right": PresetInfo("slide right, same orientation", _FRAC, 0.3, 10.0, _FAR),
    "pedestal_up": PresetInfo("rise vertically, same orientation", _FRAC, 0.2, 10.0, _FAR),
    "pedestal_down": PresetInfo("sink vertically, same orientation", _FRAC, 0.2, 10.0, _FAR),
    "look_around": PresetInfo(
        "figure-eight of yaw (+-amount) and pitch (+-amount/2) in place, back to the start view", _DEG, 20.0, 180.0,
        "at 180 degrees the camera looks behind and straight up and down; past it the view flips over",
    ),  # fmt: skip
    "detour_revisit": PresetInfo(
        "out along a circle of diameter scene_depth/2 to the right (ahead), turning right by amount, "
        "back behind it to the exact start pose",
        _DEG,
        60.0,
        180.0,
        "at 180 degrees the camera looks back; past it the turn only continues round",
    ),
}
assert set(PRESETS) == set(get_args(PathPreset))
assert all(i.min <= i.default <= i.max for i in PRESETS.values())
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in"}
MAX_PATH_DISTANCE = 20.0  # farthest a path camera may be from the first camera, in scene depths
MAX_KEYFRAMES = 64  # most keyframes a table may hold
_show = reprlib.Repr()  # reprs of user input in messages: bounded in length and nesting
_show.maxlevel, _show.maxstring, _show.maxother, _show.maxlist = 3, 40, 40, 8

KEYFRAME_COLUMNS = ("x", "y", "z", "yaw", "pitch", "roll", "fov_x")  # the UI table's column order
# Keyframe angles are bounded like the presets' amounts: |angle| <= bound degrees, and why.
KEYFRAME_ANGLE_BOUNDS = {
    "yaw": (360.0, _TURN),
    "pitch": (90.0, "at 90 degrees the camera looks straight up or down; past it the view turns upside down"),
    "roll": (180.0, "at 180 degrees the view is upside down; past it the roll only continues round"),
}
Look = Literal["source", "forward"]  # keep the source view, or look along the path
LOOKS: tuple[str, ...] = get_args(Look)


# ----------------------------------------------------------------------------- the path type
@dataclass(frozen=True)
class CameraPath(Cameras):
    """``T = 4N + 1`` cameras (``N >= 1``) at the source image size whose frame 0 is exactly the
    ``source`` camera (``K``, ``cam_from_world`` and size, bitwise). Checked when the path is made;
    slices are plain ``Cameras`` (a chunk of a path is not a path)."""

    source: Camera  # the camera of the input image; frame 0 equals it exactly

    def __post_init__(self) -> None:
        super().__post_init__()
        check_num_frames(len(self), min_latent_frames=2)
        src = self.source
        if not isinstance(src, Camera):
            raise TypeError(f"source must be a mirage.cameras.Camera, got {type(src).__name__}")
        if (src.width, src.height) != (self.width, self.height):
            raise ValueError(f"the path is for {self.width}x{self.height} images, the source camera is {src.width}x{src.height}")
        K0, T0 = self.K[0], self.cam_from_world[0]
        if not torch.equal(K0, src.K.to(K0.device)) or not torch.equal(T0, src.cam_from_world.to(T0.device)):
            dK = float((K0 - src.K.to(K0.device)).abs().max())
            dT = float((T0 - src.cam_from_world.to(T0.device)).abs().max())
            raise ValueError(
                f"frame 0 of a camera path must be the source camera exactly; it differs by {dK:.3g} in K and "
                f"{dT:.3g} in cam_from_world"
            )

    @classmethod
    def starting_at(cls, source: Camera, cameras: Cameras) -> "CameraPath":
        """``cameras`` as a path of ``source`` (``ValueError`` unless frame 0 is exactly the source)."""
        return cls(cameras.K, cameras.cam_from_world, cameras.width, cameras.height, source)

    def to(self, device) -> "CameraPath":
        return CameraPath(self.K.to(device), self.cam_from_world.to(device), self.width, self.height, self.source.to(device))

    def rescaled(self, width: int, height: int) -> "CameraPath":
        """The same path for the source image resized to ``width x height``."""
        cams = Cameras.rescaled(self, width, height)
        return CameraPath.starting_at(self.source.rescaled(width, height), cams)


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _ease(t: np.ndarray) -> np.ndarray:  # [T] in [0, 1] -> [T] in [0, 1]
    """Cosine ease-in-out: zero speed at both ends, exactly 0 at t=0 and exactly 1 at t=1."""
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:  # angle [T] radians -> [T, 3, 3]
    """Right-handed rotation about +x (0), +y (1) or +z (2); exactly the identity at angle 0."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.zeros((angle.shape[0], 3, 3))  # [T, 3, 3]
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R[:, axis, axis] = 1.0
    R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
    return R


def _yaw_pitch_roll(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:  # [T] degrees -> [T, 3, 3]
    """Rotation of a camera that yaws about -y (up), then pitches about its +x, then rolls about its +z."""
    return _rot(1, -np.radians(yaw)) @ _rot(0, np.radians(pitch)) @ _rot(2, np.radians(roll))


def _euler_from_rotation(R: np.ndarray) -> np.ndarray:  # [N, 3, 3] world_from_cam -> [N, 3] (yaw, pitch, roll) deg
    a = Rotation.from_matrix(R).as_euler("YXZ", degrees=True)  # [N, 3]; R = Ry(a0) Rx(a1) Rz(a2)
    return np.stack([-a[:, 0], a[:, 1], a[:, 2]], axis=-1)


def _compose(source: Camera, src_from_new: np.ndarray, focal: np.ndarray | None = None) -> CameraPath:
    """The path ``cam_from_world[t] = inverse(src_from_new[t]) @ source.cam_from_world`` with the
    source intrinsics zoomed by ``focal[t]`` about the principal point (``fx``, ``fy`` and skew
    scaled). src_from_new ``[T, 4, 4]`` (``[0]`` the identity), focal ``[T]`` (``[0] == 1``)."""
    R, c = src_from_new[:, :3, :3], src_from_new[:, :3, 3]  # [T, 3, 3], [T, 3]
    new_from_src = np.zeros_like(src_from_new)  # [T, 4, 4]
    new_from_src[:, :3, :3] = R.transpose(0, 2, 1)
    new_from_src[:, :3, 3] = -np.einsum("tji,tj->ti", R, c)  # -R^T c
    new_from_src[:, 3, 3] = 1.0
    cam_from_world = torch.from_numpy(new_from_src @ _np(source.cam_from_world)[None]).float()  # [T, 4, 4]
    T = src_from_new.shape[0]
    K = np.repeat(_np(source.K)[None], T, axis=0)  # [T, 3, 3]
    if focal is not None:
        K[:, 0, :2] *= focal[:, None]
        K[:, 1, 1] *= focal
    K = torch.from_numpy(K).float()
    K[0], cam_from_world[0] = source.K.cpu(), source.cam_from_world.cpu()  # frame 0 is the source, bitwise
    return CameraPath(K, cam_from_world, source.width, source.height, source.to("cpu")).to(source.K.device)


def _from_world_poses(centres: np.ndarray, R_wfc: np.ndarray, K: np.ndarray, width: int, height: int) -> Cameras:
    """Cameras from world centres [T, 3], world_from_cam rotations [T, 3, 3] and intrinsics [T, 3, 3]."""
    T = centres.shape[0]
    cam_from_world = np.zeros((T, 4, 4))  # [T, 4, 4]
    cam_from_world[:, :3, :3] = R_wfc.transpose(0, 2, 1)
    cam_from_world[:, :3, 3] = -np.einsum("tji,tj->ti", R_wfc, centres)  # -R^T c
    cam_from_world[:, 3, 3] = 1.0
    return Cameras(torch.from_numpy(K).float(), torch.from_numpy(cam_from_world).float(), width, height)


def _world_poses(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:  # -> centres [N, 3], R_wfc [N, 3, 3]
    cfw = _np(cameras.cam_from_world)  # [N, 4, 4]
    R_wfc = cfw[:, :3, :3].transpose(0, 2, 1)
    return -np.einsum("nij,nj->ni", R_wfc, cfw[:, :3, 3]), R_wfc


def _check_depth(scene_depth: float) -> float:
    d = float(scene_depth)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"scene_depth must be a finite positive median depth in metres, got {scene_depth!r}")
    return d


def _intrinsics(focal: np.ndarray, width: int, height: int) -> np.ndarray:  # focal [T] px -> [T, 3, 3]
    K = np.zeros((focal.shape[0], 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = focal
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return K


# ----------------------------------------------------------------------------- presets
def _preset_motion(preset: str, s: np.ndarray, amount: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose of each new camera in the source frame, ``src_from_new`` [T, 4, 4], and focal scale [T].

    s: [T] eased progress in [0, 1] (exactly 0 at frame 0 and 1 at the last frame).
    """
    T = s.shape[0]
    R = np.broadcast_to(np.eye(3), (T, 3, 3)).copy()  # [T, 3, 3] new camera axes (columns) in source coordinates
    c = np.zeros((T, 3))  # [T, 3] new camera centre in source coordinates
    focal = np.ones(T)
    a = math.radians(amount)
    sign = 1.0 if preset.endswith(("_left", "_up", "_in")) else -1.0
    if preset.startswith("orbit"):
        # Ry(+theta) turns the view right, so the centre swings left around the target (0, 0, d).
        R = _rot(1, sign * a * s)
        c = np.array([0.0, 0.0, d]) - d * R[:, :, 2]  # target stays at depth d on the optical axis
    elif preset in ("pan_left", "pan_right"):
        R = _rot(1, -sign * a * s)  # Ry(-theta) turns the optical axis towards -x (left)
    elif preset in ("pan_up", "pan_down"):
        R = _rot(0, sign * a * s)  # Rx(+phi) turns the optical axis towards -y (up)
    elif preset.startswith("dolly"):
        c[:, 2] = sign * amount * d * s
    elif preset.startswith("truck"):
        c[:, 0] = -sign * amount * d * s
    elif preset.startswith("pedestal"):
        c[:, 1] = -sign * amount * d * s
    elif preset.startswith("zoom"):
        focal = amount ** (sign * s)
    elif preset == "look_around":
        yaw, pitch = amount * np.sin(2 * np.pi * s), 0.5 * amount * np.sin(4 * np.pi * s)  # [T] degrees
        yaw[-1] = pitch[-1] = 0.0  # sin(2 pi) is 2e-16 in floating point: close the loop exactly
        R = _yaw_pitch_roll(yaw, pitch, np.zeros(T))
    elif preset == "detour_revisit":
        r = 0.25 * d  # radius of the circle the centre travels (diameter scene_depth / 2)
        c = np.stack([r * (1 - np.cos(2 * np.pi * s)), np.zeros(T), r * np.sin(2 * np.pi * s)], axis=-1)
        yaw_right = a * np.sin(np.pi * s) ** 2  # [T] radians, peaks at mid-path
        c[-1], yaw_right[-1] = 0.0, 0.0  # analytically the start pose; remove the 1e-16 residue
        R = _rot(1, yaw_right)
    else:  # pragma: no cover - guarded by make_preset_path
        raise AssertionError(preset)
    src_from_new = np.zeros((T, 4, 4))
    src_from_new[:, :3, :3], src_from_new[:, :3, 3], src_from_new[:, 3, 3] = R, c, 1.0
    return src_from_new, focal


def make_preset_path(
    preset: PathPreset,
    source: Camera,
    num_frames: int = 33,
    amount: float | None = None,
    scene_depth: float = 2.0,
    depth: Tensor | np.ndarray | None = None,  # [H, W] metres seen by the source, NaN invalid
) -> CameraPath:
    """A named camera motion starting exactly at ``source``, with a cosine ease-in-out profile.

    amount: in the unit listed in ``PRESETS[preset].unit`` (default ``PRESETS[preset].default``), a
    magnitude in ``[PRESETS[preset].min, PRESETS[preset].max]`` (the bounds are explained beside
    ``PRESETS``; the refusal says why): the direction is in the preset's name, so a negative amount
    (a zoom factor below 1) is refused and names the opposite preset; NaN and inf are refused.
    scene_depth: median scene depth in metres (pass the median of the estimated depth map); orbits
    circle the point at this depth on the source's optical axis and translations scale with it.
    depth: the source's depth map at its size; when given, the bounds check judges each camera
    against the surface it would cross rather than the median depth.
    The result passes :func:`path_bounds_check` (``ValueError`` otherwise).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not isinstance(source, Camera):
        raise TypeError(f"source must be a mirage.cameras.Camera, got {type(source).__name__}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    d = _check_depth(scene_depth)
    info = PRESETS[preset]
    amount = info.default if amount is None else amount
    bounds = f"[{info.min:g}, {info.max:g}] ({info.unit})"
    try:
        if isinstance(amount, bool):
            raise TypeError
        amount_f = float(amount)
    except (TypeError, ValueError):
        raise ValueError(f"amount for {preset!r} must be a number in {bounds}, got {_show.repr(amount)}") from None
    if not (math.isfinite(amount_f) and info.min <= amount_f <= info.max):
        if amount_f > info.max:
            why = f": {info.why_max}"
        elif amount_f < info.min:
            head, _, way = preset.rpartition("_")
            other = f"{head}_{_OPPOSITE[way]}" if way in _OPPOSITE else None
            kind = "zoom factors are at least 1" if preset.startswith("zoom") else "amounts are magnitudes"
            why = f": {kind}" + (f"; for the other direction use {other!r}" if other else "")
        else:
            why = ""
        raise ValueError(f"amount for {preset!r} must be finite and in {bounds}, got {_show.repr(amount)}{why}")
    s = _ease(np.linspace(0.0, 1.0, T))  # [T]
    src_from_new, focal = _preset_motion(preset, s, amount_f, d)
    path = _compose(source, src_from_new, focal)
    path_bounds_check(path, d, depth=depth)
    return path


# ----------------------------------------------------------------------------- keyframes
@dataclass(frozen=True)
class Keyframe:
    """A camera for keyframe paths; angles in degrees, OpenCV axes (+x right, +y down, +z forward).

    The orientation (world_from_cam rotation) is ``Rot(-y, yaw) @ Rot(+x, pitch) @ Rot(+z, roll)``
    applied to a base camera whose axes are the world axes (looking along world +z): yaw about the
    up axis -y (positive turns left), then pitch about the camera's +x (positive looks up), then roll
    about its optical axis +z (positive turns +x towards +y, clockwise seen from behind).
    Intrinsics: square pixels, centred principal point, horizontal field of view ``fov_x``.
    """

    position: tuple[float, float, float]  # camera centre in world coordinates (metres)
    yaw: float = 0.0  # degrees about -y (up); positive turns left
    pitch: float = 0.0  # degrees about the yawed +x; positive looks up
    roll: float = 0.0  # degrees about the optical axis +z; positive turns +x towards +y
    fov_x: float = 60.0  # horizontal field of view in degrees, in (0, 180)

    def __post_init__(self) -> None:
        p = self.position
        try:
            p = np.asarray(p.detach().cpu() if isinstance(p, Tensor) else p, dtype=np.float64).tolist()
        except (TypeError, ValueError):
            raise ValueError(f"Keyframe.position must be 3 finite numbers, got {self.position!r}") from None
        if not (isinstance(p, list) and len(p) == 3 and all(math.isfinite(v) for v in p)):
            raise ValueError(f"Keyframe.position must be 3 finite numbers, got {self.position!r}")
        object.__setattr__(self, "position", tuple(float(v) for v in p))
        for name in ("yaw", "pitch", "roll", "fov_x"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"Keyframe.{name} must be a number, got {getattr(self, name)!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"Keyframe.{name} must be finite, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if not (0.0 < self.fov_x < 180.0):
            raise ValueError(f"Keyframe.fov_x must be in (0, 180) degrees, got {self.fov_x}")
        for name, (bound, why) in KEYFRAME_ANGLE_BOUNDS.items():
            if abs(getattr(self, name)) > bound:
                raise ValueError(f"Keyframe.{name} must be within +-{bound:g} degrees ({why}), got {getattr(self, name):g}")


def _keyframe_arrays(keyframes: Sequence[Keyframe], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> positions [K, 3], world_from_cam rotations [K, 3, 3], focal lengths [K] in pixels."""
    pos = np.array([k.position for k in keyframes], dtype=np.float64)  # [K, 3]
    yaw, pitch, roll, fov = (np.array([getattr(k, n) for k in keyframes]) for n in ("yaw", "pitch", "roll", "fov_x"))
    focal = 0.5 * width / np.tan(np.radians(fov) / 2)  # [K]
    return pos, _yaw_pitch_roll(yaw, pitch, roll), focal


def keyframe_camera(keyframe: Keyframe, width: int, height: int) -> Camera:
    """The camera a keyframe describes, exactly as :func:`interpolate_keyframes` renders it."""
    pos, R, focal = _keyframe_arrays([keyframe], width)
    return _from_world_poses(pos, R, _intrinsics(focal, width, height), width, height).camera(0)


def _check_times(times: Sequence[int] | None, num_keys: int, T: int) -> np.ndarray:
    if times is None:
        if num_keys > T:
            raise ValueError(f"{num_keys} keyframes do not fit in {T} frames")
        return np.round(np.linspace(0, T - 1, num_keys)).astype(np.int64)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape[0] != num_keys:
        raise ValueError(f"times has {t.shape[0]} entries for {num_keys} keyframes: {list(times)}")
    if not (np.all(np.isfinite(t)) and np.all(t == np.round(t))):
        raise ValueError(f"times must be integer frame indices, got {list(times)}")
    if t[0] != 0 or t[-1] != T - 1 or np.any(np.diff(t) <= 0):
        raise ValueError(f"times must increase strictly from 0 to num_frames-1={T - 1}, got {list(times)}")
    return t.astype(np.int64)


def _interpolate(t: np.ndarray, pos_k: np.ndarray, R_k: np.ndarray, f_k: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keyframes at frames ``t [K]`` (positions [K, 3], rotations [K, 3, 3], focal lengths [K]) to
    ``T`` frames: natural cubic spline for positions (linear for 2 keyframes), quaternion slerp for
    rotations, linear in log-focal; every keyframe is hit with its own values exactly."""
    u = np.arange(T, dtype=np.float64)  # [T] frame indices
    if len(t) == 2:
        w = ((u - t[0]) / (t[1] - t[0]))[:, None]  # [T, 1]
        pos = (1 - w) * pos_k[0] + w * pos_k[1]  # [T, 3]
    else:
        pos = CubicSpline(t, pos_k, bc_type="natural")(u)  # [T, 3]
    R = Slerp(t, Rotation.from_matrix(R_k))(u).as_matrix()  # [T, 3, 3]
    focal = np.exp(np.interp(u, t, np.log(f_k)))  # [T]
    pos[t], R[t], focal[t] = pos_k, R_k, f_k  # hit every keyframe with its own arithmetic
    return pos, R, focal


def interpolate_keyframes(
    keyframes: Sequence[Keyframe],
    num_frames: int,
    width: int,
    height: int,
    times: Sequence[int] | None = None,
) -> Cameras:
    """Cameras through keyframes given in world coordinates (centred intrinsics of each keyframe's
    field of view); frame ``times[k]`` is exactly ``keyframe_camera(keyframes[k])``.

    times: integer frame index of each keyframe, strictly increasing from 0 to ``num_frames - 1``
    (default: evenly spread). For a path that starts at a source camera use ``keyframe_path``.
    """
    if len(keyframes) < 2 or not all(isinstance(k, Keyframe) for k in keyframes):
        raise ValueError(f"interpolate_keyframes needs at least 2 Keyframe objects, got {keyframes!r}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    t = _check_times(times, len(keyframes), T)  # [K]
    pos, R, focal = _interpolate(t, *_keyframe_arrays(keyframes, width), T)
    return _from_world_poses(pos, R, _intrinsics(focal, width, height), width, height)


def keyframe_path(
    source: Camera, keyframes: Sequence[Keyframe], num_frames: int, times: Sequence[int] | None = None
) -> CameraPath:
    """A path through keyframes given in the source camera's frame (OpenCV axes, metres, degrees).

    The first keyframe is the source camera: its position and angles must be 0 (``ValueError``
    otherwise), and its ``fov_x`` is the zoom reference: keyframe ``k`` keeps the source intrinsics
    zoomed by ``tan(fov_0 / 2) / tan(fov_k / 2)`` about the source's principal point, so frame 0 is
    the source exactly even when its principal point is off-centre. Interpolation as
    ``interpolate_keyframes``.
    """
    if not isinstance(source, Camera):
        raise TypeError(f"source must be a mirage.cameras.Camera, got {type(source).__name__}")
    if len(keyframes) < 2 or not all(isinstance(k, Keyframe) for k in keyframes):
        raise ValueError(f"a keyframe path needs at least 2 keyframes, got {len(keyframes)}")
    first = keyframes[0]
    if any(v != 0.0 for v in (*first.position, first.yaw, first.pitch, first.roll)):
        raise ValueError(
            "the first keyframe is the source camera: its x, y, z, yaw, pitch and roll must be 0 "
            f"(got {[*first.position, first.yaw, first.pitch, first.roll]}); move the later keyframes instead"
        )
    T = check_num_frames(num_frames, min_latent_frames=2)
    t = _check_times(times, len(keyframes), T)  # [K]
    pos_k, R_k, _ = _keyframe_arrays(keyframes, source.width)
    tan_half = np.tan(np.radians([k.fov_x for k in keyframes]) / 2)  # [K]
    pos, R, focal = _interpolate(t, pos_k, R_k, tan_half[0] / tan_half, T)
    src_from_new = np.zeros((T, 4, 4))
    src_from_new[:, :3, :3], src_from_new[:, :3, 3], src_from_new[:, 3, 3] = R, pos, 1.0
    return _compose(source, src_from_new, focal)


def keyframes_from_cameras(cameras: Cameras, indices: Sequence[int] | None = None) -> list[Keyframe]:
    """Keyframes of ``cameras[i]`` for ``i`` in ``indices`` (default all): the inverse of ``keyframe_camera``.

    Keyframes hold square pixels and a centred principal point; a camera off by more than 0.1% of
    the focal length / image size raises ``ValueError``.
    """
    n = len(cameras)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise ValueError(f"indices {bad} out of range for {n} cameras")
    if not idx:
        return []
    W, H = cameras.width, cameras.height
    K = _np(cameras.K[idx])  # [M, 3, 3]
    for j, i in enumerate(idx):
        fx, fy, s, cx, cy = K[j, 0, 0], K[j, 1, 1], K[j, 0, 1], K[j, 0, 2], K[j, 1, 2]
        if abs(fx - fy) > 1e-3 * fx or s != 0 or abs(cx - W / 2) > 1e-3 * W or abs(cy - H / 2) > 1e-3 * H:
            raise ValueError(
                f"camera {i} cannot be a keyframe: needs fx == fy, no skew and a centred principal point "
                f"({W / 2}, {H / 2}), got fx={fx:.6g} fy={fy:.6g} skew={s:.3g} cx={cx:.6g} cy={cy:.6g}"
            )
    centres, R_wfc = _world_poses(cameras[idx])
    angles = _euler_from_rotation(R_wfc)  # [M, 3]
    fov = np.degrees(2 * np.arctan(0.5 * W / K[:, 0, 0]))  # [M]
    return [Keyframe(tuple(centres[j]), *angles[j], fov_x=fov[j]) for j in range(len(idx))]


def keyframe_table_rows(keyframes: Sequence[Keyframe]) -> list[list[float]]:
    """Rows ``[x, y, z, yaw, pitch, roll, fov_x]`` (``KEYFRAME_COLUMNS``) for a UI table."""
    return [[*k.position, k.yaw, k.pitch, k.roll, k.fov_x] for k in keyframes]


def _is_blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def keyframes_from_table(rows) -> list[Keyframe]:
    """Keyframes from UI table rows ``[x, y, z, yaw, pitch, roll, fov_x]`` (numbers or numeric strings).

    rows: a list of rows (lists or tuples), an array or a pandas DataFrame. Entirely blank rows (as
    a UI table leaves them) are skipped; anything else malformed (a row of another length, a row that
    is not a list, a cell that is not a number: text, None, a dict, a nested list), or more than
    ``MAX_KEYFRAMES`` keyframes, raises ``ValueError`` naming the 1-based row and the column.
    """
    if hasattr(rows, "to_numpy"):  # a pandas DataFrame from a UI table
        rows = rows.to_numpy().tolist()
    if isinstance(rows, np.ndarray):  # [K, 7]
        rows = rows.tolist()
    if not isinstance(rows, (list, tuple)):
        raise ValueError(f"the keyframe table must be a list of rows, got {type(rows).__name__}: {_show.repr(rows)}")
    out = []
    for r, row in enumerate(rows, start=1):
        if not isinstance(row, (list, tuple, np.ndarray)):
            raise ValueError(
                f"keyframe table row {r} must be a list of {len(KEYFRAME_COLUMNS)} numbers, got {_show.repr(row)}"
            )
        if all(_is_blank(v) for v in row):
            continue
        if len(row) != len(KEYFRAME_COLUMNS):
            raise ValueError(
                f"keyframe table row {r} has {len(row)} values, expected {len(KEYFRAME_COLUMNS)} "
                f"({', '.join(KEYFRAME_COLUMNS)}): {_show.repr(list(row))}"
            )
        if len(out) == MAX_KEYFRAMES:
            raise ValueError(f"keyframe table row {r}: the table holds at most {MAX_KEYFRAMES} keyframes")
        vals = []
        for name, v in zip(KEYFRAME_COLUMNS, row):
            try:
                if isinstance(v, bool):
                    raise TypeError
                f = float(v.strip() if isinstance(v, str) else v)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"keyframe table row {r}, column {name!r}: {_show.repr(v)} is not a number") from None
            if not math.isfinite(f):
                raise ValueError(f"keyframe table row {r}, column {name!r}: {_show.repr(v)} is not finite")
            vals.append(f)
        if not 0.0 < vals[6] < 180.0:
            raise ValueError(f"keyframe table row {r}, column 'fov_x': {_show.repr(row[6])} is not in (0, 180) degrees")
        for name, (bound, why) in KEYFRAME_ANGLE_BOUNDS.items():
            v = vals[KEYFRAME_COLUMNS.index(name)]
            if abs(v) > bound:
                raise ValueError(f"keyframe table row {r}, column {name!r}: {v:g} is past +-{bound:g} degrees ({why})")
        out.append(Keyframe(tuple(vals[:3]), *vals[3:]))
    if not out:
        raise ValueError("the keyframe table is empty")
    return out


# ----------------------------------------------------------------------------- strokes
def _smooth_in_time(v: np.ndarray, sigma: float) -> np.ndarray:  # v [T, 3] -> [T, 3]
    """Gaussian smoothing over frames, repeating the end values (headings keep their final value)."""
    radius = int(3 * sigma) + 1
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(v[:1], radius, 0), v, np.repeat(v[-1:], radius, 0)])  # [T + 2 radius, 3]
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=-1)


def _smooth_polyline(p: np.ndarray, sigma: float) -> np.ndarray:  # p [n, 3] -> [n, 3], endpoints fixed
    """Gaussian smoothing with odd reflection at both ends (keeps the endpoints and end tangents)."""
    radius = min(int(3 * sigma) + 1, p.shape[0] - 1)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    left = 2 * p[0] - p[radius:0:-1]  # [radius, 3] reflected through p[0]
    right = 2 * p[-1] - p[-2 : -radius - 2 : -1]  # [radius, 3] reflected through p[-1]
    padded = np.concatenate([left, p, right])  # [n + 2 radius, 3]
    out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=-1)  # [n, 3]
    out[0], out[-1] = p[0], p[-1]  # analytically exact with odd reflection; remove rounding
    return out


def path_from_points(
    source: Camera,
    points_world: Tensor,  # [M, 3]
    num_frames: int,
    look: Look = "source",
    smoothing: float = 0.05,
) -> Cameras:
    """A path whose centre travels along the polyline ``points_world`` [M, 3] (world, metres).

    The path starts at the source centre; if ``points_world[0]`` is not it (within 1e-6 relative),
    the source centre is prepended. The polyline is resampled by arc length, smoothed with a
    Gaussian of ``smoothing`` x its length (0 disables) and traversed with an ease-in-out profile.
    look="source" keeps the source orientation; "forward" looks along the direction of travel,
    smoothed over frames (Gaussian, (T-1)/8 frames, so a corner turns over several frames), keeping
    the source's up and turning from the source orientation over the first quarter.
    """
    if not isinstance(source, Camera):
        raise TypeError(f"source must be a mirage.cameras.Camera, got {type(source).__name__}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    if look not in LOOKS:
        raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
    if not (0.0 <= float(smoothing) <= 0.5):
        raise ValueError(f"smoothing must be in [0, 0.5] (fraction of the path length), got {smoothing!r}")
    pts = points_world.detach().cpu() if isinstance(points_world, Tensor) else points_world
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 1 or pts.shape[1] != 3 or not np.isfinite(pts).all():
        raise ValueError(f"points_world must be a finite [M, 3] array with M >= 1, got shape {pts.shape}")
    src_from_world = _np(source.cam_from_world)  # [4, 4]
    p = pts @ src_from_world[:3, :3].T + src_from_world[:3, 3]  # [M, 3] in source coordinates
    scale = 1.0 + np.abs(p).max()
    if np.linalg.norm(p[0]) <= 1e-6 * scale:
        p[0] = 0.0
    else:
        p = np.concatenate([np.zeros((1, 3)), p])  # start at the source centre
    keep = np.concatenate([[True], np.linalg.norm(np.diff(p, axis=0), axis=-1) > 1e-9 * scale])
    p = p[keep]  # drop repeated points
    if p.shape[0] < 2:
        raise ValueError(f"the stroke has zero length (all points at the source centre): {pts.tolist()}")

    seg = np.linalg.norm(np.diff(p, axis=0), axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])  # [M'] arc length at each point
    n = max(256, 8 * T)
    s_dense = np.linspace(0.0, arc[-1], n)
    dense = np.stack([np.interp(s_dense, arc, p[:, k]) for k in range(3)], axis=-1)  # [n, 3]
    if smoothing > 0:
        dense = _smooth_polyline(dense, float(smoothing) * (n - 1))
    arc_d = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=-1))])  # [n]
    t = np.linspace(0.0, 1.0, T)
    s_frames = _ease(t) * arc_d[-1]  # [T] arc length at each frame
    c = np.stack([np.interp(s_frames, arc_d, dense[:, k]) for k in range(3)], axis=-1)  # [T, 3]

    R = np.broadcast_to(np.eye(3), (T, 3, 3)).copy()  # [T, 3, 3]
    if look == "forward":
        tangent = np.gradient(dense, axis=0)  # [n, 3]
        tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
        z = np.stack([np.interp(s_frames, arc_d, tangent[:, k]) for k in range(3)], axis=-1)  # [T, 3]
        z = _smooth_in_time(z, max(1.0, (T - 1) / 8))  # spread turns over frames, not metres
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # right = down x forward (source's down is +y)
        xn = np.linalg.norm(x, axis=-1)
        if (xn < 1e-6).any():
            i = int(np.nonzero(xn < 1e-6)[0][0])
            raise ValueError(f"frame {i}: direction of travel {z[i].tolist()} is vertical; use look='source'")
        x /= xn[:, None]
        R_fwd = np.stack([x, np.cross(z, x), z], axis=-1)  # [T, 3, 3] columns: right, down, forward
        w = _ease(np.clip(t / 0.25, 0.0, 1.0))  # [T] blend from the source orientation
        R = Rotation.from_rotvec(Rotation.from_matrix(R_fwd).as_rotvec() * w[:, None]).as_matrix()
    src_from_new = np.zeros((T, 4, 4))
    src_from_new[:, :3, :3], src_from_new[:, :3, 3], src_from_new[:, 3, 3] = R, c, 1.0
    src_from_new[0] = np.eye(4)  # frame 0 is the source (analytically; remove rounding)
    return _compose(source, src_from_new)


# ----------------------------------------------------------------------------- resampling and checks
def resample_path(cameras: Cameras, num_frames: int) -> Cameras:
    """``cameras`` (N >= 2, uniform in time) resampled to ``num_frames``: spline centres, slerp rotations.

    Output frame j sits at time ``j / (num_frames-1)`` of the input's ``[0, 1]``; where it coincides
    with an input frame (always the first and last) the input camera is copied exactly. fx, fy are
    interpolated in log space, cx, cy and skew linearly.
    """
    N = len(cameras)
    if N < 2:
        raise ValueError(f"resample_path needs at least 2 cameras, got {N}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    x_in = np.arange(N, dtype=np.float64) * (T - 1)  # common integer time axis (exact)
    x_out = np.arange(T, dtype=np.float64) * (N - 1)
    centres, R_wfc = _world_poses(cameras)
    if N == 2:
        w = (x_out / x_in[-1])[:, None]  # [T, 1]
        c = (1 - w) * centres[0] + w * centres[1]  # [T, 3]
    else:
        c = CubicSpline(x_in, centres, bc_type="natural")(x_out)  # [T, 3]
    R = Slerp(x_in, Rotation.from_matrix(R_wfc))(x_out).as_matrix()  # [T, 3, 3]
    K_in = _np(cameras.K)  # [N, 3, 3]
    K = np.zeros((T, 3, 3))
    for i, j in ((0, 0), (1, 1)):
        K[:, i, j] = np.exp(np.interp(x_out, x_in, np.log(K_in[:, i, j])))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        K[:, i, j] = np.interp(x_out, x_in, K_in[:, i, j])
    K[:, 2, 2] = 1.0
    out = _from_world_poses(c, R, K, cameras.width, cameras.height)
    K_out, T_out = out.K.clone(), out.cam_from_world.clone()
    for j in range(T):
        if (j * (N - 1)) % (T - 1) == 0:  # coincides with input frame i
            i = j * (N - 1) // (T - 1)
            K_out[j], T_out[j] = cameras.K[i].cpu(), cameras.cam_from_world[i].cpu()
    return Cameras(K_out, T_out, cameras.width, cameras.height).to(cameras.device)


def return_path(start: Camera, end: Camera, num_frames: int) -> Cameras:
    """``num_frames`` cameras from ``start`` to ``end`` (both exact) with the presets' ease-in-out: the
    centre on the straight line, the orientation by slerp, ``fx, fy`` in log space, ``cx, cy`` linearly
    (a "return to the start" from wherever a path ended)."""
    if (start.width, start.height) != (end.width, end.height):
        raise ValueError(f"start is {start.width}x{start.height}, end {end.width}x{end.height}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    both = Cameras.cat([start.batch(), end.batch()])  # [2]
    centres, R_wfc = _world_poses(both)  # [2, 3], [2, 3, 3]
    w = _ease(np.linspace(0.0, 1.0, T))  # [T] eased time
    c = (1 - w)[:, None] * centres[0] + w[:, None] * centres[1]  # [T, 3]
    R = Slerp([0.0, 1.0], Rotation.from_matrix(R_wfc))(w).as_matrix()  # [T, 3, 3]
    K2 = _np(both.K)  # [2, 3, 3]
    K = (1 - w)[:, None, None] * K2[0] + w[:, None, None] * K2[1]  # [T, 3, 3] cx, cy linearly
    for i in (0, 1):  # fx, fy in log space
        K[:, i, i] = np.exp((1 - w) * np.log(K2[0, i, i]) + w * np.log(K2[1, i, i]))
    cams = _from_world_poses(c, R, K, start.width, start.height)
    K_t, T_t = cams.K.clone(), cams.cam_from_world.clone()  # [T, 3, 3], [T, 4, 4]
    K_t[0], T_t[0], K_t[-1], T_t[-1] = start.K.cpu(), start.cam_from_world.cpu(), end.K.cpu(), end.cam_from_world.cpu()
    return Cameras(K_t, T_t, start.width, start.height)  # the ends exact, bitwise


def continued(path: CameraPath, segment: Cameras) -> CameraPath:
    """``path`` followed by ``segment``, whose first camera must be ``path``'s last (it is not repeated):
    ``len(path) + len(segment) - 1`` frames, still ``4N + 1``."""
    last = len(path) - 1
    if not (torch.equal(segment.K[0].cpu(), path.K[last].cpu()) and torch.equal(segment.cam_from_world[0].cpu(),
                                                                                path.cam_from_world[last].cpu())):  # fmt: skip
        raise ValueError("a continuation must start at the path's last camera exactly")
    check_num_frames(len(segment), min_latent_frames=2)
    return CameraPath.starting_at(path.source, Cameras.cat([path.to("cpu"), segment[1:].to("cpu")]))


def anchored_path(source: Camera, cameras: Cameras, num_frames: int) -> CameraPath:
    """A path that moves as ``cameras`` do (e.g. an imported file) but starts at ``source``.

    Poses are re-anchored to the first camera (``cam_t <- cam_t @ inverse(cam_0) @ source``) and so
    are intrinsics (``K_t <- source.K @ inverse(K_0) @ K_t``: a file's zoom and principal-point motion
    are kept relative to its first frame), then the path is resampled to ``num_frames``
    (``resample_path``). ``cameras`` must be at the source image size (rescale them first)."""
    if len(cameras) < 2:
        raise ValueError(f"a path needs at least 2 cameras, got {len(cameras)}")
    if (cameras.width, cameras.height) != (source.width, source.height):
        raise ValueError(f"cameras are {cameras.width}x{cameras.height}, the source is {source.width}x{source.height}")
    T = check_num_frames(num_frames, min_latent_frames=2)
    cfw = cameras.cam_from_world.double().cpu()  # [N, 4, 4]
    first_from_world = cfw[0]
    cam_from_src = cfw @ invert_rigid(first_from_world) @ source.cam_from_world.double().cpu()  # [N, 4, 4]
    K = source.K.double().cpu() @ torch.linalg.inv(cameras.K[0].double().cpu()) @ cameras.K.double().cpu()  # [N, 3, 3]
    K, cam_from_src = K.float(), cam_from_src.float()
    K[0], cam_from_src[0] = source.K.cpu(), source.cam_from_world.cpu()
    K[:, 2] = torch.tensor([0.0, 0.0, 1.0])  # exact last row after the round trip through the inverse
    K[:, 1, 0] = 0.0
    resampled = resample_path(Cameras(K, cam_from_src, source.width, source.height), T)
    return CameraPath.starting_at(source.to("cpu"), resampled).to(source.K.device)


def _surface_window_radius(height: int, width: int) -> int:
    """Half-size ``r`` of the ``(2r+1) x (2r+1)`` depth window of ``path_bounds_check``: about 1% of
    the longer image side (a fixed angle at any resolution), at least 2 (a 5 x 5 window)."""
    return max(2, round(max(height, width) / 100))


def _nearest_surface(depth, height: int, width: int) -> Tensor:  # -> [H, W] float64, inf where unknown
    """The smallest valid depth in the window around every pixel (``_surface_window_radius``)."""
    d = torch.as_tensor(depth.detach().cpu() if isinstance(depth, Tensor) else np.asarray(depth, dtype=np.float64))
    if tuple(d.shape) != (height, width):
        raise ValueError(
            f"depth must be [H, W] = [{height}, {width}] (the first camera's image size), got shape {tuple(d.shape)}"
        )
    d = d.double()
    d = torch.where(valid_depth(d), d, torch.full_like(d, math.inf))  # [H, W] invalid -> inf (never the nearest)
    r = _surface_window_radius(height, width)
    # Min filter as -max_pool(-d), separable (rows, then columns: the same minimum at 2k instead of k^2
    # comparisons per pixel); the padding is -inf in -d, so the border windows are just smaller.
    k = 2 * r + 1
    rows = F.max_pool2d(-d[None, None], kernel_size=(1, k), stride=1, padding=(0, r))  # [1, 1, H, W]
    return -F.max_pool2d(rows, kernel_size=(k, 1), stride=1, padding=(r, 0))[0, 0]  # [1, 1, H, W] -> [H, W]


def path_bounds_check(
    cameras: Cameras,
    scene_depth: float,
    margin: float = 0.1,
    depth: Tensor | np.ndarray | None = None,  # [H, W] metres seen by cameras[0], NaN/inf/<= 0 invalid
) -> None:
    """``ValueError`` if the path leaves the scene or a camera reaches its surface. Centres are taken
    in the first camera's frame (``cameras[0]``, a path's source), ``p = (x, y, z)``.

    * Distance: every centre must lie within ``MAX_PATH_DISTANCE * scene_depth`` (20x) of the first
      one. This bounds imported files with absurd translations, with or without ``depth``.
    * Surface, without ``depth``: the scene is taken to sit at the median depth ``scene_depth`` in
      front of the first camera; a centre with ``z >= (1 - margin) * scene_depth`` goes through it.
    * Surface, with ``depth`` (the first camera's depth map at its ``height x width``): a centre in
      front of the first camera (``z > 0``) that projects inside its image, at pixel
      ``(floor(u), floor(v))``, goes through the surface when ``z >= (1 - margin) * d_min``, ``d_min``
      the smallest valid depth in the ``(2r+1) x (2r+1)`` window around that pixel,
      ``r = max(2, round(max(H, W) / 100))`` (about 1% of the image either side: a fixed angle at any
      resolution, so a centre beside a depth edge counts the nearer side). A window with no valid
      depth falls back to the median rule. A centre behind the first camera or outside its image is
      not judged against the surface (no geometry is known there); the distance rule still holds.
    """
    d = _check_depth(scene_depth)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    centres, _ = _world_poses(cameras)  # [N, 3] world
    first = _np(cameras.cam_from_world[0])  # [4, 4]
    p = centres @ first[:3, :3].T + first[:3, 3]  # [N, 3] centres in the first camera's frame
    dist = np.linalg.norm(p, axis=-1)  # [N] metres from the first centre
    far = np.nonzero(dist > MAX_PATH_DISTANCE * d)[0]
    if far.size:
        i = int(far[0])
        raise ValueError(
            f"the path leaves the scene: frame {i} is {dist[i]:.4g} m from the source, more than "
            f"{MAX_PATH_DISTANCE:g}x the scene depth {d:.4g} m; reduce the motion"
        )
    z = p[:, 2]  # [N] depth of each centre in the first camera
    N = z.shape[0]
    surface = np.full(N, d)  # [N] depth of the surface each centre is judged against
    judged = np.ones(N, dtype=bool)  # [N]
    pixel: list[tuple[int, int] | None] = [None] * N  # (col, row) where the depth map judged it
    if depth is not None:
        W, H = cameras.width, cameras.height
        near = _nearest_surface(depth, H, W)  # [H, W]
        uv, _ = project_points(torch.from_numpy(centres), cameras.K[:1].cpu(), cameras.cam_from_world[:1].cpu())
        uv = uv[0].double().numpy()  # [1, N, 2] -> [N, 2] continuous coordinates
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)  # [N]
        judged = inside
        for i in np.nonzero(inside)[0]:
            col, row = int(uv[i, 0]), int(uv[i, 1])  # floor: both are >= 0
            d_min = float(near[row, col])
            if math.isfinite(d_min):
                surface[i], pixel[i] = d_min, (col, row)
    limit = (1.0 - margin) * surface  # [N]
    bad = np.nonzero(judged & (z >= limit))[0]
    if bad.size:
        i = int(bad[0])
        if pixel[i] is None:
            what = f"{1 - margin:.0%} of the scene depth {d:.4g} m"
        else:
            where = f"around pixel {pixel[i]}, {surface[i]:.4g} m"
            what = f"{1 - margin:.0%} of the nearest surface the first camera sees {where}"
        raise ValueError(
            f"frame {i} of the path is {z[i]:.4g} m along the first camera's optical axis, at or past "
            f"{limit[i]:.4g} m ({what}): the camera would go through the scene; reduce the motion"
        )
