"""The demo's session logic apart from the UI: scenes, camera paths, the offline readout preview.

``app.py`` only wires widgets to the functions here. A session holds one ``SceneState`` (kept in a
``gr.State``): the working image, its depth and source camera, the codec latent of the image and the
latent memory built from them, plus the current camera path. Changing the path only rebuilds the
3D figure; depth and encoding are never recomputed.

Offline (no Wan2.2 weights or no CUDA GPU) ``run_readout_preview`` runs both memories on the same
path, chunk by chunk (33 frames, then +32, as the generation pipeline does): read the latent memory
(one projection on the latent grid) and the RGB point cloud (rasterize every pixel frame + encode
with the same ``OfflineCodec``), decode both readouts with the offline codec, then update each memory
with its own readout of the chunk's latent-aligned frames (readout latents + readout depth for the
latent memory; rendered frames + rendered depth for the RGB memory). There is no generative model:
holes stay holes, but the stage timings and the cache growth are real. With weights and a GPU,
``run_generation`` runs ``mirage.pipeline.MiragePipeline`` for both memories with one seed instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import camera_io, paths, plotting, strokes, video
from .cameras import Camera, Cameras, fov_from_intrinsics, intrinsics_from_fov, invert_rigid
from .codecs import WAN22_MODEL_ID, OfflineCodec, check_num_frames, chunk_ranges
from .depth import FileDepth, PlanarPriorBackend, make_depth_backend, weights_available
from .examples import EXAMPLES, load_example
from .geometry import valid_depth
from .images import choose_resolution, fit_image_depth_camera, image_to_uint8, load_image
from .memory import LatentSpatialMemory, RGBPointCloudMemory

__all__ = [
    "AppMode",
    "DEPTH_CHOICES",
    "LONG_SIDES",
    "FRAME_CHOICES",
    "MAX_FRAMES",
    "METHOD_LABELS",
    "MODEL_PATH_ENV",
    "PreviewResult",
    "RawScene",
    "ResultFiles",
    "SceneState",
    "SessionDirs",
    "build_scene",
    "require_scene",
    "check_frame_count",
    "chunk_ranges",
    "default_keyframe_rows",
    "detect_mode",
    "editor_value",
    "export_path",
    "find_model_weights",
    "gpu_duration",
    "imported_path",
    "keyframe_path",
    "preset_path",
    "raw_from_example",
    "raw_from_upload",
    "result_figures",
    "load_pipeline",
    "run_generation",
    "run_readout_preview",
    "scene_figure",
    "scene_summary",
    "set_path",
    "stroke_path",
    "write_result_files",
]

MODEL_PATH_ENV = "MIRAGE_MODEL_PATH"  # local diffusers folder of Wan2.2-TI2V-5B (else the HF cache is searched)
_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")  # what MiragePipeline loads
OFFLINE_ENV = "MIRAGE_OFFLINE"  # "1" forces offline mode even when weights and a GPU exist
LONG_SIDES = (256, 384, 512)  # preview working sizes (long side); 1280 (704x1280) only with the GPU pipeline
FULL_LONG_SIDE = 1280
FRAME_CHOICES = (33, 65, 97, 129, 161)  # 4N+1 path lengths offered in the UI
MAX_FRAMES = 161  # longest path accepted (5 chunks)
CHUNK_FRAMES = 33  # frames of the first chunk; later chunks add 32
FPS = 16
METHOD_LABELS = {"latent": "Latent memory (Mirage)", "rgb": "Pixel point cloud (baseline)"}
ColorBy = Literal["latent", "image"]
DepthChoice = Literal["auto", "depth-pro", "upload", "ground-truth", "planar-prior"]
DEPTH_CHOICES: dict[str, str] = {  # UI label -> DepthChoice
    "Automatic (uploaded map > ground truth > Depth Pro > planar prior)": "auto",
    "Depth Pro (needs its weights)": "depth-pro",
    "Uploaded depth map (.npy metres / 16-bit PNG mm)": "upload",
    "Example's ground truth": "ground-truth",
    "Planar prior (placeholder geometry, NOT an estimate)": "planar-prior",
}
Progress = Callable[..., object]  # progress(fraction in [0, 1], desc=str), e.g. a gr.Progress


# ----------------------------------------------------------------------------------------- mode
def find_model_weights(cache_dir: str | Path | None = None) -> tuple[str | None, str]:
    """(folder of the Wan2.2-TI2V-5B diffusers checkpoint or None, one line saying where we looked).

    ``$MIRAGE_MODEL_PATH`` when set (it must hold ``transformer/`` and ``vae/``), else the Hugging Face
    cache entry of ``WAN22_MODEL_ID``. Never touches the network."""
    env = os.environ.get(MODEL_PATH_ENV, "").strip()
    if env:
        ok = all((Path(env) / sub).is_dir() for sub in _SUBFOLDERS)
        return (env if ok else None), f"${MODEL_PATH_ENV}={env!r}" + ("" if ok else f" lacks one of {'/ '.join(_SUBFOLDERS)}/")
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(WAN22_MODEL_ID, "model_index.json", cache_dir=cache_dir)
    except Exception as err:  # a broken cache is reported, not fatal
        return None, f"HF cache lookup of {WAN22_MODEL_ID} failed: {err}"
    if isinstance(hit, str):
        folder = str(Path(hit).parent)
        if all((Path(folder) / sub).is_dir() for sub in _SUBFOLDERS):
            return folder, f"HF cache ({folder})"
        return None, f"HF cache has {WAN22_MODEL_ID}/model_index.json but not all of {'/ '.join(_SUBFOLDERS)}/"
    return None, f"no {WAN22_MODEL_ID} in the HF cache and ${MODEL_PATH_ENV} is unset"


@dataclass(frozen=True)
class AppMode:
    """What this process can run."""

    generation: bool  # Wan2.2 weights and a CUDA GPU found: Generate runs the diffusion pipeline
    model_path: str | None  # folder of the Wan2.2 checkpoint, when found
    cuda: bool  # a CUDA device is available
    depth_pro: bool  # Depth Pro weights found locally
    why: str  # one line: where the weights were looked for / why generation is off

    @property
    def name(self) -> str:
        return "generation (Wan2.2 + GPU)" if self.generation else "offline readout preview"

    def banner(self) -> str:
        """Markdown for the top of the page: the active mode and what needs weights."""
        if self.generation:
            gen = (
                f"**Mode: generation.** Wan2.2-TI2V-5B found ({self.model_path}) and a CUDA GPU: Generate runs "
                "the diffusion model with each memory."
            )
        else:
            gen = (
                "**Mode: offline readout preview** (no generative model). Generate shows what each memory *reads out* "
                "along the path, decoded with the weight-free offline codec; the stage timings and cache sizes are real. "
                f"Generation needs the Wan2.2-TI2V-5B weights and a CUDA GPU ({self.why}; CUDA "
                f"{'available' if self.cuda else 'not available'})."
            )
        depth = (
            "Depth Pro weights found: automatic depth uses Depth Pro."
            if self.depth_pro
            else "Depth Pro weights not found: uploads use the **planar prior** (placeholder geometry, not an estimate) "
            "unless you upload a depth map; the examples use their ground-truth depth."
        )
        return f"{gen}\n\n{depth}"


def detect_mode(cache_dir: str | Path | None = None) -> AppMode:
    """Look for weights and a GPU (no network). ``MIRAGE_OFFLINE=1`` forces offline mode."""
    folder, why = find_model_weights(cache_dir)
    cuda = torch.cuda.is_available() or os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")  # ZeroGPU
    depth_pro = weights_available("depth-pro")
    forced = os.environ.get(OFFLINE_ENV, "").strip() in ("1", "true", "True")
    if forced:
        why = f"${OFFLINE_ENV} is set"
    return AppMode(generation=bool(folder) and cuda and not forced, model_path=folder, cuda=cuda, depth_pro=depth_pro, why=why)


# ----------------------------------------------------------------------------- session temp dirs
class SessionDirs:
    """One temporary folder per session under ``root``, created on first use and removed when the
    session ends. Without ``root`` a fresh temp folder is made (and removed at exit); a given root
    is kept, only the session folders made in it are removed."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.owned = root is None  # True: root was made here and goes at exit
        self.root = Path(tempfile.mkdtemp(prefix="mirage-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        atexit.register(self.remove_all)

    def get(self, session: str) -> Path:
        if not session or any(c in session for c in "/\\."):
            raise ValueError(f"session id must be a plain name, got {session!r}")
        with self._lock:
            folder = self.root / session
            folder.mkdir(parents=True, exist_ok=True)
            self._sessions.add(session)
            return folder

    def remove(self, session: str | None) -> bool:
        """Delete the session's folder; True if it existed."""
        if not session or session not in self._sessions:
            return False
        with self._lock:
            folder = self.root / session
            existed = folder.is_dir()
            shutil.rmtree(folder, ignore_errors=True)
            self._sessions.discard(session)
        return existed

    def remove_all(self) -> None:
        for session in list(self._sessions):
            self.remove(session)
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------- scenes
@dataclass
class RawScene:
    """An input at its own resolution, with the depth chosen for it (kept to re-fit at another size)."""

    name: str  # example name or uploaded file name
    image: Tensor  # [3, H0, W0] in [-1, 1]
    depth: Tensor  # [H0, W0] metres (camera z), NaN where invalid
    K: Tensor  # [3, 3] intrinsics at W0 x H0 (continuous convention)
    depth_source: str  # human-readable origin of the depth, e.g. "ground truth"
    credit: str = ""  # attribution to show


_DEPTH_PRO = {}  # loaded Depth Pro backend, shared by sessions
_DEPTH_PRO_LOCK = threading.Lock()


def _depth_pro():
    with _DEPTH_PRO_LOCK:
        if "backend" not in _DEPTH_PRO:
            _DEPTH_PRO["backend"] = make_depth_backend("depth-pro")
        return _DEPTH_PRO["backend"]


def _choice(depth_choice: str) -> str:
    key = DEPTH_CHOICES.get(depth_choice, depth_choice)
    if key not in DEPTH_CHOICES.values():
        raise ValueError(f"unknown depth source {depth_choice!r}; choose one of {list(DEPTH_CHOICES.values())}")
    return key


def _short_error(err: Exception, path: str | Path) -> ValueError:
    """The library's message with a server temp path replaced by the file's name."""
    return ValueError(str(err).replace(str(path), Path(path).name))


def raw_from_example(name: str, depth_choice: str = "auto") -> RawScene:
    """A bundled example; ``auto`` uses its ground truth, or Depth Pro / the planar prior without one."""
    image, depth, camera = load_example(name)  # [3, H, W], [H, W] | None
    key = _choice(depth_choice)
    scene = next(s for s in EXAMPLES if s.name == name)
    if key == "upload":
        raise ValueError("an uploaded depth map goes with an uploaded image; pick another depth source for examples")
    if key in ("auto", "ground-truth") and depth is not None:
        return RawScene(name, image, depth, camera.K, "ground truth", scene.credit)
    if key == "ground-truth":
        raise ValueError(f"example {name!r} has no ground-truth depth; choose Automatic, Depth Pro or the planar prior")
    est = _estimate(image, camera.K, key)
    return RawScene(name, image, est[0], est[1], est[2], scene.credit)


def _estimate(image: Tensor, K: Tensor | None, key: str, fov_x_deg: float = 60.0) -> tuple[Tensor, Tensor, str]:
    """Depth Pro (``depth-pro``, or ``auto`` with weights) or the planar prior -> (depth, K, label)."""
    if key == "depth-pro" or (key == "auto" and weights_available("depth-pro")):
        if not weights_available("depth-pro"):
            raise ValueError(
                "Depth Pro weights are not available on this machine (offline); choose the planar prior or upload a depth map"
            )
        est = _depth_pro().estimate(image, K)
        return est.depth, est.K, "Depth Pro"
    est = PlanarPriorBackend(fov_x_deg=fov_x_deg).estimate(image, K)
    return est.depth, est.K, "planar prior (placeholder geometry, not a depth estimate)"


def raw_from_upload(
    image_file: str | Path | None,
    depth_file: str | Path | None = None,
    depth_choice: str = "auto",
    fov_x_deg: float = 60.0,
) -> RawScene:
    """An uploaded image (any size / mode ``load_image`` reads) with its depth source.

    Intrinsics: Depth Pro estimates them; otherwise a centred camera with ``fov_x_deg``."""
    if image_file is None:
        raise ValueError("no image uploaded: upload an image or click an example")
    try:
        image = load_image(image_file)  # [3, H0, W0]
    except (ValueError, FileNotFoundError) as err:
        raise _short_error(err, image_file) from None
    _, H0, W0 = image.shape
    key = _choice(depth_choice)
    name = Path(image_file).name
    if key == "ground-truth":
        raise ValueError("uploaded images have no ground-truth depth: upload a depth map or choose another source")
    if key == "upload" or (key == "auto" and depth_file is not None):
        if depth_file is None:
            raise ValueError("depth source is 'uploaded depth map' but no depth file was uploaded")
        try:
            est = FileDepth(depth_file, fov_x_deg=fov_x_deg, resize=True).estimate(image)
        except (ValueError, FileNotFoundError) as err:
            raise _short_error(err, depth_file) from None
        return RawScene(name, image, est.depth, est.K, f"uploaded depth map ({Path(depth_file).name})")
    K = None if key in ("auto", "depth-pro") and weights_available("depth-pro") else intrinsics_from_fov(W0, H0, fov_x_deg)
    depth, K, label = _estimate(image, K, key, fov_x_deg)
    return RawScene(name, image, depth, K, label)


@dataclass
class SceneState:
    """One session's scene at the working resolution; the app keeps it in a ``gr.State``."""

    raw: RawScene  # the input at its own resolution
    image: Tensor  # [3, H, W] in [-1, 1], fitted to the model aspect
    depth: Tensor  # [H, W] metres, NaN where invalid
    camera: Camera  # source camera at W x H, identity pose (world = source camera frame)
    latent: Tensor  # [C, 1, h, w] offline-codec latent of the image
    memory: LatentSpatialMemory  # initialized from latent + depth; drawn in the 3D view
    colors: Tensor  # [N, 3] uint8 image colour of each memory point (mean over its cell)
    scene_depth: float  # median valid depth, metres (scales presets, bounds the path)
    path: Cameras | None = None  # current camera path (T = 4N + 1 frames at W x H)
    path_label: str = ""  # how the path was made, for captions and file names
    result: "PreviewResult | None" = None  # last run on this path
    version: int = 0  # bumped when the path changes (stale results are not shown)
    workdir: Path | None = None  # this session's temporary folder (set by the app)

    @property
    def size(self) -> tuple[int, int]:  # (H, W)
        return tuple(self.image.shape[1:])


def cell_colors(frames: Tensor, cells: Tensor, stride: int = 16) -> Tensor:
    """Mean colour of the given latent cells, in the memory's point order.

    frames: ``[3, F, H, W]`` in [-1, 1]; cells: ``[F, h, w]`` bool, e.g. ``memory.last_added``.
    Returns ``[M, 3]`` uint8, row-major over ``(F, h, w)`` as ``LatentSpatialMemory.update`` appends."""
    mean = F.avg_pool2d(frames.permute(1, 0, 2, 3).float(), stride)  # [3, F, H, W] -> [F, 3, H, W] -> [F, 3, h, w]
    rgb = ((mean.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # [F, h, w, 3]
    return rgb[cells.to(rgb.device)]  # [M, 3]


def build_scene(raw: RawScene, long_side: int = 512, codec: OfflineCodec | None = None) -> SceneState:
    """Fit the input to the model aspect at ``long_side``, encode it and build its latent memory."""
    if long_side not in LONG_SIDES + (FULL_LONG_SIDE,):
        raise ValueError(f"working size (long side) must be one of {LONG_SIDES + (FULL_LONG_SIDE,)}, got {long_side!r}")
    codec = codec or OfflineCodec()
    H, W = choose_resolution(raw.image.shape[1], raw.image.shape[2], long_side=long_side)
    image, depth, K = fit_image_depth_camera(raw.image, raw.depth, raw.K, W, H)  # [3, H, W], [H, W], [3, 3]
    if not valid_depth(depth).any():
        raise ValueError(f"the depth of {raw.name!r} has no valid pixel after fitting to {W}x{H}")
    camera = Camera(K, torch.eye(4), W, H)
    latent = codec.encode(image[None, :, None])[0]  # [1, 3, 1, H, W] -> [C, 1, h, w]
    memory = LatentSpatialMemory(spatial_stride=codec.spatial_stride, temporal_stride=codec.temporal_stride)
    memory.initialize(latent, depth, camera)
    colors = cell_colors(image[:, None], memory.last_added, codec.spatial_stride)  # [N, 3]
    scene_depth = float(depth[valid_depth(depth)].median())
    return SceneState(raw, image, depth, camera, latent, memory, colors, scene_depth)


def editor_value(state: SceneState) -> dict:
    """The ``gr.ImageEditor`` value showing the working image with no stroke."""
    return {"background": image_to_uint8(state.image), "layers": [], "composite": None}


def scene_summary(state: SceneState) -> str:
    """Markdown lines describing the loaded scene and the current path."""
    H, W = state.size
    fov = fov_from_intrinsics(state.camera.K, W)
    lines = [
        f"**{state.raw.name}** — working size {W}x{H} (latent grid {W // 16}x{H // 16}), horizontal field of view {fov:.1f}°.",
        f"Depth: **{state.raw.depth_source}**; median {state.scene_depth:.2f} m. Latent cache: {state.memory.num_points:,} points, "
        f"{state.memory.nbytes / 2**20:.3f} MiB.",
    ]
    if state.raw.credit:
        lines.append(f"<small>{state.raw.credit}</small>")
    if state.path is not None:
        lines.append(f"Path: **{state.path_label}**, {len(state.path)} frames.")
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------------------- paths
def check_frame_count(num_frames, max_frames: int = MAX_FRAMES) -> int:
    """The frame count as an int: ``4N + 1``, at least 5 and at most ``max_frames``."""
    try:
        n = int(str(num_frames).strip()) if not isinstance(num_frames, (int, np.integer)) else int(num_frames)
    except ValueError:
        raise ValueError(f"frame count must be a whole number like 33, 65 or 97, got {num_frames!r}") from None
    if n > max_frames:
        raise ValueError(f"too many frames: {n} (at most {max_frames} in this mode, i.e. {(max_frames - 1) // 32} chunks)")
    return paths.check_path_frames(n)


def require_scene(state: SceneState | None) -> SceneState:
    if state is None:
        raise ValueError("no scene yet: click an example or upload an image first")
    return state


def set_path(state: SceneState, cameras: Cameras, label: str, max_frames: int = MAX_FRAMES) -> SceneState:
    """Validate ``cameras`` for this scene (size, frame count, stays out of the scene) and make it current."""
    state = require_scene(state)
    H, W = state.size
    if (cameras.width, cameras.height) != (W, H):
        raise ValueError(f"the path is for {cameras.width}x{cameras.height} images, the scene is {W}x{H}")
    check_frame_count(len(cameras), max_frames)
    paths.path_bounds_check(cameras, state.scene_depth)
    state.path, state.path_label = cameras, label
    state.result = None
    state.version += 1
    return state


def preset_path(state: SceneState, preset: str, amount: float | None, num_frames, max_frames: int = MAX_FRAMES) -> SceneState:
    state = require_scene(state)
    T = check_frame_count(num_frames, max_frames)
    cams = paths.make_preset_path(preset, state.camera, T, amount, state.scene_depth)
    unit = paths.PRESETS[preset].unit
    amount_text = f"{paths.PRESETS[preset].default if amount is None else amount:g} {unit}"
    return set_path(state, cams, f"preset {preset} ({amount_text})", max_frames)


def stroke_path(
    state: SceneState, editor, num_frames, depth_fraction: float = 0.5, look: str = "source", max_frames: int = MAX_FRAMES
) -> SceneState:
    """The camera travels along a stroke drawn on the image, lifted to ``depth_fraction`` x the depth under it."""
    state = require_scene(state)
    T = check_frame_count(num_frames, max_frames)
    if editor is None:
        raise ValueError("no stroke drawn: draw a line on the image with the brush first")
    H, W = state.size
    K = state.camera.K
    start = (float(K[0, 2]), float(K[1, 2]))  # the stroke starts at its end nearer the principal point
    pixels = strokes.stroke_pixels_from_layers(editor, 16, target_size=(H, W), start_near=start)  # [16, 2] (u, v)
    points = strokes.lift_stroke(pixels, state.depth, state.camera, float(depth_fraction))  # [16, 3] world
    cams = paths.path_from_points(state.camera, points, T, look=look)
    return set_path(state, cams, f"stroke ({depth_fraction:.0%} of the depth, look {look})", max_frames)


def default_keyframe_rows(state: SceneState) -> list[list[float]]:
    """Three keyframes for the table: the source pose, then a move right and forward turning left."""
    state = require_scene(state)
    d, fov = state.scene_depth, fov_from_intrinsics(state.camera.K, state.size[1])
    rows = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, fov], [0.1 * d, 0.0, 0.1 * d, 6.0, 0.0, 0.0, fov],
            [0.2 * d, -0.05 * d, 0.2 * d, 12.0, 3.0, 0.0, fov]]  # fmt: skip
    return [[round(v, 4) for v in row] for row in rows]


def keyframe_path(state: SceneState, rows, num_frames, max_frames: int = MAX_FRAMES) -> SceneState:
    """Keyframe table rows ``x y z yaw pitch roll fov_x`` (world = source camera frame), interpolated."""
    state = require_scene(state)
    T = check_frame_count(num_frames, max_frames)
    keys = paths.keyframes_from_table(rows)
    if len(keys) < 2:
        raise ValueError(f"the keyframe table needs at least 2 keyframes, got {len(keys)}")
    H, W = state.size
    cams = paths.interpolate_keyframes(keys, T, W, H)
    return set_path(state, cams, f"{len(keys)} keyframes", max_frames)


def imported_path(state: SceneState, file: str | Path | None, num_frames, max_frames: int = MAX_FRAMES) -> SceneState:
    """A RealEstate10K ``.txt``, nerfstudio ``transforms.json`` or mirage JSON path.

    Poses are made relative to the file's first camera (which becomes the source pose), intrinsics
    are kept (rescaled to the working size), and the path is resampled to ``num_frames``."""
    state = require_scene(state)
    T = check_frame_count(num_frames, max_frames)
    if file is None:
        raise ValueError("no path file uploaded: choose a .txt (RealEstate10K) or .json (nerfstudio / mirage) file")
    H, W = state.size
    try:
        cams = camera_io.load_path_file(file, W, H)
    except (ValueError, FileNotFoundError) as err:
        raise _short_error(err, file) from None
    if len(cams) < 2:
        raise ValueError(f"{Path(file).name}: a path needs at least 2 cameras, the file has {len(cams)}")
    first_from_world = cams.cam_from_world[0].double()  # [4, 4]
    cam_from_first = cams.cam_from_world.double() @ invert_rigid(first_from_world)  # [N, 4, 4]
    cams = paths.resample_path(Cameras(cams.K, cam_from_first.float(), W, H), T)
    return set_path(state, cams, f"imported {Path(file).name}", max_frames)


def export_path(state: SceneState, folder: Path) -> list[Path]:
    """The current path as RealEstate10K ``.txt``, nerfstudio ``transforms.json`` and mirage JSON."""
    state = require_scene(state)
    if state.path is None:
        raise ValueError("no camera path yet: make one with a preset, a stroke, keyframes or an import")
    files = camera_io.export_path_files(state.path, folder, "camera_path", fps=FPS)
    return [files["re10k"], files["nerfstudio"], files["mirage"]]


# --------------------------------------------------------------------------------------- figures
def _colors(memory: LatentSpatialMemory, image_colors: Tensor, color_by: str) -> Tensor:  # -> [N, 3] uint8
    if color_by == "image":
        return image_colors
    if color_by != "latent":
        raise ValueError(f"color_by must be 'latent' or 'image', got {color_by!r}")
    return torch.as_tensor(plotting.pca_colors(memory.features.float()))


def scene_figure(state: SceneState, color_by: ColorBy = "latent"):
    """The latent point cache with the path's frusta (or the source camera alone)."""
    state = require_scene(state)
    cams = state.path if state.path is not None else state.camera.batch()
    how = "PCA of latent features" if color_by == "latent" else "image colours"
    fig = plotting.cache_figure(state.memory.points, _colors(state.memory, state.colors, color_by), cams,
                                title=f"Latent cache, {how}")  # fmt: skip
    return fig.update_layout(height=460)


# --------------------------------------------------------------------------------------- preview
@dataclass
class PreviewResult:
    """Both memories along one path: decoded readouts (or generated videos), masks, timings, sizes."""

    kind: Literal["readout preview", "generation"]  # what the videos are
    videos: dict[str, Tensor]  # method -> [3, T, H, W] in [-1, 1]
    readouts: dict[str, Tensor]  # method -> [3, T, H, W] decoded memory readout (== videos offline)
    masks: dict[str, Tensor]  # method -> [T, H, W] bool, True where the memory saw the pixel
    timings: dict[str, list[dict[str, float]]]  # method -> per chunk {stage: seconds}
    sizes: dict[str, list[int]]  # method -> cache bytes after init and after each chunk
    memory: LatentSpatialMemory  # the latent memory after the last update
    memory_colors: Tensor  # [N, 3] uint8 image colour of each latent point (PCA colour after generation)
    counts: list[int]  # latent memory points after init and after each chunk
    ranges: list[tuple[int, int]]  # chunk (start, stop) pixel frames
    seconds: float = 0.0  # wall time of the whole run

    def hole_fraction(self, method: str) -> float:
        return 1.0 - float(self.masks[method].float().mean())


def _stitch(parts: list[Tensor], dim: int) -> Tensor:
    """Concatenate chunk outputs, dropping the first frame of every later chunk (shared with the previous)."""
    return torch.cat([p if i == 0 else p.narrow(dim, 1, p.shape[dim] - 1) for i, p in enumerate(parts)], dim=dim)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_readout_preview(
    state: SceneState,
    cameras: Cameras | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    progress: Progress | None = None,
    codec: OfflineCodec | None = None,
) -> PreviewResult:
    """Read both memories along the path chunk by chunk and decode the readouts (module docstring).

    cameras: ``T = 4N + 1`` pixel-frame cameras at the scene size (default: the scene's path).
    Memories start from the scene's image each run; the scene's own memory is not modified."""
    state = require_scene(state)
    cameras = cameras if cameras is not None else state.path
    if cameras is None:
        raise ValueError("no camera path yet: make one with a preset, a stroke, keyframes or an import")
    codec = codec or OfflineCodec()
    H, W = state.size
    T = len(cameras)
    check_num_frames(T)
    ranges = chunk_ranges(T, chunk_frames)
    ts = codec.temporal_stride
    report = progress or (lambda *a, **k: None)
    t_run = time.perf_counter()

    latent_mem = LatentSpatialMemory(spatial_stride=codec.spatial_stride, temporal_stride=ts)
    latent_mem.initialize(state.latent, state.depth, state.camera)
    rgb_mem = RGBPointCloudMemory(codec, surface_tolerance=latent_mem.surface_tolerance)
    rgb_mem.initialize(state.image, state.depth, state.camera)
    colors = [state.colors]
    timings: dict[str, list[dict[str, float]]] = {"latent": [], "rgb": []}
    videos: dict[str, list[Tensor]] = {"latent": [], "rgb": []}
    masks: dict[str, list[Tensor]] = {"latent": [], "rgb": []}

    for c, (start, stop) in enumerate(ranges):
        chunk = cameras[start:stop]  # [T_c] pixel-frame cameras
        new_cams = chunk[ts::ts]  # [F_c - 1] latent-aligned frames 4k, k >= 1 (frame 0 is already stored)
        base = c / len(ranges)
        report(base, desc=f"chunk {c + 1}/{len(ranges)}: latent memory readout (project)")
        lat = latent_mem.read(chunk)  # latents [C, F, h, w], mask [F, h, w], depth [F, h, w]
        lat_video, t_dec = _timed(lambda: codec.decode(lat.latents[None])[0])  # [3, T_c, H, W]
        lat_new_depth = lat.depth[1:]  # [F-1, h, w] readout depth, NaN where hidden
        latent_mem.update(lat.latents[:, 1:], lat_new_depth, new_cams)
        new_colors = cell_colors(lat_video[:, ts::ts], latent_mem.last_added, codec.spatial_stride)  # [added, 3]
        colors.append(new_colors)
        timings["latent"].append({**lat.timings, "decode": t_dec, "update": latent_mem.timings.last["update"]})
        videos["latent"].append(lat_video)
        masks["latent"].append(video.upsample_latent_mask(lat.mask.cpu(), stop - start, H, W, ts))

        report(base + 0.4 / len(ranges), desc=f"chunk {c + 1}/{len(ranges)}: pixel point cloud readout (rasterize + encode)")
        rgb = rgb_mem.read(chunk)  # renders [3, T_c, H, W], pixel_mask [T_c, H, W], latents [C, F, h, w]
        rgb_video, t_dec = _timed(lambda: codec.decode(rgb.latents[None])[0])  # [3, T_c, H, W]
        frames = rgb.renders[:, ts::ts]  # [3, F-1, H, W] rendered latent-aligned frames

        depth = rgb.pixel_depth[ts::ts]  # [F-1, H, W] the rendered depth of those frames
        rgb_mem.update(frames, depth, new_cams)
        timings["rgb"].append({**rgb.timings, "decode": t_dec, "update": rgb_mem.timings.last["update"]})
        videos["rgb"].append(rgb_video)
        masks["rgb"].append(rgb.pixel_mask.cpu())
        report((c + 1) / len(ranges), desc=f"chunk {c + 1}/{len(ranges)} done")

    stitched = {m: _stitch(v, 1) for m, v in videos.items()}  # [3, T, H, W]
    return PreviewResult(
        kind="readout preview",
        videos=stitched,
        readouts=stitched,
        masks={m: _stitch(v, 0) for m, v in masks.items()},  # [T, H, W]
        timings=timings,
        sizes={m: [s["nbytes"] for s in mem.size_history] for m, mem in (("latent", latent_mem), ("rgb", rgb_mem))},
        memory=latent_mem,
        memory_colors=torch.cat(colors),
        counts=[s["num_points"] for s in latent_mem.size_history],
        ranges=ranges,
        seconds=time.perf_counter() - t_run,
    )


# ------------------------------------------------------------------------------------ generation
def gpu_duration(num_frames: int, steps: int) -> int:
    """Seconds to reserve on a ZeroGPU for both memories: about 0.25 s per DiT step and 6 s per chunk
    for decode/depth/update on an H100 at 704x1280, doubled (two runs), plus 60 s to load."""
    chunks = len(chunk_ranges(int(num_frames)))
    return int(60 + 2 * chunks * (0.25 * int(steps) + 6))


_PIPELINE: dict = {}  # the loaded MiragePipeline, shared by sessions
_PIPELINE_LOCK = threading.Lock()


def load_pipeline(model_path: str, device: str = "cuda"):  # pragma: no cover - needs the Wan2.2 weights
    """``MiragePipeline`` from ``model_path`` on ``device``, loaded once per process. Memory updates
    need depth: Depth Pro when its weights are cached, else the (labelled) planar prior."""
    from .pipeline import MiragePipeline

    with _PIPELINE_LOCK:
        if _PIPELINE.get("key") != (model_path, device):
            depth = "depth-pro" if weights_available("depth-pro") else "planar-prior"
            pipe = MiragePipeline.from_pretrained(model_path, depth_backend=depth).to(device)
            _PIPELINE.update(key=(model_path, device), pipe=pipe)
        return _PIPELINE["pipe"]


def run_generation(
    state: SceneState,
    pipe,  # a mirage.pipeline.MiragePipeline
    *,
    seed: int = 0,
    steps: int = 20,
    prompt: str | None = "",
    prompt_embeds: Tensor | None = None,  # [1, L, D] instead of prompt (pipelines without a text encoder)
    progress: Progress | None = None,
) -> PreviewResult:
    """Generate along the scene's path with ``pipe`` for both memories, with the same seed.

    The readout videos are each chunk's memory readout decoded with the pipeline's VAE. The point
    colours of the result are PCA colours: the pixels behind generated points are not tracked."""
    state = require_scene(state)
    if state.path is None:
        raise ValueError("no camera path yet: make one with a preset, a stroke, keyframes or an import")
    report = progress or (lambda *a, **k: None)
    T, (H, W) = len(state.path), state.size
    n_chunks = len(chunk_ranges(T))
    device = pipe._execution_device
    outs = {}
    for i, method in enumerate(("latent", "rgb")):
        def step(c, s, n, i=i, method=method):
            report((i + (c + s / n) / n_chunks) / 2, desc=f"{METHOD_LABELS[method]}: chunk {c + 1}/{n_chunks}, step {s}/{n}")

        outs[method] = pipe(
            state.image, state.path, None if prompt_embeds is not None else prompt, prompt_embeds=prompt_embeds,
            num_frames=T, num_inference_steps=int(steps), memory=method, image_depth=state.depth,
            generator=torch.Generator(device).manual_seed(int(seed)), callback=step,
        )
    readouts, masks = {}, {}
    for method, out in outs.items():
        parts = [pipe.codec.decode(r.latents[None])[0].float().cpu() for r in out.readouts]  # [3, T_c, H, W]
        readouts[method] = _stitch(parts, 1)
        parts = [video.upsample_latent_mask(r.mask.cpu(), b - a, H, W) for r, (a, b) in zip(out.readouts, out.frame_ranges)]
        masks[method] = _stitch(parts, 0)  # [T, H, W]
    mem = outs["latent"].memory
    stages = set(plotting.STAGE_ORDER)  # "readout" holds its parts (project / rasterize / encode): chart the parts
    return PreviewResult(
        kind="generation",
        videos={m: o.video for m, o in outs.items()},
        readouts=readouts,
        masks=masks,
        timings={m: [{k: v for k, v in t.items() if k in stages} for t in o.chunk_timings] for m, o in outs.items()},
        sizes={m: [o.memory.size_history[0]["nbytes"], *o.cache_bytes] for m, o in outs.items()},
        memory=mem,
        memory_colors=torch.as_tensor(plotting.pca_colors(mem.features.float().cpu())),
        counts=[s["num_points"] for s in mem.size_history],
        ranges=list(outs["latent"].frame_ranges),
    )


# ---------------------------------------------------------------------------------- result files
@dataclass
class ResultFiles:
    """Files written for one result (all in one session folder)."""

    videos: dict[str, Path]  # method -> result video (.mp4)
    readouts: dict[str, Path]  # method -> readout video (.mp4); the same file as videos offline
    masks: dict[str, Path]  # method -> hole-mask video (.mp4)
    side_by_side: Path  # both results with labels (.mp4)
    cache_ply: Path  # latent cache as binary PLY
    cache_safetensors: Path  # latent cache, reloadable with LatentSpatialMemory.load
    path_files: list[Path]  # RealEstate10K .txt, nerfstudio .json, mirage .json

    def downloads(self) -> list[Path]:
        seen = dict.fromkeys([self.side_by_side, *self.videos.values(), *self.readouts.values(), *self.masks.values(),
                              self.cache_ply, self.cache_safetensors, *self.path_files])  # fmt: skip
        return list(seen)


def write_result_files(state: SceneState, result: PreviewResult, folder: Path) -> ResultFiles:
    """Write the videos, the side-by-side video, the latent cache and the path into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = "readout" if result.kind == "readout preview" else "generated"
    videos = {m: video.write_video(folder / f"{m}_{tag}.mp4", v, FPS) for m, v in result.videos.items()}
    readouts = dict(videos) if result.kind == "readout preview" else {
        m: video.write_video(folder / f"{m}_readout.mp4", v, FPS) for m, v in result.readouts.items()
    }
    masks = {m: video.write_video(folder / f"{m}_holes.mp4", video.mask_to_video(k), FPS) for m, k in result.masks.items()}
    suffix = " (readout preview)" if result.kind == "readout preview" else ""
    labels = [f"{METHOD_LABELS[m]}{suffix}" for m in ("latent", "rgb")]
    sbs = video.side_by_side([result.videos["latent"], result.videos["rgb"]], labels)  # [3, T, H, 2W + gap]
    side = video.write_video(folder / f"side_by_side_{tag}.mp4", sbs, FPS)
    ply = result.memory.to_ply(folder / "latent_cache.ply", colors=result.memory_colors)
    st = result.memory.save(folder / "latent_cache.safetensors")
    path_files = export_path(state, folder)
    return ResultFiles(videos, readouts, masks, side, ply, st, path_files)


def result_figures(state: SceneState, result: PreviewResult, color_by: ColorBy = "latent"):
    """(timing figure, cache size figure, cache growth figure) of a result."""
    what = "readout preview, no generative model" if result.kind == "readout preview" else "generation"
    timings = {METHOD_LABELS[m]: t for m, t in result.timings.items()}
    timing = plotting.timing_figure(timings, aggregate="per_chunk", title=f"Time per stage and chunk ({what})")
    sizes = {METHOD_LABELS[m]: s for m, s in result.sizes.items()}
    sizes = plotting.cache_size_figure(sizes, title="Cache size after each chunk")
    growth = plotting.cache_growth_figure(
        result.memory.points, _colors(result.memory, result.memory_colors, color_by), result.counts,
        state.path, title="Latent cache as it grew",
    ).update_layout(height=560)
    return timing, sizes, growth


def result_caption(result: PreviewResult) -> str:
    """One markdown paragraph per method: what the video is, holes, cache size, time."""
    lines = []
    for m in ("latent", "rgb"):
        total = sum(sum(t.values()) for t in result.timings[m])
        lines.append(
            f"**{METHOD_LABELS[m]}** — holes {result.hole_fraction(m):.1%} of pixels, cache {result.sizes[m][-1] / 2**20:.2f} MiB "
            f"after {len(result.ranges)} chunk(s), {total:.2f} s in the charted stages."
        )
    if result.kind == "readout preview":
        lines.append(
            "These are **readout previews**: what each memory returns along the path, decoded with the offline codec. "
            "No generative model runs, so unseen regions stay empty (grey); each memory is updated with its own readout "
            "and the depth that came with it (no depth estimation offline)."
        )
    return "\n\n".join(lines)


@dataclass
class RunOutputs:
    """Everything the app shows after a run."""

    files: ResultFiles  # videos, cache and path files
    figures: tuple  # (timing, cache size, cache growth) plotly figures
    caption: str  # markdown under the videos


def finish_run(state: SceneState, result: PreviewResult, folder: Path, color_by: ColorBy = "latent") -> RunOutputs:
    """Write the files and figures of ``result``; keep a slim copy (no videos) in ``state.result``
    so that the colour toggle can redraw the growth figure without holding the videos in memory."""
    files = write_result_files(state, result, folder)
    out = RunOutputs(files, result_figures(state, result, color_by), result_caption(result))
    result.videos, result.readouts, result.masks = {}, {}, {}
    state.result = result
    return out
