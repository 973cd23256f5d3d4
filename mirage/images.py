"""Input images: loading any common image into ``[3, H, W]`` in ``[-1, 1]`` and fitting it to the
model's resolution together with its depth map and intrinsics, so that geometry stays consistent.

Loading (``load_image``): RGB, RGBA / LA / palette-with-transparency (alpha composited on white by
default, or dropped with ``alpha="drop"``), grayscale ``L`` and ``1`` (replicated to 3 channels),
16-bit ``I;16`` / ``uint16`` arrays (scaled by 65535), 32-bit ``I`` (must lie in ``0..65535``, treated
as 16-bit), float ``F`` / float arrays (must lie in ``[0, 1]``), CMYK / YCbCr (converted to RGB).
EXIF orientation is applied (phone photos). Non-images, empty images and absurd sizes raise
``ValueError`` naming the file or the size.

Fitting (``plan_fit``): the image is resized by one scale ``s = max(W_t / W, H_t / H)`` so that it
covers the target, then centre-cropped. With the continuous pixel convention of ``CONVENTIONS.md``
(pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)``) the resize scales ``fx, cx`` by ``W' / W`` and
``fy, cy`` by ``H' / H`` exactly (no half-pixel term; ``W', H'`` are the integer resized sizes), and
the crop subtracts its offset from ``cx, cy``. ``torch.nn.functional.interpolate`` with
``align_corners=False`` samples exactly at those pixel centres, so a ray through a pixel before and
after fitting hits the same scene point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import valid_depth

__all__ = [
    "MAX_SIDE",
    "MAX_PIXELS",
    "reduction_factor",
    "check_size",
    "FitPlan",
    "load_image",
    "to_uint8",
    "from_uint8",
    "image_to_uint8",
    "choose_resolution",
    "plan_fit",
    "fit_to_aspect",
    "fit_depth",
    "fit_intrinsics",
    "fit_image_depth_camera",
]

MAX_SIDE = 16384  # longest accepted image side in pixels
MAX_PIXELS = 1 << 27  # most accepted pixels (134 MP)
MODEL_ASPECT = 704 / 1280  # short / long side of the Wan2.2-TI2V-5B resolution

AlphaMode = Literal["white", "drop"]
ALPHA_MODES: tuple[str, ...] = get_args(AlphaMode)
DepthResize = Literal["bilinear", "nearest"]
DEPTH_RESIZES: tuple[str, ...] = get_args(DepthResize)


# ----------------------------------------------------------------------------------------- loading
def check_size(height: int, width: int, name: str, what: str = "image") -> None:
    """Refuse an empty or too large ``what`` (``MAX_SIDE``, ``MAX_PIXELS``) from its size alone, before
    any pixel is decoded; the message names ``name``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"{name}: {what} is empty ({width}x{height} pixels, WxH)")
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ValueError(
            f"{name}: {what} size {width}x{height} (WxH) is too large (max side {MAX_SIDE}, max {MAX_PIXELS} pixels)"
        )


def _array_to_unit(array: np.ndarray, name: str) -> np.ndarray:  # [H, W] / [H, W, C] -> float32 in [0, 1]
    if not array.dtype.isnative:  # big-endian 16-bit data
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype in (np.float16, np.float32, np.float64):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{name}: float image has non-finite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return out
    if array.dtype in (np.int32, np.int64, np.uint32):  # PIL mode "I" (e.g. some 16-bit PNGs)
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name}: 32-bit integer image must lie in 0..65535 (16-bit), got {lo}..{hi}")
        return array.astype(np.float32) / 65535.0
    raise ValueError(f"{name}: unsupported image dtype {array.dtype}")


def _unit_to_rgb(unit: np.ndarray, alpha: AlphaMode, name: str) -> np.ndarray:  # -> [H, W, 3] in [0, 1]
    if unit.ndim == 2:
        unit = unit[:, :, None]  # [H, W] -> [H, W, 1]
    if unit.ndim != 3 or unit.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{name}: image array must be [H, W], [H, W, 1|2|3|4], got shape {unit.shape}")
    channels = unit.shape[2]
    color = unit[:, :, :1].repeat(3, axis=2) if channels in (1, 2) else unit[:, :, :3]  # [H, W, 3]
    if channels in (2, 4):
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        if alpha == "white":
            a = unit[:, :, -1:]  # [H, W, 1]
            color = color * a + (1.0 - a)
    return color


