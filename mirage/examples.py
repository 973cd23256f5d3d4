"""Real and synthetic example scenes: the Middlebury "Motorcycle" stereo pair and the app registry.

``load_middlebury_motorcycle`` turns the 4x-downsampled Middlebury 2014 pair that scikit-image
bundles (no download) into metric depth and two calibrated ``Camera``s. Middlebury's calibration
is in OpenCV's pixel convention (pixel centres at integers); ours puts pixel ``u``'s centre at
``u + 1/2`` (CONVENTIONS.md), so ``cx, cy`` gain ``+1/2``. Middlebury stereo geometry:

    Z = baseline * f / (d + doffs),  x_right = x_left - d,  cx_right = cx_left + doffs,

with the right camera displaced by ``baseline`` along the left camera's ``+x``.

``EXAMPLES`` lists the scenes shipped in ``assets/`` (written by ``assets/make_assets.py``) and
``load_example(name)`` returns ``(image [3,H,W] in [-1,1], depth [H,W] metres or None, Camera)``,
with the camera at the identity pose (world = the example camera's frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mirage.cameras import Camera, intrinsics_from_fov
from mirage.geometry import valid_depth
from mirage.images import from_uint8, image_to_uint8

__all__ = [
    "StereoExample",
    "load_middlebury_motorcycle",
    "crop_to_multiple",
    "ExampleScene",
    "EXAMPLES",
    "ASSETS_DIR",
    "load_example",
    "example_thumbnail",
]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"

# Calibration of skimage.data.stereo_motorcycle() (its docstring; valid for the 4x-downsampled images).
MOTORCYCLE_FOCAL_PX = 994.978  # fx = fy
MOTORCYCLE_CX_OPENCV = 311.193  # left principal point x, OpenCV convention (pixel centres at integers)
MOTORCYCLE_CY_OPENCV = 254.877  # principal point y, OpenCV convention
MOTORCYCLE_DOFFS_PX = 31.086  # cx_right - cx_left ("principal point dx")
MOTORCYCLE_BASELINE_M = 0.193001  # 193.001 mm
MOTORCYCLE_SIZE = (741, 500)  # (width, height) of the bundled images
MOTORCYCLE_CREDIT = (
    "Middlebury 2014 stereo dataset, scene 'Motorcycle' (D. Scharstein, H. Hirschmueller, Y. Kitajima, "
    "G. Krathwohl, N. Nesic, X. Wang, P. Westling: High-resolution stereo datasets with subpixel-accurate "
    "ground truth, GCPR 2014; https://vision.middlebury.edu/stereo/data/scenes2014/), 4x-downsampled copy "
    "bundled with scikit-image (skimage.data.stereo_motorcycle). Cite the paper when using it."
)
SYNTHETIC_CREDIT = "Rendered by mirage.synthetic (analytic ray casting, exact depth); part of this repository."


@dataclass(frozen=True)
class StereoExample:
    """A rectified stereo pair with metric depth for the left view."""

    left: Tensor  # [3, H, W] float32 in [-1, 1]
    right: Tensor  # [3, H, W] float32 in [-1, 1]
    depth_left: Tensor  # [H, W] float32 camera-z metres of the left view, NaN where invalid
    disparity_left: Tensor  # [H, W] float32 pixels, x_right = x_left - d, NaN where invalid
    camera_left: Camera  # identity pose (world = left camera frame)
    camera_right: Camera  # displaced by the baseline along +x; cx = left cx + doffs
    name: str  # short scene name
    credit: str  # attribution / licence note to show with the data


def _middlebury_K(cx_opencv: float, cy_opencv: float) -> Tensor:  # -> [3, 3]
    """Continuous-convention intrinsics from an OpenCV-convention principal point."""
    f = MOTORCYCLE_FOCAL_PX
    return torch.tensor([[f, 0.0, cx_opencv + 0.5], [0.0, f, cy_opencv + 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _to_signed(image_uint8: np.ndarray) -> Tensor:  # [H, W, 3] uint8 -> [3, H, W] float32 in [-1, 1]
    return from_uint8(torch.from_numpy(np.array(image_uint8, dtype=np.uint8)).permute(2, 0, 1))  # HWC -> CHW


def load_middlebury_motorcycle() -> StereoExample:
    """The Middlebury 2014 "Motorcycle" pair (741 x 500) with metric left depth and both cameras."""
    from skimage.data import stereo_motorcycle  # bundled with scikit-image, no download

    left, right, disparity = stereo_motorcycle()  # [H, W, 3] uint8, [H, W, 3] uint8, [H, W] float (inf invalid)
    if (left.shape[1], left.shape[0]) != MOTORCYCLE_SIZE or left.shape != right.shape:
        raise ValueError(f"unexpected stereo_motorcycle image shapes {left.shape}, {right.shape}")
    d = disparity.astype(np.float64)  # [H, W]
    valid = np.isfinite(d) & (d + MOTORCYCLE_DOFFS_PX > 0)
    depth = np.full(d.shape, np.nan)
    depth[valid] = MOTORCYCLE_BASELINE_M * MOTORCYCLE_FOCAL_PX / (d[valid] + MOTORCYCLE_DOFFS_PX)
    W, H = MOTORCYCLE_SIZE
    right_from_world = torch.eye(4)
    right_from_world[0, 3] = -MOTORCYCLE_BASELINE_M  # right centre at (+baseline, 0, 0) in world
    return StereoExample(
        left=_to_signed(left),
        right=_to_signed(right),
        depth_left=torch.from_numpy(depth).float(),
        disparity_left=torch.from_numpy(np.where(valid, d, np.nan)).float(),
        camera_left=Camera(_middlebury_K(MOTORCYCLE_CX_OPENCV, MOTORCYCLE_CY_OPENCV), torch.eye(4), W, H),
        camera_right=Camera(
            _middlebury_K(MOTORCYCLE_CX_OPENCV + MOTORCYCLE_DOFFS_PX, MOTORCYCLE_CY_OPENCV), right_from_world, W, H
        ),
        name="motorcycle",
        credit=MOTORCYCLE_CREDIT,
    )


def _crop_box(width: int, height: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, top, new_width, new_height) of the centre crop to sizes divisible by ``multiple``."""
    if multiple <= 0 or multiple > width or multiple > height:
        raise ValueError(f"multiple must be in [1, min(width, height)] for a {width}x{height} image, got {multiple}")
    new_w, new_h = width - width % multiple, height - height % multiple
    return (width - new_w) // 2, (height - new_h) // 2, new_w, new_h


