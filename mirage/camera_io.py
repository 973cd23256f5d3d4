"""Camera path import/export: RealEstate10K/CameraCtrl ``.txt``, nerfstudio ``transforms.json``, our JSON.

Every format round-trips a float32 :class:`~mirage.cameras.Cameras` bitwise: numbers are written with
``float.__repr__`` (shortest exact float64 text) and all arithmetic on the way is float64.

* RealEstate10K / CameraCtrl: line 1 is a URL/comment line; then one line per frame,
  ``timestamp fx fy cx cy 0 0 <3x4 cam_from_world, row-major>`` with fx, cx divided by the width
  and fy, cy by the height. Normalized intrinsics are resolution free, so ``cx = 0.5`` is the
  image centre in our continuous convention (pixel centres at ``u + 1/2``).
* nerfstudio: ``frames[i]["transform_matrix"]`` is camera-to-world in OpenGL axes (+x right, +y up,
  +z backward); ``world_from_cam_opencv = world_from_cam_opengl @ diag(1, -1, -1, 1)``. Pixel
  intrinsics ``fl_x, fl_y, cx, cy`` (per frame or global) use nerfstudio's pixel convention, which
  puts pixel centres at ``u + 0.5`` (rays through ``pixel_offset=0.5``) -- the same as ours, so
  ``cx, cy`` are copied unchanged. The file stores camera-to-world, so the translation passes
  through a float64 centre ``c = -R^-1 t`` (exact solve, not ``R^T``); reloading gives ``t`` back to
  ~1e-16 relative, which is bitwise in float32 except for a translation component ~1e-8 times
  smaller than the others (e.g. an exact 0 in a rotated camera), which comes back within 1e-15.
* mirage: ``{"format": "mirage-path", "version": 1, "width", "height", "fps",
  "frames": [{"K": 3x3, "cam_from_world": 4x4}]}``.

Malformed files raise ``ValueError`` naming the file (by its name only, never its folder: an
upload's temporary path is not the user's business), the line or frame and what is wrong. Hostile
files are refused before they cost memory or time: more than ``MAX_PATH_FILE_BYTES`` (checked from
the file system before reading), not UTF-8 text, JSON nested too deeply, more than
``MAX_PATH_CAMERAS`` cameras, or a camera translation that is absurd (``> MAX_TRANSLATION`` metres).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from mirage.cameras import Camera, Cameras

__all__ = [
    "MAX_PATH_CAMERAS",
    "MAX_PATH_FILE_BYTES",
    "MAX_TRANSLATION",
    "PathFormat",
    "export_path_files",
    "load_nerfstudio",
    "load_path_file",
    "load_path_json",
    "load_re10k",
    "save_nerfstudio",
    "save_path_json",
    "save_re10k",
]

PathFormat = Literal["re10k", "nerfstudio", "mirage"]
_GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z; its own inverse
_RE10K_COLUMNS = 19  # timestamp, fx fy cx cy, two zeros, 12 matrix entries
_NS_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_NS_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
_NS_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
MAX_PATH_FILE_BYTES = 2 * 2**20  # largest path file read (2 MiB: ~14k RealEstate10K lines of ~150 bytes)
MAX_PATH_CAMERAS = 10_000  # most cameras in a path file (a 10-minute video at 16 fps is 9600 frames)
MAX_TRANSLATION = 1e6  # metres; a larger |t| in cam_from_world is a unit or file error, not a camera path
_show = reprlib.Repr()  # reprs of file content in messages: bounded in length and nesting (no RecursionError)
_show.maxlevel, _show.maxstring, _show.maxother, _show.maxlist, _show.maxdict = 3, 40, 40, 6, 6


# ----------------------------------------------------------------------------- helpers
def _arrays(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:  # -> K [N, 3, 3], cam_from_world [N, 4, 4] float64
    if not isinstance(cameras, Cameras) or len(cameras) == 0:
        raise ValueError(f"expected a non-empty mirage.cameras.Cameras, got {cameras!r}")
    return cameras.K.detach().cpu().double().numpy(), cameras.cam_from_world.detach().cpu().double().numpy()


def _check_no_skew(K: np.ndarray, fmt: str) -> None:  # K [N, 3, 3]
    skewed = np.nonzero(K[:, 0, 1] != 0)[0]
    if skewed.size:
        i = int(skewed[0])
        raise ValueError(f"{fmt} cannot store skewed intrinsics: K[{i}][0][1] = {K[i, 0, 1]!r}")


def _cameras(Ks: list, Ts: list, width: int, height: int, where: list[str]) -> Cameras:
    """Validate frame by frame (so errors name the frame), then batch. Ks [3, 3] / Ts [4, 4] float64 arrays."""
    for K, T, w in zip(Ks, Ts, where):
        if not (np.isfinite(K).all() and np.isfinite(T).all()):
            raise ValueError(f"{w}: the camera has non-finite values (K {K.tolist()}, cam_from_world {T.tolist()})")
        t = math.hypot(*T[:3, 3].tolist())  # metres (no overflow); the centre's distance from the world origin
        if t > MAX_TRANSLATION:
            raise ValueError(f"{w}: camera translation |t| = {t:.4g} m is absurd (more than {MAX_TRANSLATION:.0e} m)")
        try:
            Camera(torch.from_numpy(K).float(), torch.from_numpy(T).float(), width, height)
        except ValueError as e:
            raise ValueError(f"{w}: {e}") from None
    K_all = torch.from_numpy(np.stack(Ks)).float()  # [N, 3, 3]
    T_all = torch.from_numpy(np.stack(Ts)).float()  # [N, 4, 4]
    return Cameras(K_all, T_all, width, height)


def _size(width, height, where: str) -> tuple[int, int]:
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height))
    if not ok:
        got = f"width={_show.repr(width)} height={_show.repr(height)}"
        raise ValueError(f"{where}: image size must be positive integers, got {got}")
    return int(width), int(height)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {_show.repr(value)} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {_show.repr(value)} is not finite")
    return float(value)


def _matrix(value, rows: int, cols: int, where: str) -> np.ndarray:  # nested lists -> [rows, cols]
    ok = isinstance(value, list) and len(value) == rows and all(isinstance(r, list) and len(r) == cols for r in value)
    if not ok:
        raise ValueError(f"{where}: expected a {rows}x{cols} list of lists, got {_show.repr(value)}")
    return np.array([[_number(v, f"{where}[{i}][{j}]") for j, v in enumerate(r)] for i, r in enumerate(value)])


def _read_text(path: Path) -> str:
    """The file's text, refused (``ValueError`` naming the file) when larger than ``MAX_PATH_FILE_BYTES``
    (checked before reading, and the read stops there) or not UTF-8 text."""
    if not path.is_file():
        raise FileNotFoundError(f"camera path file not found: {path.name}")
    size = path.stat().st_size
    if size > MAX_PATH_FILE_BYTES:
        raise ValueError(
            f"{path.name}: the file is {size} bytes, more than the limit of {MAX_PATH_FILE_BYTES} bytes "
            f"({MAX_PATH_FILE_BYTES / 2**20:g} MiB) for a camera path"
        )
    with open(path, "rb") as f:
        data = f.read(MAX_PATH_FILE_BYTES + 1)  # a file that grew after the check is still bounded
    if len(data) > MAX_PATH_FILE_BYTES:
        raise ValueError(f"{path.name}: the file is larger than the limit of {MAX_PATH_FILE_BYTES} bytes for a camera path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path.name} is not a text file (UTF-8): byte {e.start} is {data[e.start:e.start + 1]!r}") from None
    if "\x00" in text:
        raise ValueError(f"{path.name} is not a text file (UTF-8): it contains NUL bytes (binary data)")
    return text


def _read_json(path: Path) -> dict:
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path.name}: empty file")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path.name}: JSON nested too deeply (a camera path needs a few levels)") from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit limit
        raise ValueError(f"{path.name}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name}: expected a JSON object at the top level, got {type(meta).__name__}")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path.name}: missing or empty 'frames' list")
    if len(frames) > MAX_PATH_CAMERAS:
        raise ValueError(f"{path.name}: {len(frames)} frames, more than the limit of {MAX_PATH_CAMERAS} cameras")
    for i, f in enumerate(frames):
        if not isinstance(f, dict):
            raise ValueError(f"{path.name}: frames[{i}] must be a JSON object, got {_show.repr(f)}")
    return meta


def _write_json(path: Path, header: dict, frames: list[dict]) -> Path:
    """Pretty header, one frame per line; floats via ``float.__repr__`` (exact)."""
    head = json.dumps(header, indent=2)[:-2]  # drop the closing "\n}"
    body = ",\n".join("    " + json.dumps(f) for f in frames)
    path.write_text(head + ',\n  "frames": [\n' + body + "\n  ]\n}\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- RealEstate10K / CameraCtrl
def save_re10k(
    path: str | os.PathLike,
    cameras: Cameras,
    timestamps: Sequence[int | float] | None = None,
    url: str = "",
    fps: float = 16.0,
) -> Path:
    """Write a RealEstate10K/CameraCtrl camera file; ``url`` is line 1.

    timestamps: one per frame, microseconds as in RealEstate10K (default ``round(i * 1e6 / fps)``).
    """
    path = Path(path)
    K, cfw = _arrays(cameras)
    _check_no_skew(K, "RealEstate10K")
    if "\n" in url or "\r" in url:
        raise ValueError(f"url must be one line, got {url!r}")
    if timestamps is None:
        timestamps = [round(i * 1e6 / fps) for i in range(len(cameras))]
    if len(timestamps) != len(cameras):
        raise ValueError(f"{len(timestamps)} timestamps for {len(cameras)} cameras")
    W, H = cameras.width, cameras.height
    lines = [url]
    for i, ts in enumerate(timestamps):
        if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
            ts_text = str(int(ts))
        else:
            ts_text = repr(_number(ts, f"timestamps[{i}]"))
        intr = [K[i, 0, 0] / W, K[i, 1, 1] / H, K[i, 0, 2] / W, K[i, 1, 2] / H, 0.0, 0.0]
        values = intr + cfw[i, :3, :4].reshape(-1).tolist()  # 3x4 row-major
        lines.append(" ".join([ts_text] + [repr(float(v)) for v in values]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_re10k(path: str | os.PathLike, width: int, height: int) -> tuple[Cameras, list[int | float]]:
    """Read a RealEstate10K/CameraCtrl camera file at ``width x height``; returns (cameras, timestamps).

    Line 1 (URL/comment) is skipped, blank lines are ignored; integer timestamps stay ``int``.
    """
    path = Path(path)
    name = path.name
    W, H = _size(width, height, name)
    lines = _read_text(path).splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{name}: empty file")
    first = lines[0].split()
    if len(first) == _RE10K_COLUMNS and all(_is_float(t) for t in first):
        raise ValueError(f"{name}: line 1 looks like a camera line; RealEstate10K files start with a URL/comment line")
    Ks, Ts, stamps, where = [], [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens:
            continue
        if len(Ts) == MAX_PATH_CAMERAS:
            raise ValueError(f"{name}: line {lineno}: more than the limit of {MAX_PATH_CAMERAS} cameras")
        if len(tokens) != _RE10K_COLUMNS:
            raise ValueError(
                f"{name}: line {lineno}: expected {_RE10K_COLUMNS} columns (timestamp fx fy cx cy 0 0 and a "
                f"row-major 3x4 world-to-camera matrix), got {len(tokens)}"
            )
        values = []
        for col, tok in enumerate(tokens, start=1):
            if not _is_float(tok) or not math.isfinite(float(tok)):
                raise ValueError(f"{name}: line {lineno}, column {col}: {_show.repr(tok)} is not a finite number")
            values.append(float(tok))
        stamps.append(int(tokens[0]) if _is_int(tokens[0]) else values[0])
        fx, fy, cx, cy = values[1:5]
        Ks.append(np.array([[fx * W, 0.0, cx * W], [0.0, fy * H, cy * H], [0.0, 0.0, 1.0]]))
        T = np.eye(4)
        T[:3, :4] = np.array(values[7:]).reshape(3, 4)  # row-major 3x4
        Ts.append(T)
        where.append(f"{name}: line {lineno} (frame {len(Ts) - 1})")
    if not Ts:
        raise ValueError(f"{name}: no camera lines after the header line")
    return _cameras(Ks, Ts, W, H, where), stamps


def _is_float(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _is_int(tok: str) -> bool:
    try:
        int(tok)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- nerfstudio
def save_nerfstudio(path: str | os.PathLike, cameras: Cameras, file_paths: Sequence[str] | None = None) -> Path:
    """Write a nerfstudio ``transforms.json`` (camera_model OPENCV, no distortion).

    Intrinsics are global when every frame shares ``K``, else per frame. file_paths: image of
    each frame (default ``images/frame_00000.png``, ... -- where rendered frames would go).
    """
    path = Path(path)
    K, cfw = _arrays(cameras)
    _check_no_skew(K, "nerfstudio")
    n = len(cameras)
    file_paths = [f"images/frame_{i:05d}.png" for i in range(n)] if file_paths is None else list(file_paths)
    if len(file_paths) != n:
        raise ValueError(f"{len(file_paths)} file_paths for {n} cameras")

    def intrinsics(k: np.ndarray) -> dict:  # k [3, 3]
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}

    shared = bool((K == K[:1]).all())
    header = {"camera_model": "OPENCV", "w": cameras.width, "h": cameras.height}
    if shared:
        header.update(intrinsics(K[0]))
    frames = []
    for i in range(n):
        R, t = cfw[i, :3, :3], cfw[i, :3, 3]
        world_from_cam = np.eye(4)
        world_from_cam[:3, :3] = R.T  # exact
        world_from_cam[:3, 3] = -np.linalg.solve(R, t)  # camera centre; exact inverse of R, not R^T
        frame = {"file_path": file_paths[i], "transform_matrix": (world_from_cam @ _GL_FROM_CV).tolist()}
        if not shared:
            frame.update(intrinsics(K[i]))
        frames.append(frame)
    return _write_json(path, header, frames)


def load_nerfstudio(path: str | os.PathLike) -> Cameras:
    """Read a nerfstudio ``transforms.json`` (pinhole models only, distortion must be zero)."""
    path = Path(path)
    meta = _read_json(path)
    model = meta.get("camera_model", "OPENCV")
    if model not in _NS_MODELS:
        raise ValueError(f"{path.name}: camera_model {_show.repr(model)} is not supported (pinhole only: {_NS_MODELS})")
    Ks, Ts, where, sizes = [], [], [], set()
    for i, frame in enumerate(meta["frames"]):
        w = f"{path.name}: frames[{i}]"
        for key in _NS_DISTORTION:
            value = frame.get(key, meta.get(key, 0.0))
            if _number(value, f"{w} '{key}'") != 0.0:
                raise ValueError(f"{w}: distortion {key}={value!r} is not supported (pinhole paths only)")
        intr = {}
        for key in _NS_INTRINSICS:
            if key not in frame and key not in meta:
                raise ValueError(f"{w}: missing '{key}' (neither in the frame nor at the top level)")
            intr[key] = _number(frame.get(key, meta.get(key)), f"{w} '{key}'")
        if "transform_matrix" not in frame:
            raise ValueError(f"{w}: missing 'transform_matrix'")
        gl = _matrix(frame["transform_matrix"], 4, 4, f"{w} transform_matrix")  # world_from_cam, OpenGL axes
        if np.abs(gl[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 1e-6:
            raise ValueError(f"{w}: transform_matrix is not a rigid transform (last row {gl[3].tolist()})")
        cv = gl @ _GL_FROM_CV  # world_from_cam, OpenCV axes
        R = cv[:3, :3].T  # cam_from_world rotation
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, -R @ cv[:3, 3]
        Ks.append(np.array([[intr["fl_x"], 0.0, intr["cx"]], [0.0, intr["fl_y"], intr["cy"]], [0.0, 0.0, 1.0]]))
        Ts.append(T)
        where.append(w)
        sizes.add((intr["w"], intr["h"]))
    if len(sizes) != 1:
        raise ValueError(f"{path.name}: frames have different image sizes {_show.repr(sorted(sizes))}; a path needs one size")
    (w_, h_) = sizes.pop()
    if w_ != int(w_) or h_ != int(h_):
        raise ValueError(f"{path.name}: image size must be integers, got w={w_} h={h_}")
    W, H = _size(int(w_), int(h_), path.name)
    return _cameras(Ks, Ts, W, H, where)


# ----------------------------------------------------------------------------- our JSON
def save_path_json(path: str | os.PathLike, cameras: Cameras, fps: float = 16.0) -> Path:
    """Write our ``mirage-path`` JSON (K in pixels, continuous convention; cam_from_world, OpenCV axes)."""
    path = Path(path)
    K, cfw = _arrays(cameras)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be finite and positive, got {fps!r}")
    header = {"format": "mirage-path", "version": 1, "width": cameras.width, "height": cameras.height, "fps": fps}
    frames = [{"K": K[i].tolist(), "cam_from_world": cfw[i].tolist()} for i in range(len(cameras))]
    return _write_json(path, header, frames)


def load_path_json(path: str | os.PathLike) -> Cameras:
    """Read our ``mirage-path`` JSON (version 1)."""
    path = Path(path)
    meta = _read_json(path)
    if meta.get("format") != "mirage-path":
        raise ValueError(f"{path.name}: 'format' must be 'mirage-path', got {_show.repr(meta.get('format'))}")
    if meta.get("version") != 1:
        raise ValueError(f"{path.name}: unsupported version {_show.repr(meta.get('version'))} (this reader knows version 1)")
    for key in ("width", "height", "fps"):
        if key not in meta:
            raise ValueError(f"{path.name}: missing '{key}'")
    W, H = _size(meta["width"], meta["height"], path.name)
    if _number(meta["fps"], f"{path.name}: 'fps'") <= 0:
        raise ValueError(f"{path.name}: 'fps' must be positive, got {meta['fps']!r}")
    Ks, Ts, where = [], [], []
    for i, frame in enumerate(meta["frames"]):
        w = f"{path.name}: frames[{i}]"
        for key in ("K", "cam_from_world"):
            if key not in frame:
                raise ValueError(f"{w}: missing '{key}'")
        Ks.append(_matrix(frame["K"], 3, 3, f"{w} K"))
        Ts.append(_matrix(frame["cam_from_world"], 4, 4, f"{w} cam_from_world"))
        where.append(w)
    return _cameras(Ks, Ts, W, H, where)


# ----------------------------------------------------------------------------- detection and export
def load_path_file(path: str | os.PathLike, width: int, height: int) -> Cameras:
    """Load a path in any supported format, returned at ``width x height``.

    ``.txt`` is RealEstate10K/CameraCtrl (normalized intrinsics, read at this size); ``.json`` is ours
    (``"format": "mirage-path"``) or nerfstudio (frames with ``transform_matrix``). JSON paths stored at
    another size of the same aspect ratio (within 1%) are rescaled (``Cameras.rescaled``); another
    aspect ratio raises ``ValueError``.
    """
    path = Path(path)
    W, H = _size(width, height, path.name)
    if not path.is_file():
        raise FileNotFoundError(f"camera path file not found: {path.name}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return load_re10k(path, W, H)[0]
    if suffix != ".json":
        raise ValueError(f"{path.name}: unknown camera path format {_show.repr(suffix)}; expected .txt (RealEstate10K) or .json")
    meta = _read_json(path)
    if "format" in meta:
        cams = load_path_json(path)
    elif "transform_matrix" in meta["frames"][0]:
        cams = load_nerfstudio(path)
    else:
        raise ValueError(f"{path.name}: JSON is neither a mirage-path (no 'format') nor nerfstudio (no 'transform_matrix')")
    if (cams.width, cams.height) == (W, H):
        return cams
    if abs((cams.width / cams.height) / (W / H) - 1.0) > 0.01:
        raise ValueError(
            f"{path.name}: stored for {cams.width}x{cams.height}, which has another aspect ratio than the requested {W}x{H}"
        )
    return cams.rescaled(W, H)


def export_path_files(
    cameras: Cameras, folder: str | os.PathLike, stem: str, fps: float = 16.0
) -> dict[PathFormat, Path]:
    """Write ``{stem}_re10k.txt``, ``{stem}_transforms.json`` and ``{stem}_mirage.json`` into ``folder``."""
    folder = Path(folder)
    if not stem or any(c in stem for c in "/\\"):
        raise ValueError(f"stem must be a plain file name stem, got {stem!r}")
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "re10k": save_re10k(folder / f"{stem}_re10k.txt", cameras, fps=fps, url=f"# mirage camera path, {fps} fps"),
        "nerfstudio": save_nerfstudio(folder / f"{stem}_transforms.json", cameras),
        "mirage": save_path_json(folder / f"{stem}_mirage.json", cameras, fps=fps),
    }