def reduction_factor(height: int, width: int, cover: tuple[int, int] | None) -> int:
    """The largest whole factor ``k >= 1`` by which a ``height x width`` image can shrink and still
    cover ``cover = (short, long)`` sides (its short side >= ``short`` and long side >= ``long``)."""
    if cover is None:
        return 1
    short, long = sorted((height, width))
    return max(1, min(long // cover[1], short // cover[0]))


def _open_pil(path: Path, cover: tuple[int, int] | None = None) -> PIL.Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path.name}")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a directory: {path.name}")
    if path.stat().st_size == 0:
        raise ValueError(f"image file is empty (0 bytes): {path.name}")
    try:
        image = PIL.Image.open(path)
        check_size(image.height, image.width, path.name)  # before decoding any pixels
        k = reduction_factor(image.height, image.width, cover)
        if k > 1 and image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale: less memory and time
            image.draft(image.mode, (image.width // k, image.height // k))
        image.load()
    except PIL.UnidentifiedImageError as err:
        raise ValueError(f"not an image file (PIL cannot identify it): {path.name}") from err
    except PIL.Image.DecompressionBombError as err:  # PIL's own limit (~179 MP)
        raise ValueError(f"{path.name}: image size is too large: {err}") from err
    except (OSError, SyntaxError) as err:  # truncated or corrupt data
        raise ValueError(f"cannot decode image file {path.name}: {str(err).replace(str(path), path.name)}") from err
    return image


def _pil_to_array(image: PIL.Image.Image, name: str, cover: tuple[int, int] | None = None) -> np.ndarray:
    k = reduction_factor(image.height, image.width, cover)  # the same in either orientation
    if k > 1:  # box-average k x k blocks before any float copy of the full image exists
        if image.mode in ("1", "P", "PA"):  # modes PIL cannot reduce: to the mode they are read in below
            alpha = image.mode == "PA" or "transparency" in image.info
            image = image.convert("L" if image.mode == "1" else "RGBA" if alpha else "RGB")
        elif image.mode.startswith("I;16"):
            image = image.convert("I")  # 32-bit, same 0..65535 values
        image = image.reduce(k)
    image = PIL.ImageOps.exif_transpose(image)  # after the reduction: it copies the image
    mode = image.mode
    if mode == "P":  # palette: keep transparency if the palette has any
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if mode == "1" else "RGB")
    elif mode.startswith("I;16"):  # I;16, I;16B, I;16L, I;16N: unsigned 16-bit grayscale
        return np.asarray(image).astype(np.uint16)
    elif mode not in ("RGB", "RGBA", "L", "LA", "I", "F", "RGBX", "RGBa", "La"):
        raise ValueError(f"{name}: unsupported PIL image mode {mode!r}")
    if image.mode in ("RGBa", "La"):  # premultiplied alpha
        image = image.convert(image.mode.upper())
    if image.mode == "RGBX":
        image = image.convert("RGB")
    return np.asarray(image)


def load_image(
    source: str | Path | np.ndarray | PIL.Image.Image | Tensor,
    *,
    alpha: AlphaMode = "white",
    cover: tuple[int, int] | None = None,
) -> Tensor:  # -> [3, H, W] float32 in [-1, 1]
    """Load an image file, numpy array, PIL image or tensor into ``[3, H, W]`` in ``[-1, 1]``.

    source: a path; a PIL image (any mode listed in the module docstring); a numpy array
        ``[H, W]`` / ``[H, W, 1|2|3|4]`` of ``uint8`` (/255), ``uint16`` (/65535) or float in
        ``[0, 1]``; or a float tensor ``[3, H, W]`` already in ``[-1, 1]`` (validated, copied).
    alpha: ``"white"`` composites a transparent image on white (what a viewer shows);
        ``"drop"`` ignores the alpha channel (keeps the stored colours).
    cover: ``(short, long)``: a file or PIL image larger than needed to cover these sides is shrunk
        while it is decoded, by the largest whole factor that still covers them (``reduction_factor``;
        a k x k box average, JPEGs decoded at reduced scale), so a large upload never exists as a
        full-size float image. ``None`` keeps the full size.
    """
    if isinstance(source, Tensor):
        if source.dim() != 3 or source.shape[0] != 3 or not source.is_floating_point():
            raise ValueError(f"tensor image must be float [3, H, W], got {source.dtype} {tuple(source.shape)}")
        check_size(source.shape[1], source.shape[2], "tensor image")
        if not torch.isfinite(source).all() or source.min() < -1 or source.max() > 1:
            raise ValueError("tensor image values must be finite and lie in [-1, 1]")
        return source.detach().float().clone()
    if isinstance(source, (str, Path)):
        name = Path(source).name  # messages name the file, never its folder
        array = _pil_to_array(_open_pil(Path(source), cover), name, cover)
    elif isinstance(source, PIL.Image.Image):
        name = "PIL image"
        check_size(source.height, source.width, name)
        array = _pil_to_array(source, name, cover)
    elif isinstance(source, np.ndarray):
        name = "array image"
        array = source
    else:
        raise ValueError(f"cannot load an image from {type(source).__name__}")
    if array.ndim < 2:
        raise ValueError(f"{name}: image array must be at least 2-D, got shape {array.shape}")
    check_size(array.shape[0], array.shape[1], name)
    rgb = _unit_to_rgb(_array_to_unit(np.ascontiguousarray(array), name), alpha, name)  # [H, W, 3]
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    return (image * 2.0 - 1.0).clamp(-1.0, 1.0).contiguous()


def to_uint8(x: Tensor) -> Tensor:  # [...] float in [-1, 1] -> [...] uint8, same device
    """Pixel values in ``[-1, 1]`` to ``uint8`` (``(x + 1) * 127.5``, rounded half to even, clamped):
    the one conversion every image, video and colour of the library goes through."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:  # [...] uint8 -> [...] float32 in [-1, 1], same device
    """The inverse of ``to_uint8`` on its range: ``x / 127.5 - 1``."""
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 takes uint8 values, got {x.dtype}")
    return x.float() / 127.5 - 1.0


def image_to_uint8(image: Tensor) -> np.ndarray:  # image: [3, H, W] in [-1, 1] -> [H, W, 3] uint8
    """Image tensor to a displayable ``uint8`` array (rounded, clamped)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    return to_uint8(image.cpu()).permute(1, 2, 0).numpy()  # [3, H, W] -> [H, W, 3]


# ------------------------------------------------------------------------------------- resolution
def choose_resolution(
    height: int, width: int, *, long_side: int = 1280, short_side: int | None = None, multiple: int = 32
) -> tuple[int, int]:
    """Model resolution ``(H, W)`` for an input of ``height x width``.

    Landscape and square inputs get ``short_side x long_side`` (704x1280), portrait inputs
    ``long_side x short_side`` (1280x704). ``short_side=None`` keeps the model aspect 704/1280 and
    rounds to ``multiple``: ``long_side=512`` gives a 288x512 preview. Explicit sides must be
    multiples of ``multiple`` (32 = VAE stride 16 x patch 2).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"input size must be positive, got {width}x{height}")
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if long_side <= 0 or long_side % multiple:
        raise ValueError(f"long_side must be a positive multiple of {multiple}, got {long_side}")
    if short_side is None:
        short_side = max(multiple, int(round(long_side * MODEL_ASPECT / multiple)) * multiple)
    elif short_side <= 0 or short_side % multiple:
        raise ValueError(f"short_side must be a positive multiple of {multiple}, got {short_side}")
    if short_side > long_side:
        raise ValueError(f"short_side {short_side} exceeds long_side {long_side}")
    return (short_side, long_side) if width >= height else (long_side, short_side)


# -------------------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class FitPlan:
    """Resize-then-centre-crop from a source size to a target size."""

    src_width: int  # input width in pixels
    src_height: int  # input height in pixels
    resized_width: int  # width after the resize (>= width)
    resized_height: int  # height after the resize (>= height)
    left: int  # crop offset in the resized image, pixels
    top: int  # crop offset in the resized image, pixels
    width: int  # target width
    height: int  # target height

    @property
    def scale_x(self) -> float:  # exact horizontal resize factor
        return self.resized_width / self.src_width

    @property
    def scale_y(self) -> float:  # exact vertical resize factor
        return self.resized_height / self.src_height


def plan_fit(src_width: int, src_height: int, width: int, height: int) -> FitPlan:
    """Scale to cover ``width x height`` (one scale, rounded per axis), then centre-crop."""
    for label, value in (("src_width", src_width), ("src_height", src_height), ("width", width), ("height", height)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{label} must be a positive integer, got {value}")
    scale = max(width / src_width, height / src_height)
    resized_w = max(width, int(round(src_width * scale)))
    resized_h = max(height, int(round(src_height * scale)))
    return FitPlan(
        src_width, src_height, resized_w, resized_h, (resized_w - width) // 2, (resized_h - height) // 2, width, height
    )


def _resize(x: Tensor, height: int, width: int, mode: str) -> Tensor:  # x: [C, H, W] -> [C, height, width]
    if tuple(x.shape[-2:]) == (height, width):
        return x
    kwargs = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
    return F.interpolate(x[None], size=(height, width), mode=mode, **kwargs)[0]  # [1, C, h, w] -> [C, h, w]


def fit_to_aspect(image: Tensor, target_width: int, target_height: int) -> Tensor:
    """Resize (bicubic, antialiased) to cover the target and centre-crop. image: ``[3, H, W]``."""
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got {tuple(image.shape)}")
    plan = plan_fit(image.shape[2], image.shape[1], target_width, target_height)
    resized = _resize(image.float(), plan.resized_height, plan.resized_width, "bicubic").clamp(-1.0, 1.0)
    return resized[:, plan.top : plan.top + plan.height, plan.left : plan.left + plan.width].contiguous()


def fit_depth(depth: Tensor, target_width: int, target_height: int, mode: DepthResize = "bilinear") -> Tensor:
    """Resize + centre-crop a depth map ``[H, W]`` (metres) like ``fit_to_aspect`` does its image.

    Invalid depth (NaN, inf, ``<= 0``) never blends into valid depth. ``"bilinear"`` is an
    antialiased bilinear filter normalised over valid inputs only; an output pixel is valid when
    at least half of its filter weight is on valid input. ``"nearest"`` samples the input pixel
    whose centre is nearest. Invalid outputs are NaN. The depth map may have a different
    resolution than the image, as long as it covers the same field of view (same aspect).
    """
    if depth.dim() != 2:
        raise ValueError(f"depth must be [H, W], got {tuple(depth.shape)}")
    if mode not in DEPTH_RESIZES:
        raise ValueError(f"depth resize mode must be one of {DEPTH_RESIZES}, got {mode!r}")
    plan = plan_fit(depth.shape[1], depth.shape[0], target_width, target_height)
    depth = depth.float()
    valid = valid_depth(depth)  # [H, W]
    if mode == "nearest":
        out = _resize(torch.where(valid, depth, torch.nan)[None], plan.resized_height, plan.resized_width, "nearest-exact")[0]
    else:
        stacked = torch.stack([torch.where(valid, depth, 0.0), valid.float()])  # [2, H, W]: weighted depth, weight
        num, den = _resize(stacked, plan.resized_height, plan.resized_width, "bilinear")  # [2, H', W'] -> 2x [H', W']
        out = torch.where(den >= 0.5, num / den.clamp_min(1e-6), torch.nan)
    return out[plan.top : plan.top + plan.height, plan.left : plan.left + plan.width].contiguous()


def fit_intrinsics(K: Tensor, src_width: int, src_height: int, target_width: int, target_height: int) -> Tensor:
    """Intrinsics ``[3, 3]`` of the fitted image: scale by the exact resize factors, shift by the crop."""
    K = torch.as_tensor(K, dtype=torch.float32)
    if K.shape != (3, 3):
        raise ValueError(f"K must be [3, 3], got {tuple(K.shape)}")
    plan = plan_fit(src_width, src_height, target_width, target_height)
    # [3, 3] image_fitted_from_image: pixel coordinates x' = s x - offset (continuous convention)
    fitted_from_src = torch.tensor(
        [[plan.scale_x, 0.0, -plan.left], [0.0, plan.scale_y, -plan.top], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    return (fitted_from_src @ K.double()).float()


def fit_image_depth_camera(
    image: Tensor,
    depth: Tensor | None,
    K: Tensor | None,
    width: int,
    height: int,
    *,
    depth_mode: DepthResize = "bilinear",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Fit an image ``[3, H, W]``, its aligned depth ``[Hd, Wd]`` (or None) and its intrinsics
    ``K [3, 3]`` (or None, for the image at ``H x W``) to ``width x height`` consistently.

    Returns ``(image [3, height, width], depth [height, width] | None, K [3, 3] | None)``.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got {tuple(image.shape)}")
    src_h, src_w = image.shape[1], image.shape[2]
    out_depth = None
    if depth is not None:
        if depth.dim() != 2:
            raise ValueError(f"depth must be [H, W], got {tuple(depth.shape)}")
        dh, dw = depth.shape
        if abs(dh * src_w - dw * src_h) > max(src_w, dw):  # aspect must agree to about one pixel
            raise ValueError(f"depth {dw}x{dh} is not aligned with image {src_w}x{src_h} (different aspect)")
        out_depth = fit_depth(depth, width, height, depth_mode)
    out_K = None if K is None else fit_intrinsics(K, src_w, src_h, width, height)
    return fit_to_aspect(image, width, height), out_depth, out_K
