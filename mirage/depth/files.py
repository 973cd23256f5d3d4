"""User depth maps: ``.npy`` in metres or 16-bit PNG in millimetres, and the ``FileDepth`` backend."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cameras import intrinsics_from_fov
from ..geometry import valid_depth
from ..images import check_size, reduction_factor
from .base import DepthEstimate, _check_fov, _check_image, _check_K, _resolve_K, nan_invalid

__all__ = ["load_depth_file", "save_depth_png16", "FileDepth"]

# ----------------------------------------------------------------------------- depth files
_PNG16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _read_npy(p: Path) -> np.ndarray:  # -> [H, W] real numbers as stored
    """An ``.npy`` file checked from its header before any data is read: magic, version, dtype (no
    objects: pickles are never executed), 2-D, size limits and a data size that matches the file."""
    name = p.name
    with open(p, "rb") as f:
        magic = f.read(6)
        if magic.startswith(b"PK\x03\x04"):
            raise ValueError(
                f"{name} is a .npz archive (several arrays in a zip file), not a .npy file; save one [H, W] "
                f"array in metres with np.save"
            )
        if magic != b"\x93NUMPY":
            what = "it is empty (0 bytes)" if not magic else "it does not start with the .npy magic bytes"
            raise ValueError(f"{name} is not a NumPy .npy file ({what}); save one [H, W] array in metres with np.save")
        version = tuple(f.read(2))  # (major, minor)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{name}: unsupported .npy format version {version} (this reader knows 1.0 and 2.0)")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:  # parses a dict literal of at most 10000 characters; never unpickles
            shape, _, dtype = read_header(f)
        except Exception as err:  # ValueError, SyntaxError, tokenize.TokenError, RecursionError, ... on junk
            raise ValueError(f"{name}: corrupt .npy header ({type(err).__name__})") from None
        data_start = f.tell()
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "fiu":
            raise ValueError(f"{name}: depth .npy must hold real numbers (metres), got dtype {dtype}")
        if len(shape) != 2:
            raise ValueError(f"{name}: depth must be 2-D [H, W], got shape {shape}")
        check_size(shape[0], shape[1], name, "depth map")
        expected = shape[0] * shape[1] * dtype.itemsize  # bytes of data the header promises
        held = os.fstat(f.fileno()).st_size - data_start
        if held != expected:
            state = "truncated" if held < expected else "longer than its header says"
            raise ValueError(
                f"{name}: the .npy file is {state}: its header says {shape[1]}x{shape[0]} (WxH) {dtype} "
                f"({expected} bytes of data) but the file holds {held} bytes after the header"
            )
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_png16(p: Path, cover: tuple[int, int] | None = None) -> np.ndarray:  # -> [H, W] float32 metres
    """A 16-bit grayscale PNG in millimetres; its size is checked from the header before decoding.
    With ``cover``, every k-th pixel is kept (``_subsample``) before any float copy is made."""
    from PIL import Image, UnidentifiedImageError

    name = p.name
    try:
        im = Image.open(p)
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image PIL can read; save a 16-bit grayscale PNG in mm") from None
    except Image.DecompressionBombError as err:  # PIL's own limit, checked when it reads the header
        raise ValueError(f"{name}: depth map size is too large: {err}") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read the file ({type(err).__name__})") from None
    with im:
        if im.format != "PNG":
            raise ValueError(f"{name} is not a PNG (it holds {im.format} data); save a 16-bit grayscale PNG in mm")
        width, height = im.size
        check_size(height, width, name, "depth map")  # before decoding any pixel
        if im.mode not in _PNG16_MODES:
            raise ValueError(
                f"{name} is a {im.mode!r} PNG (8-bit or colour), which cannot hold depth in millimetres; "
                f"save a 16-bit grayscale PNG in mm (save_depth_png16) or a .npy in metres"
            )
        try:
            im.load()
        except Image.DecompressionBombError as err:
            raise ValueError(f"{name}: depth map size is too large: {err}") from None
        except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt compressed data
            detail = str(err).replace(str(p), name)
            raise ValueError(f"{name}: cannot decode the PNG (truncated or corrupt): {detail}") from None
        k = reduction_factor(height, width, cover)
        if k > 1:  # nearest: the centre pixel of each k x k block, never a blend of depths
            im = im.resize((width // k, height // k), Image.Resampling.NEAREST)
        return np.array(im).astype(np.float32) / 1000.0  # mm -> m


def _subsample(arr: np.ndarray, cover: tuple[int, int] | None) -> np.ndarray:  # [H, W] -> [H // k, W // k]
    """The centre element of each k x k block, ``k = reduction_factor(H, W, cover)`` (as PIL's nearest
    resize picks it): a smaller depth map that still covers ``cover`` and holds only measured values."""
    H, W = arr.shape[:2]
    k = reduction_factor(H, W, cover)
    return arr if k == 1 else arr[k // 2 :: k, k // 2 :: k][: H // k, : W // k]


def load_depth_file(path, cover: tuple[int, int] | None = None) -> Tensor:  # -> [H, W] float32 metres, NaN invalid
    """Read ``.npy`` (float metres) or a 16-bit grayscale PNG (millimetres); NaN/inf/<= 0 become NaN.
    ``cover = (short, long)``: a larger map is subsampled by the largest whole factor that still
    covers these sides (nearest, like ``mirage.images.load_image(cover=)`` shrinks its image).

    Hostile files are refused with a ``ValueError`` naming the file by its name only (never its
    folder): not an ``.npy``/PNG (a ``.npz`` archive is recognised), object or structured dtypes
    (never unpickled), anything but 2-D, more than ``mirage.images.MAX_SIDE`` per side or
    ``MAX_PIXELS`` pixels (checked from the header, before any data is read), a truncated file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"depth file not found: {p.name}")
    ext = p.suffix.lower()
    if ext == ".npy":
        arr = _read_npy(p)  # [H, W]
        arr = (_subsample(arr, cover) if arr.ndim == 2 else arr).astype(np.float32)
    elif ext == ".png":
        arr = _read_png16(p, cover)  # [H, W]
    else:
        raise ValueError(f"unsupported depth file extension {ext!r} for {p.name}: use .npy (metres) or .png (16-bit, mm)")
    if arr.ndim != 2:
        raise ValueError(f"{p.name}: depth must be 2-D [H, W], got shape {arr.shape}")
    depth = nan_invalid(torch.from_numpy(arr))
    if not valid_depth(depth).any():
        raise ValueError(f"{p.name}: depth map {arr.shape} has no valid pixel (all NaN, inf or <= 0)")
    return depth


