"""A scene for the demo and for scripted runs: one input image with its depth and source camera at a
working size, its latent memory, and the current camera path.

``build_scene`` fits an input (``RawScene``: an example or an upload at its own resolution) to the
model aspect at a working size, encodes it with a codec and initializes a ``LatentSpatialMemory``
for the 3D view (``mirage.chunks.start_memory``). Paths come from presets, strokes, keyframes or
files; every one is a ``mirage.paths.CameraPath`` of the scene's source camera, checked against the
scene when it is set (``set_path``) together with how it was made (``PathRecipe``). Changing the path
never recomputes depth or encoding. What a user session keeps beside a scene (its folder, its last
result, the controls' last accepted values) is the app's (``app_runtime.Session``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from . import camera_io, paths, plotting, strokes
from .cameras import Camera, Cameras, fov_from_intrinsics, intrinsics_from_fov
from .chunks import start_memory
from .codecs import OfflineCodec, VideoCodec
from .depth import FileDepth, PlanarPriorBackend, make_depth_backend, weights_available
from .examples import EXAMPLES, load_example
from .families import FAMILIES
from .frames import TEMPORAL_STRIDE
from .geometry import unproject_depth, valid_depth
from .images import choose_resolution, fit_image_depth_camera, image_to_uint8, load_image
from .memory import LatentSpatialMemory, make_memory
from .paths import CameraPath

__all__ = [
    "DepthChoice",
    "DEPTH_CHOICE_KEYS",
    "LONG_SIDES",
    "FULL_LONG_SIDE",
    "GPU_SIZES",
    "ColorBy",
    "RawScene",
    "SceneState",
    "raw_from_example",
    "raw_from_upload",
    "build_scene",
    "usable_depth",
    "compact_raw",
    "rebuild_at",
    "recipe_at",
    "require_scene",
    "require_path",
    "PathRecipe",
    "set_path",
    "preset_path",
    "stroke_path",
    "STROKE_FRACTIONS",
    "stroke_depth_limit",
    "default_keyframe_rows",
    "keyframe_path",
    "imported_path",
    "SegmentKind",
    "SEGMENT_KINDS",
    "continue_path",
    "export_path",
    "point_colors",
    "scene_figure",
    "scene_summary",
]

DepthChoice = Literal["auto", "depth-pro", "upload", "ground-truth", "planar-prior"]
DEPTH_CHOICE_KEYS: tuple[str, ...] = get_args(DepthChoice)
LONG_SIDES = (256, 384, 512)  # preview working sizes (long side); GPU_SIZES for the GPU pipeline
FULL_LONG_SIDE = 1280
FULL_SIZE = (704, 1280)  # (short, long) sides of the model resolution: no input needs more than covers it
# The GPU working sizes, long side -> short side: the model's 704x1280 and each family's own (Spatia: 704x1248)
GPU_SIZES: dict[int, int] = {size[1]: size[0] for size in [FULL_SIZE] + [f.defaults.size for f in FAMILIES.values()]}
DEPTH_RANGE_M = (1e-3, 1e5)  # plausible metric depth (1 mm .. 100 km); values outside are invalid
MIN_DEPTH_COVERAGE = 0.1  # fraction of the source view that needs valid depth for a usable scene
ColorBy = Literal["latent", "image"]
COLOR_BY: tuple[str, ...] = get_args(ColorBy)
STROKE_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 19))  # the stroke slider's grid: 5% .. 90% of the depth
NO_PATH = "no camera path yet: make one with a preset, a stroke, keyframes or an import"
PLANAR_PRIOR_LABEL = "planar prior (placeholder geometry, not a depth estimate)"


@dataclass
class RawScene:
    """An input at its own resolution, with the depth chosen for it (kept to re-fit at another size)."""

    name: str  # example name or uploaded file name
    image: Tensor  # [3, H0, W0] in [-1, 1]
    depth: Tensor  # [H0, W0] metres (camera z), NaN where invalid
    K: Tensor  # [3, 3] intrinsics at W0 x H0 (continuous convention)
    depth_source: str  # human-readable origin of the depth, e.g. "ground truth"
    credit: str = ""  # attribution to show


_DEPTH_PRO: dict[str, Any] = {}  # loaded Depth Pro backend, shared by every scene of the process
_DEPTH_PRO_LOCK = threading.Lock()


def _depth_pro():
    with _DEPTH_PRO_LOCK:
        if "backend" not in _DEPTH_PRO:
            _DEPTH_PRO["backend"] = make_depth_backend("depth-pro")
        return _DEPTH_PRO["backend"]


def _check_choice(depth_choice: str) -> DepthChoice:
    if depth_choice not in DEPTH_CHOICE_KEYS:
        raise ValueError(f"unknown depth source {depth_choice!r}; choose one of {list(DEPTH_CHOICE_KEYS)}")
    return depth_choice  # type: ignore[return-value]


def _short_error(err: Exception, path: str | Path) -> ValueError:
    """The library's message with a server temp path replaced by the file's name."""
    return ValueError(str(err).replace(str(path), Path(path).name))


def _estimate(image: Tensor, K: Tensor | None, key: DepthChoice, fov_x_deg: float = 60.0) -> tuple[Tensor, Tensor, str]:
    """Depth Pro (``depth-pro``, or ``auto`` with weights) or the planar prior -> (depth, K, label)."""
    if key == "depth-pro" or (key == "auto" and weights_available("depth-pro")):
        if not weights_available("depth-pro"):
            raise ValueError(
                "Depth Pro weights are not available on this machine (offline); choose the planar prior or upload a depth map"
            )
        est = _depth_pro().estimate(image, K)
        return est.depth, est.K, "Depth Pro"
    est = PlanarPriorBackend(fov_x_deg=fov_x_deg).estimate(image, K)
    return est.depth, est.K, PLANAR_PRIOR_LABEL


def raw_from_example(name: str, depth_choice: DepthChoice = "auto") -> RawScene:
    """A bundled example; ``auto`` uses its ground truth, or Depth Pro / the planar prior without one."""
    image, depth, camera = load_example(name)  # [3, H, W], [H, W] | None
    key = _check_choice(depth_choice)
    example = next(s for s in EXAMPLES if s.name == name)
    if key == "upload":
        raise ValueError("an uploaded depth map goes with an uploaded image; pick another depth source for examples")
    if key in ("auto", "ground-truth") and depth is not None:
        return RawScene(name, image, depth, camera.K, "ground truth", example.credit)
    if key == "ground-truth":
        raise ValueError(f"example {name!r} has no ground-truth depth; choose Automatic, Depth Pro or the planar prior")
    depth, K, label = _estimate(image, camera.K, key)
    return RawScene(name, image, depth, K, label, example.credit)


def raw_from_upload(
    image_file: str | Path | None,
    depth_file: str | Path | None = None,
    depth_choice: DepthChoice = "auto",
    fov_x_deg: float = 60.0,
) -> RawScene:
    """An uploaded image (any size / mode ``load_image`` reads) with its depth source.

    Intrinsics: Depth Pro estimates them; otherwise a centred camera with ``fov_x_deg``."""
    if image_file is None:
        raise ValueError("no image uploaded: upload an image or click an example")
    try:
        image = load_image(image_file, cover=FULL_SIZE)  # [3, H0, W0], shrunk while decoding to what 704x1280 needs
    except (ValueError, FileNotFoundError) as err:
        raise _short_error(err, image_file) from None
    _, H0, W0 = image.shape
    key = _check_choice(depth_choice)
    name = Path(image_file).name
    if key == "ground-truth":
        raise ValueError("uploaded images have no ground-truth depth: upload a depth map or choose another source")
    if key == "upload" or (key == "auto" and depth_file is not None):
        if depth_file is None:
            raise ValueError("depth source is 'uploaded depth map' but no depth file was uploaded")
        try:
            est = FileDepth(depth_file, fov_x_deg=fov_x_deg, resize=True, cover=FULL_SIZE).estimate(image)  # [H0, W0]
        except (ValueError, FileNotFoundError) as err:
            raise _short_error(err, depth_file) from None
        return RawScene(name, image, est.depth, est.K, f"uploaded depth map ({Path(depth_file).name})")
    K = None if key in ("auto", "depth-pro") and weights_available("depth-pro") else intrinsics_from_fov(W0, H0, fov_x_deg)
    depth, K, label = _estimate(image, K, key, fov_x_deg)
    return RawScene(name, image, depth, K, label)


@dataclass
class SceneState:
    """One scene at the working resolution with its current path."""

    raw: RawScene  # the input at its own resolution
    image: Tensor  # [3, H, W] in [-1, 1], fitted to the model aspect
    depth: Tensor  # [H, W] metres, NaN where invalid
    camera: Camera  # source camera at W x H, identity pose (world = source camera frame)
    latent: Tensor  # [C, 1, h, w] codec latent of the image
    memory: LatentSpatialMemory  # initialized from latent + depth; drawn in the 3D view
    colors: Tensor  # [N, 3] uint8 image colour of each memory point (mean over its cell)
    scene_depth: float  # median valid depth, metres (scales presets, bounds the path)
    path: CameraPath | None = None  # current camera path (T = 4N + 1 frames at W x H, frame 0 = camera)
    path_label: str = ""  # how the path was made, for captions and file names
    recipe: "PathRecipe | None" = None  # how to make the path again (another frame count, other stroke settings)

    @property
    def size(self) -> tuple[int, int]:  # (H, W)
        return tuple(self.image.shape[1:])


def build_scene(raw: RawScene, long_side: int = 512, codec: VideoCodec | None = None) -> SceneState:
    """Fit the input to the model aspect at ``long_side``, encode it and build its latent memory."""
    if long_side not in LONG_SIDES + tuple(GPU_SIZES):
        raise ValueError(f"working size (long side) must be one of {LONG_SIDES + tuple(GPU_SIZES)}, got {long_side!r}")
    codec = codec or OfflineCodec()
    H, W = choose_resolution(raw.image.shape[1], raw.image.shape[2], long_side=long_side, short_side=GPU_SIZES.get(long_side))
    image, depth, K = fit_image_depth_camera(raw.image, raw.depth, raw.K, W, H)  # [3, H, W], [H, W], [3, 3]
    depth = usable_depth(depth, raw)  # [H, W]
    camera = Camera(K, torch.eye(4), W, H)
    memory = make_memory("latent", codec=codec)
    latent, stored = start_memory(memory, camera, image, depth, codec.encode)  # [1, C, 1, h, w]
    colors = stored.colors(image[:, None])  # [N, 3] the image colour of each point
    scene_depth = float(depth[valid_depth(depth)].median())
    return SceneState(raw, image, depth, camera, latent[0], memory, colors, scene_depth)


def usable_depth(depth: Tensor, raw: RawScene) -> Tensor:  # [H, W] metres -> [H, W], NaN outside DEPTH_RANGE_M
    """The depth of a scene's source view with implausible values (outside ``DEPTH_RANGE_M``) made
    invalid; ``ValueError`` when less than ``MIN_DEPTH_COVERAGE`` of the view is left, since a memory
    built from it would hold almost nothing (a map of 1e-30 m, or a single valid pixel)."""
    lo, hi = DEPTH_RANGE_M
    valid = valid_depth(depth)  # [H, W]
    plausible = valid & (depth >= lo) & (depth <= hi)
    coverage = float(plausible.float().mean())
    if coverage < MIN_DEPTH_COVERAGE:
        seen = f"its valid values span {float(depth[valid].min()):.3g} to {float(depth[valid].max()):.3g} m" if valid.any() else "it has no valid value"
        raise ValueError(
            f"the depth of {raw.name!r} ({raw.depth_source}) leaves the source view without usable geometry: "
            f"{coverage:.2%} of it has a depth between {lo:g} and {hi:g} m (at least {MIN_DEPTH_COVERAGE:.0%} is needed; "
            f"{seen})"
        )  # fmt: skip
    return torch.where(plausible, depth, torch.full_like(depth, float("nan")))


def compact_raw(raw: RawScene, long_side: int) -> RawScene:
    """``raw`` fitted to the model aspect at ``long_side``, the largest working size it will be built
    at, when it is larger than that: a session keeps no more of its input than it can use."""
    _, H0, W0 = raw.image.shape
    H, W = choose_resolution(H0, W0, long_side=long_side)
    if H0 * W0 <= H * W:
        return raw
    image, depth, K = fit_image_depth_camera(raw.image, raw.depth, raw.K, W, H)  # [3, H, W], [H, W], [3, 3]
    return replace(raw, image=image.contiguous(), depth=depth.contiguous(), K=K)


def rebuild_at(state: SceneState, long_side: int) -> SceneState:
    """The same input at another working size, with the same path motion from the new source camera
    (the fit's crop can differ between sizes, so the path is re-anchored, not only rescaled)."""
    new = build_scene(require_scene(state).raw, long_side)
    H, W = new.size
    if state.path is not None:
        motion = Cameras.rescaled(state.path, W, H)  # [T] the old path at the new size
        path = paths.anchored_path(new.camera, motion, len(state.path))
        set_path(new, path, state.path_label, recipe=recipe_at(state.recipe, new.camera, state.camera))
    return new


def recipe_at(recipe: "PathRecipe | None", new_camera: Camera, old_camera: Camera) -> "PathRecipe | None":
    """``recipe`` (made for the scene seen by ``old_camera``) for the same input fitted as
    ``new_camera`` sees it: a stroke's pixels go through the fits' pixel map ``K_new @ K_old^-1``
    (scale and crop), an import's cameras are rescaled; presets and keyframes do not depend on it."""
    if recipe is None or recipe.kind in ("preset", "keyframes"):
        return recipe
    if recipe.kind == "stroke":
        new_from_old = new_camera.K.double().cpu() @ torch.linalg.inv(old_camera.K.double().cpu())  # [3, 3]
        uv1 = torch.cat([recipe.stroke.double(), torch.ones(len(recipe.stroke), 1, dtype=torch.float64)], 1)  # [16, 3]
        return replace(recipe, stroke=(uv1 @ new_from_old.T)[:, :2].to(recipe.stroke.dtype))  # [16, 2]
    return replace(recipe, cameras=Cameras.rescaled(recipe.cameras, new_camera.width, new_camera.height))


def scene_summary(state: SceneState) -> str:
    """Markdown lines describing the loaded scene and the current path."""
    H, W = state.size
    fov = fov_from_intrinsics(state.camera.K, W)
    s = state.memory.spatial_stride
    lines = [
        f"**{state.raw.name}** — working size {W}x{H} (latent grid {W // s}x{H // s}), horizontal field of view {fov:.1f}°.",
        f"Depth: **{state.raw.depth_source}**; median {state.scene_depth:.2f} m. Latent cache: {state.memory.num_points:,} points, "
        f"{state.memory.nbytes / 2**20:.3f} MiB.",
    ]
    if state.raw.credit:
        lines.append(f"<small>{state.raw.credit}</small>")
    if state.path is not None:
        lines.append(f"Path: **{state.path_label}**, {len(state.path)} frames.")
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------------------- paths
def require_scene(state: SceneState | None) -> SceneState:
    if state is None:
        raise ValueError("no scene yet: click an example or upload an image first")
    return state


def require_path(state: SceneState | None) -> CameraPath:
    """The scene's current path; ``ValueError`` saying how to make one when there is none."""
    path = require_scene(state).path
    if path is None:
        raise ValueError(NO_PATH)
    return path


@dataclass(frozen=True)
class PathRecipe:
    """How the current path was made, to make it again with another frame count or other settings
    (the app applies a control's change at once, whatever made the path)."""

    kind: Literal["preset", "stroke", "keyframes", "import", "continued"]
    preset: str = ""  # preset: its name
    amount: float | None = None  # preset: its amount (None = the preset's default)
    stroke: Tensor | None = None  # stroke: [16, 2] (u, v) pixels at the working size
    depth_fraction: float = 0.5  # stroke: how far towards the surface under it
    look: str = "source"  # stroke: keep the source view or look along the stroke
    depth_limit: float | None = None  # stroke: the largest fraction that keeps this stroke's camera out of the scene
    keyframes: tuple = ()  # keyframes: the parsed table (mirage.paths.Keyframe, the source first)
    cameras: Cameras | None = None  # import / continued: the cameras at the working size
    name: str = ""  # import: the file's name; continued: what was added


def remake_path(state: SceneState, num_frames: int, max_frames: int | None = None, **changes: Any) -> SceneState:
    """Make the current path again with ``num_frames`` frames and ``changes`` to its recipe (e.g.
    ``depth_fraction`` of a stroke path); the path is unchanged when this raises."""
    if require_scene(state).recipe is None:
        raise ValueError(NO_PATH)
    r = replace(state.recipe, **changes)
    if r.kind == "preset":
        return preset_path(state, r.preset, r.amount, num_frames, max_frames)
    if r.kind == "stroke":
        return _stroke_path(state, r.stroke, num_frames, r.depth_fraction, r.look, max_frames)
    if r.kind == "keyframes":
        return _keyframe_path(state, list(r.keyframes), num_frames, max_frames)
    if r.kind == "continued":  # the whole path resampled (its segments keep their share of the frames)
        return set_path(state, paths.anchored_path(state.camera, r.cameras, num_frames), r.name, max_frames, r)
    return _anchored_import(state, r.cameras, r.name, num_frames, max_frames)


def set_path(state: SceneState, path: CameraPath, label: str, max_frames: int | None = None,
             recipe: PathRecipe | None = None) -> SceneState:  # fmt: skip
    """Make ``path`` current after checking it belongs to this scene (its source is the scene's
    camera), fits the frame limit and stays out of the scene; nothing changes when it is refused."""
    state = require_scene(state)
    if not isinstance(path, CameraPath):
        raise ValueError(f"a scene's path must be a mirage.paths.CameraPath, got {type(path).__name__}")
    H, W = state.size
    if (path.width, path.height) != (W, H):
        raise ValueError(f"the path is for {path.width}x{path.height} images, the scene is {W}x{H}")
    CameraPath.starting_at(state.camera, path)  # frame 0 must be this scene's camera
    if max_frames is not None and len(path) > max_frames:
        raise ValueError(f"too many frames: {len(path)} (at most {max_frames})")
    paths.path_bounds_check(path, state.scene_depth, depth=state.depth)  # against the surface each camera crosses
    state.path, state.path_label, state.recipe = path, label, recipe
    return state


def preset_path(state: SceneState, preset: str, amount: float | None, num_frames: int, max_frames: int | None = None) -> SceneState:
    state = require_scene(state)
    path = paths.make_preset_path(preset, state.camera, num_frames, amount, state.scene_depth, depth=state.depth)
    info = paths.PRESETS[preset]
    amount_text = f"{info.default if amount is None else amount:g} {info.unit}"
    return set_path(state, path, f"preset {preset} ({amount_text})", max_frames, PathRecipe("preset", preset=preset, amount=amount))


def stroke_path(
    state: SceneState, editor_layers: Any, num_frames: int, depth_fraction: float = 0.5, look: str = "source",
    max_frames: int | None = None,
) -> SceneState:  # fmt: skip
    """The camera travels along a stroke drawn on the image, lifted to ``depth_fraction`` x the depth under it.
    editor_layers: what ``mirage.strokes.stroke_pixels_from_layers`` reads (an image editor's value)."""
    state = require_scene(state)
    if editor_layers is None:
        raise ValueError("no stroke drawn: draw a line on the image with the brush first")
    H, W = state.size
    K = state.camera.K
    start = (float(K[0, 2]), float(K[1, 2]))  # the stroke starts at its end nearer the principal point
    pixels = strokes.stroke_pixels_from_layers(editor_layers, 16, target_size=(H, W), start_near=start)  # [16, 2] (u, v)
    return _stroke_path(state, pixels, num_frames, depth_fraction, look, max_frames)


def _stroke_path(state: SceneState, pixels: Tensor, num_frames: int, depth_fraction: float, look: str,
                 max_frames: int | None) -> SceneState:  # fmt: skip
    """The camera along stroke ``pixels [16, 2]`` (u, v at the working size) lifted to ``depth_fraction``."""
    if not 0.0 < float(depth_fraction) < 1.0:
        raise ValueError(f"the stroke's depth fraction must be between 0 and 1 (exclusive), got {depth_fraction!r}")
    if look not in paths.LOOKS:
        raise ValueError(f"look must be one of {paths.LOOKS}, got {look!r}")
    path = _lifted_path(state, pixels, num_frames, float(depth_fraction), look)
    try:
        paths.path_bounds_check(path, state.scene_depth, depth=state.depth)
    except ValueError:
        limit = stroke_depth_limit(state, pixels, num_frames, look)
        reach = "no distance works for it: draw it elsewhere" if limit is None else f"it works up to {limit:.0%}"
        raise ValueError(f"at {float(depth_fraction):.0%} of the depth under this stroke the camera would pass through "
                         f"the scene; {reach}.") from None  # fmt: skip
    recipe = PathRecipe("stroke", stroke=pixels, depth_fraction=float(depth_fraction), look=look,
                        depth_limit=stroke_depth_limit(state, pixels, num_frames, look, start=float(depth_fraction)))  # fmt: skip
    return set_path(state, path, f"stroke ({depth_fraction:.0%} of the depth, look {look})", max_frames, recipe)


def _lifted_path(state: SceneState, pixels: Tensor, num_frames: int, depth_fraction: float, look: str) -> CameraPath:
    points = strokes.lift_stroke(pixels, state.depth, state.camera, depth_fraction)  # [16, 3] world
    return paths.path_from_points(state.camera, points, num_frames, look=look)


def stroke_depth_limit(state: SceneState, pixels: Tensor, num_frames: int, look: str, start: float = 0.0) -> float | None:
    """The largest depth fraction on the stroke slider's grid (``STROKE_FRACTIONS``) at which the
    stroke ``pixels [16, 2]`` keeps the camera out of the scene; None when none does. Searched down
    from the top of the grid to ``start`` (a fraction known to work, so the answer is at least it)."""
    for fraction in reversed(STROKE_FRACTIONS):
        if fraction <= start:  # known to work: not checked again
            return start
        try:
            paths.path_bounds_check(_lifted_path(state, pixels, num_frames, fraction, look), state.scene_depth, depth=state.depth)
            return fraction
        except ValueError:
            continue
    return None


def default_keyframe_rows(state: SceneState) -> list[list[float]]:
    """Three keyframes for the table: the source camera, then a move right and forward turning left."""
    state = require_scene(state)
    d, fov = state.scene_depth, fov_from_intrinsics(state.camera.K, state.size[1])
    rows = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, fov], [0.1 * d, 0.0, 0.1 * d, 6.0, 0.0, 0.0, fov],
            [0.2 * d, -0.05 * d, 0.2 * d, 12.0, 3.0, 0.0, fov]]  # fmt: skip
    return [[round(v, 4) for v in row] for row in rows]