def _crop_camera(camera: Camera, left: int, top: int, width: int, height: int) -> Camera:
    K = camera.K.clone()  # [3, 3]
    K[0, 2] -= left
    K[1, 2] -= top
    return Camera(K, camera.cam_from_world, width, height)


def crop_to_multiple(example: StereoExample, multiple: int = 16) -> StereoExample:
    """Centre-crop both images and the depth to sizes divisible by ``multiple``, shifting cx, cy."""
    H, W = example.depth_left.shape
    left, top, w, h = _crop_box(W, H, multiple)
    rows, cols = slice(top, top + h), slice(left, left + w)
    return replace(
        example,
        left=example.left[:, rows, cols].contiguous(),
        right=example.right[:, rows, cols].contiguous(),
        depth_left=example.depth_left[rows, cols].contiguous(),
        disparity_left=example.disparity_left[rows, cols].contiguous(),
        camera_left=_crop_camera(example.camera_left, left, top, w, h),
        camera_right=_crop_camera(example.camera_right, left, top, w, h),
    )


# ---------------------------------------------------------------------------- app registry
@dataclass(frozen=True)
class ExampleScene:
    """One example shipped in ``assets/``: an image, optional metric depth and its intrinsics."""

    name: str  # registry key
    description: str  # one line for the UI
    image: str  # PNG file name under assets/ (uint8 RGB)
    depth: str | None  # .npy file name under assets/ (float32 [H, W] camera-z metres, NaN invalid) or None
    size: tuple[int, int]  # (width, height) of the image, checked on load
    K: tuple[tuple[float, float, float], ...] | None  # [3, 3] pixel intrinsics (continuous convention) or None
    fov_x_deg: float | None  # horizontal field of view when K is None (centred principal point)
    credit: str  # attribution to show with the example

    @property
    def image_path(self) -> Path:
        return ASSETS_DIR / self.image

    @property
    def depth_path(self) -> Path | None:
        return None if self.depth is None else ASSETS_DIR / self.depth


# The motorcycle asset is crop_to_multiple(load_middlebury_motorcycle(), 32) (see assets/make_assets.py).
_MOTO_LEFT, _MOTO_TOP, _MOTO_W, _MOTO_H = _crop_box(*MOTORCYCLE_SIZE, 32)
_MOTO_K = tuple(
    tuple(float(v) for v in row)
    for row in _crop_camera(
        Camera(_middlebury_K(MOTORCYCLE_CX_OPENCV, MOTORCYCLE_CY_OPENCV), torch.eye(4), *MOTORCYCLE_SIZE),
        _MOTO_LEFT, _MOTO_TOP, _MOTO_W, _MOTO_H,
    ).K.tolist()
)
SYNTHETIC_ROOM_SIZE = (512, 288)  # (width, height) of the synthetic room asset
SYNTHETIC_ROOM_FOV_X_DEG = 60.0  # mirage.synthetic.default_camera(*SYNTHETIC_ROOM_SIZE, 60.0)