def save_depth_png16(depth, path) -> None:  # depth [H, W] metres
    """Write depth as a 16-bit PNG in millimetres (0 = invalid). Valid depth must lie in [0.5 mm, 65.535 m]."""
    from PIL import Image

    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"save_depth_png16 writes .png files, got {p}")
    d = torch.as_tensor(depth).detach().cpu().double()
    if d.dim() != 2:
        raise ValueError(f"depth must be 2-D [H, W], got shape {tuple(d.shape)}")
    valid = valid_depth(d)
    mm = torch.where(valid, (d * 1000).round(), torch.zeros_like(d))  # [H, W]
    if valid.any():
        lo, hi = float(mm[valid].min()), float(mm[valid].max())
        if lo < 1 or hi > 65535:
            raise ValueError(
                f"valid depth spans [{lo / 1000:.4g}, {hi / 1000:.4g}] m; a 16-bit millimetre PNG holds "
                f"[0.0005, 65.535] m (save a .npy in metres instead)"
            )
    Image.fromarray(mm.numpy().astype(np.uint16)).save(p)


def _resize_nearest(depth: Tensor, height: int, width: int) -> Tensor:  # [h, w] -> [height, width]
    """Nearest resize with pixel centres at ``u + 1/2``: never blends, so NaN (invalid) stays NaN."""
    h, w = depth.shape
    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * h / height).floor().long().clamp(max=h - 1)  # [height]
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * w / width).floor().long().clamp(max=w - 1)  # [width]
    return depth[rows.to(depth.device)][:, cols.to(depth.device)]


class FileDepth:
    """A user-supplied depth map (tensor, array, ``.npy`` metres or 16-bit PNG millimetres).

    Intrinsics: ``fov_x_deg`` (centred camera at the image size) or ``K`` (at the depth map's size), or
    neither and a ``K`` passed to ``estimate``; when both exist they must agree. ``estimate`` requires
    the depth to have the image's size; with ``resize=True`` a depth map whose aspect ratio matches the
    image's within 1% is resized with (invalid-preserving) nearest sampling and its ``K`` rescaled.
    """

    name = "file"
    needs_weights = False

    def __init__(self, depth_or_path, fov_x_deg: float | None = None, K: Tensor | None = None, *, resize: bool = False,
                 cover: tuple[int, int] | None = None):  # fmt: skip
        if fov_x_deg is not None and K is not None:
            K_list = torch.as_tensor(K).tolist()
            raise ValueError(f"give fov_x_deg or K, not both (got fov_x_deg={fov_x_deg} and K={K_list})")
        if isinstance(depth_or_path, (str, Path)):
            if cover is not None and K is not None:
                raise ValueError("cover subsamples the depth map, so its K would no longer fit: give fov_x_deg, not K")
            depth = load_depth_file(depth_or_path, cover)
        else:
            depth = torch.as_tensor(depth_or_path)
            if depth.dim() != 2:
                raise ValueError(f"depth must be 2-D [H, W], got shape {tuple(depth.shape)}")
            depth = nan_invalid(depth)
            if not valid_depth(depth).any():
                raise ValueError(f"depth map {tuple(depth.shape)} has no valid pixel (all NaN, inf or <= 0)")
        self.depth = depth  # [h, w] metres, NaN invalid
        self.fov_x_deg = None if fov_x_deg is None else _check_fov(fov_x_deg)
        self.K = None if K is None else _check_K(K)  # [3, 3] at the depth map's resolution
        self.resize = resize

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        _, H, W = image.shape
        h, w = self.depth.shape
        depth, stored_K = self.depth, self.K
        if (h, w) != (H, W):
            aspect_error = abs((w / h) / (W / H) - 1)
            if not self.resize or aspect_error > 0.01:
                hint = " (pass resize=True to resize it)" if aspect_error <= 0.01 else ""
                raise ValueError(f"depth map is {w}x{h} (WxH) but the image is {W}x{H}{hint}")
            depth = _resize_nearest(depth, H, W)
            if stored_K is not None:
                stored_K = torch.diag(torch.tensor([W / w, H / h, 1.0])) @ stored_K  # [3, 3] rescaled to the image
        if self.fov_x_deg is not None:
            stored_K = intrinsics_from_fov(W, H, self.fov_x_deg)
        K = _resolve_K(stored_K, K, "FileDepth")
        return DepthEstimate(depth.clone().to(image.device), K.to(image.device), "file")