def keyframe_path(state: SceneState, rows: Any, num_frames: int, max_frames: int | None = None) -> SceneState:
    """Keyframe table rows ``x y z yaw pitch roll fov_x`` in the source camera's frame; the first row
    is the source camera (``mirage.paths.keyframe_path``)."""
    state = require_scene(state)
    keys = paths.keyframes_from_table(rows)
    if len(keys) < 2:
        raise ValueError(f"the keyframe table needs at least 2 keyframes, got {len(keys)}")
    return _keyframe_path(state, keys, num_frames, max_frames)


def _keyframe_path(state: SceneState, keys: list, num_frames: int, max_frames: int | None) -> SceneState:
    path = paths.keyframe_path(state.camera, keys, num_frames)
    return set_path(state, path, f"{len(keys)} keyframes", max_frames, PathRecipe("keyframes", keyframes=tuple(keys)))


def imported_path(state: SceneState, file: str | Path | None, num_frames: int, max_frames: int | None = None) -> SceneState:
    """A RealEstate10K ``.txt``, nerfstudio ``transforms.json`` or mirage JSON path, re-anchored to
    start at the scene's camera (``mirage.paths.anchored_path``) and resampled to ``num_frames``."""
    state = require_scene(state)
    if file is None:
        raise ValueError("no path file uploaded: choose a .txt (RealEstate10K) or .json (nerfstudio / mirage) file")
    H, W = state.size
    try:
        cams = camera_io.load_path_file(file, W, H)
    except (ValueError, FileNotFoundError) as err:
        raise _short_error(err, file) from None
    if len(cams) < 2:
        raise ValueError(f"{Path(file).name}: a path needs at least 2 cameras, the file has {len(cams)}")
    return _anchored_import(state, cams, Path(file).name, num_frames, max_frames)