EXAMPLES: list[ExampleScene] = [
    ExampleScene(
        name="motorcycle",
        description="Middlebury 2014 'Motorcycle' (real photo) with ground-truth stereo depth",
        image="motorcycle_left.png",
        depth="motorcycle_depth.npy",
        size=(_MOTO_W, _MOTO_H),
        K=_MOTO_K,
        fov_x_deg=None,
        credit=MOTORCYCLE_CREDIT,
    ),
    ExampleScene(
        name="motorcycle-no-depth",
        description="The same photo without depth: Depth Pro estimates it when its weights are present, otherwise "
                    "the planar prior stands in (placeholder geometry, not an estimate)",
        image="motorcycle_left.png",
        depth=None,
        size=(_MOTO_W, _MOTO_H),
        K=_MOTO_K,
        fov_x_deg=None,
        credit=MOTORCYCLE_CREDIT,
    ),
    ExampleScene(
        name="synthetic-room",
        description="Synthetic textured room with spheres and boxes, exact depth (mirage.synthetic)",
        image="synthetic_room.png",
        depth="synthetic_room_depth.npy",
        size=SYNTHETIC_ROOM_SIZE,
        K=None,
        fov_x_deg=SYNTHETIC_ROOM_FOV_X_DEG,
        credit=SYNTHETIC_CREDIT,
    ),
]


def load_example(name: str) -> tuple[Tensor, Tensor | None, Camera]:
    """``(image [3, H, W] in [-1, 1], depth [H, W] metres (NaN invalid) or None, Camera)`` of an example."""
    scenes = {s.name: s for s in EXAMPLES}
    if name not in scenes:
        raise ValueError(f"unknown example {name!r}; available: {sorted(scenes)}")
    scene = scenes[name]
    if not scene.image_path.is_file():
        raise FileNotFoundError(f"example image {scene.image_path} is missing; run `python assets/make_assets.py`")
    from PIL import Image

    with Image.open(scene.image_path) as im:
        image = _to_signed(np.asarray(im.convert("RGB")))  # [3, H, W]
    H, W = image.shape[1:]
    if (W, H) != scene.size:
        raise ValueError(f"example {name!r}: image {scene.image_path} is {W}x{H}, registry says {scene.size}")
    depth = None
    if scene.depth_path is not None:
        if not scene.depth_path.is_file():
            raise FileNotFoundError(f"example depth {scene.depth_path} is missing; run `python assets/make_assets.py`")
        depth = torch.from_numpy(np.load(scene.depth_path).astype(np.float32))  # [H, W]
        if tuple(depth.shape) != (H, W):
            raise ValueError(
                f"example {name!r}: depth {scene.depth_path} has shape {tuple(depth.shape)}, image {H}x{W}"
            )
    if (scene.K is None) == (scene.fov_x_deg is None):
        raise ValueError(f"example {name!r} must give exactly one of K and fov_x_deg")
    K = torch.tensor(scene.K) if scene.K is not None else intrinsics_from_fov(W, H, scene.fov_x_deg)
    return image, depth, Camera(K, torch.eye(4), W, H)


def example_thumbnail(scene: ExampleScene, height: int = 112, estimated: str = "estimated") -> np.ndarray:  # -> uint8 [h, w, 3]
    """The example's image beside the depth it starts from (near bright, far dark, no depth black),
    or, for an example without depth, a panel saying where its depth will come from (``estimated``)."""
    from PIL import Image, ImageDraw, ImageFont

    image, depth, _ = load_example(scene.name)  # [3, H, W] in [-1, 1], [H, W] | None
    H, W = image.shape[1:]
    w = round(W * height / H)
    rgb = Image.fromarray(image_to_uint8(image))  # [H, W, 3]
    left = rgb.resize((w, height), Image.Resampling.LANCZOS)
    if depth is not None:
        inv = np.where(valid_depth(depth).numpy(), 1.0 / np.maximum(depth.numpy(), 1e-6), np.nan)  # [H, W]
        lo, hi = np.nanpercentile(inv, [2, 98])
        gray = np.nan_to_num(np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1), nan=0.0)  # [H, W] near = 1
        right = Image.fromarray((gray * 255).astype(np.uint8)).convert("RGB").resize((w, height), Image.Resampling.BILINEAR)
        label = "depth: ground truth" if scene.name.startswith("motorcycle") else "depth: exact"
    else:
        right = Image.new("RGB", (w, height), (48, 48, 56))
        label = f"no depth: {estimated}"
    out = Image.new("RGB", (2 * w, height))
    out.paste(left, (0, 0))
    out.paste(right, (w, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=13)
    x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
    draw.rectangle((w, height - (y1 - y0) - 10, w + (x1 - x0) + 10, height), fill=(0, 0, 0))
    draw.text((w + 5, height - (y1 - y0) - 6 - y0), label, fill=(255, 255, 255), font=font)
    return np.asarray(out)