def _anchored_import(state: SceneState, cams: Cameras, name: str, num_frames: int, max_frames: int | None) -> SceneState:
    path = paths.anchored_path(state.camera, cams, num_frames)
    return set_path(state, path, f"imported {name}", max_frames, PathRecipe("import", cameras=cams, name=name))


SegmentKind = Literal["preset", "return", "stroke", "keyframes"]
SEGMENT_KINDS: tuple[str, ...] = get_args(SegmentKind)


def continue_path(
    state: SceneState, kind: SegmentKind, num_frames: int, *, preset: str = "orbit_left", amount: float | None = None,
    editor: Any = None, depth_fraction: float = 0.5, look: str = "source", rows: Any = None, max_frames: int | None = None,
) -> SceneState:  # fmt: skip
    """The active path, then ``num_frames`` more frames (``4N + 1``, the first is the path's last camera):
    a preset from the last camera (``"preset"``), back to the source camera (``"return"``), along a
    stroke drawn on the image (``"stroke"``, lifted with the source depth as ``stroke_path``), or
    through keyframes given in the last camera's frame (``"keyframes"``). Checked as any path
    (``set_path``); nothing changes when it is refused."""
    path = require_path(state)
    last = path.camera(len(path) - 1)
    if kind == "preset":
        segment = paths.make_preset_path(preset, last, num_frames, amount, state.scene_depth)
        label = f"{preset} ({paths.PRESETS[preset].default if amount is None else amount:g} {paths.PRESETS[preset].unit})"
    elif kind == "return":
        segment, label = paths.return_path(last, state.camera, num_frames), "back to the start"
    elif kind == "stroke":
        if editor is None:
            raise ValueError("no stroke drawn: draw a line on the image with the brush first")
        if not 0.0 < float(depth_fraction) < 1.0:
            raise ValueError(f"the stroke's depth fraction must be between 0 and 1 (exclusive), got {depth_fraction!r}")
        H, W = state.size
        pixels = strokes.stroke_pixels_from_layers(editor, 16, target_size=(H, W),
                                                   start_near=(float(state.camera.K[0, 2]), float(state.camera.K[1, 2])))  # fmt: skip
        points = strokes.lift_stroke(pixels, state.depth, state.camera, float(depth_fraction))  # [16, 3] world
        segment, label = paths.path_from_points(last, points, num_frames, look=look), "a stroke"
    elif kind == "keyframes":
        keys = paths.keyframes_from_table(rows)
        segment, label = paths.keyframe_path(last, keys, num_frames), f"{len(keys)} keyframes"
    else:
        raise ValueError(f"a continuation is one of {SEGMENT_KINDS}, got {kind!r}")
    extended = paths.continued(path, segment)
    name = f"{state.path_label} + {label}"
    return set_path(state, extended, name, max_frames, PathRecipe("continued", cameras=extended, name=name))


def export_path(state: SceneState, folder: Path, fps: float = 16) -> list[Path]:
    """The current path as RealEstate10K ``.txt``, nerfstudio ``transforms.json`` and mirage JSON."""
    files = camera_io.export_path_files(require_path(state), folder, "camera_path", fps=fps)
    return [files["re10k"], files["nerfstudio"], files["mirage"]]


# --------------------------------------------------------------------------------------- figures
def point_colors(memory: LatentSpatialMemory, image_colors: Tensor, color_by: ColorBy) -> Tensor:  # -> [N, 3] uint8
    """Colours of the memory's points: their image colours, or a PCA of their latent features."""
    if color_by == "image":
        return image_colors
    if color_by != "latent":
        raise ValueError(f"color_by must be 'latent' or 'image', got {color_by!r}")
    return torch.as_tensor(plotting.pca_colors(memory.features.float()))


def scene_figure(state: SceneState, color_by: ColorBy = "image"):
    """The latent cache as its cells' footprints (quads in image colour, or PCA of the latent
    features), the pixel memory's cloud (every pixel with depth; hidden until picked in the legend)
    and the path's frusta (or the source camera alone), seen from the source camera at first."""
    state = require_scene(state)
    cams = state.path if state.path is not None else state.camera.batch()
    how = "PCA of latent features" if color_by == "latent" else "image colours"
    H, W = state.size
    N = state.memory.num_points
    source = state.camera.batch()  # every point of the scene's cache came from the source view
    cells = (source.cam_from_world.expand(N, 4, 4), source.K.expand(N, 3, 3), state.memory.spatial_stride)
    ok = valid_depth(state.depth)  # [H, W]
    pixels = unproject_depth(state.depth, source.K[0], source.world_from_cam[0])[ok]  # [M, 3] world
    pixel_colors = torch.from_numpy(image_to_uint8(state.image))[ok]  # [M, 3] uint8
    fig = plotting.cache_figure(state.memory.points, point_colors(state.memory, state.colors, color_by), cams,
                                title=f"Latent cache, {how}", frames=state.memory.frame_ids * TEMPORAL_STRIDE,
                                uirevision=f"{state.raw.name}-{W}x{H}", cells=cells, pixel_cloud=(pixels, pixel_colors),
                                from_source=True, max_points=20000)  # fmt: skip  # the view stays while the scene does
    return fig.update_layout(height=560)
