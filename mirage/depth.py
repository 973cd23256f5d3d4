"""Metric depth and intrinsics for one image, behind one interface (``DepthBackend``).

Every backend maps an image ``[3, H, W]`` in ``[-1, 1]`` (and optionally its known intrinsics ``K``)
to a ``DepthEstimate``: depth ``[H, W]`` float32 metres at the input resolution, NaN where invalid,
and ``K`` ``[3, 3]`` in the continuous pixel convention of ``CONVENTIONS.md`` (pixel centres at
``u + 1/2``; a centred camera has its principal point at ``(W/2, H/2)``).

Backends:

* ``DepthProBackend``: Apple Depth Pro (transformers), metric depth *and* field of view from one image.
* ``DepthAnythingV2MetricBackend``: Depth Anything V2 metric checkpoints; the field of view is supplied.
* ``FileDepth``: a user depth map (``.npy`` metres or 16-bit PNG millimetres).
* ``GroundTruthDepth``: a known depth + ``K`` (bundled examples).
* ``PlanarPriorBackend``: NOT an estimate, a ground plane + back wall placeholder for offline use.

Plus ``align_scale`` (robust scale between two depth maps) and a small registry
(``DEPTH_SOURCES``, ``make_depth_backend``, ``weights_available``) that never touches the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mirage.cameras import intrinsics_from_fov

__all__ = [
    "DepthEstimate",
    "DepthBackend",
    "DepthProBackend",
    "DepthAnythingV2MetricBackend",
    "FileDepth",
    "GroundTruthDepth",
    "PlanarPriorBackend",
    "load_depth_file",
    "save_depth_png16",
    "align_scale",
    "estimate_frames",
    "DepthSourceInfo",
    "DepthSourceName",
    "DEPTH_SOURCES",
    "make_depth_backend",
    "weights_available",
    "DEPTH_PRO_ID",
    "DEPTH_ANYTHING_V2_METRIC_IDS",
    "MIN_ALIGN_PIXELS",
    "tiny_depth_pro_config",
    "tiny_depth_anything_config",
]

DEPTH_PRO_ID = "apple/DepthPro-hf"
DEPTH_ANYTHING_V2_METRIC_IDS = {
    "indoor-small": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",  # max depth 20 m (Hypersim)
    "indoor-base": "depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf",
    "indoor-large": "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf",
    "outdoor-small": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",  # max depth 80 m (Virtual KITTI)
    "outdoor-base": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Base-hf",
    "outdoor-large": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf",
}
MIN_ALIGN_PIXELS = 10  # align_scale refuses to fit a scale on fewer common valid pixels
_RANGE_TOLERANCE = 1e-3  # images may exceed [-1, 1] by this much (rounding), no more


@dataclass
class DepthEstimate:
    """Depth and intrinsics of one image."""

    depth: Tensor  # [H, W] float32 metres (camera z), NaN where invalid
    K: Tensor  # [3, 3] pixel intrinsics for this image (continuous convention, CONVENTIONS.md)
    source: str  # "depth-pro", "depth-anything-v2-metric", "file", "planar-prior", "ground-truth"


class DepthBackend(Protocol):
    name: str  # human-readable backend name
    needs_weights: bool  # True when the backend needs downloaded model weights

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        ...


# ----------------------------------------------------------------------------- validation helpers
def _check_image(image: Tensor) -> Tensor:  # [3, H, W] in [-1, 1]
    if not isinstance(image, Tensor):
        raise ValueError(f"image must be a torch.Tensor [3, H, W] in [-1, 1], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    return _check_pixels("image", image)


def _check_frames(frames: Tensor) -> Tensor:  # [3, F, H, W] in [-1, 1]
    if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[0] != 3:
        shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a tensor [3, F, H, W] in [-1, 1], got {shape}")
    return _check_pixels("frames", frames)


def _check_pixels(name: str, x: Tensor) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(x)).sum())} non-finite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} values must be in [-1, 1], got range [{lo:.4g}, {hi:.4g}] (map [0, 1] images with x * 2 - 1)"
        )
    return x


def _check_K(K: Tensor) -> Tensor:  # [3, 3] -> [3, 3] float32
    K = torch.as_tensor(K)
    if K.shape != (3, 3):
        raise ValueError(f"K must be [3, 3], got shape {tuple(K.shape)}")
    K = K.float()
    if not torch.isfinite(K).all() or float(K[0, 0]) <= 0 or float(K[1, 1]) <= 0:
        raise ValueError(f"K must be finite with positive focal lengths, got {K.tolist()}")
    return K


def _check_fov(fov_x_deg: float) -> float:
    if not (0.0 < float(fov_x_deg) < 180.0):
        raise ValueError(f"fov_x_deg must be in (0, 180) degrees, got {fov_x_deg}")
    return float(fov_x_deg)


def _valid(depth: Tensor) -> Tensor:  # [...] -> [...] bool
    """Valid depth per CONVENTIONS.md: finite and > 0."""
    return torch.isfinite(depth) & (depth > 0)


def _nan_invalid(depth: Tensor) -> Tensor:  # [...] -> [...] float32, NaN where invalid
    depth = depth.float()
    return torch.where(_valid(depth), depth, torch.full_like(depth, float("nan")))


def _resolve_K(stored: Tensor | None, given: Tensor | None, who: str) -> Tensor:  # [3, 3]
    """The intrinsics to report: the caller's K or the stored one; they must agree when both exist."""
    if given is not None:
        given = _check_K(given)
    if stored is not None and given is not None:
        if not torch.allclose(stored.cpu(), given.cpu(), rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"{who}: the K passed to estimate() {given.tolist()} disagrees with its own K {stored.tolist()}"
            )
    if given is not None:
        return given
    if stored is None:
        raise ValueError(f"{who} has no intrinsics: pass K to estimate() or give fov_x_deg / K when constructing it")
    return stored


def _default_device(device) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _default_dtype(torch_dtype, device: torch.device) -> torch.dtype:
    if torch_dtype is not None:
        return torch_dtype
    return torch.float16 if device.type == "cuda" else torch.float32


# ----------------------------------------------------------------------------- weights on disk
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _has_weights(folder: Path, extra_files: tuple[str, ...] = ()) -> bool:
    """config.json + a weights file (every shard of a sharded checkpoint) + ``extra_files``."""
    if not (folder / "config.json").is_file() or not all((folder / f).is_file() for f in extra_files):
        return False
    if any((folder / f).is_file() for f in _WEIGHT_FILES):
        return True
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            return all((folder / s).is_file() for s in shards)
    return False


def _local_weights(path_or_id: str, extra_files: tuple[str, ...] = (), cache_dir: str | None = None) -> Path | None:
    """The folder holding the weights (a local folder or the HF cache snapshot), or None. No network."""
    folder = Path(path_or_id).expanduser()
    if folder.is_dir():
        return folder if _has_weights(folder, extra_files) else None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(str(path_or_id), local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached, or not a valid repo id: both mean "not available locally"
        return None
    return folder if _has_weights(folder, extra_files) else None


def _weights_folder(
    path_or_id: str, what: str, extra_files: tuple[str, ...], local_files_only: bool, cache_dir: str | None
) -> Path:
    folder = _local_weights(path_or_id, extra_files, cache_dir)
    if folder is not None:
        return folder
    if local_files_only or Path(path_or_id).expanduser().is_dir():
        raise FileNotFoundError(
            f"{what} needs model weights: '{path_or_id}' is neither a local folder with config.json + weights "
            f"{'+ ' + ', '.join(extra_files) + ' ' if extra_files else ''}nor in the Hugging Face cache. "
            f"Download them where there is network (`hf download {path_or_id}`), pass a local folder, "
            f"or pass local_files_only=False to download now."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), cache_dir=cache_dir))
    except Exception as err:
        raise FileNotFoundError(f"{what} needs model weights and downloading '{path_or_id}' failed: {err}") from err


# ----------------------------------------------------------------------------- Depth Pro
def tiny_depth_pro_config():
    """A DepthProConfig small enough for CPU tests (sizes as in transformers' own DepthPro tests)."""
    from transformers import DepthProConfig

    return DepthProConfig(
        patch_size=16,
        fusion_hidden_size=16,
        intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[10, 8],
        scaled_images_ratios=[0.5, 1.0],
        scaled_images_overlap_ratios=[0.0, 0.2],
        scaled_images_feature_dims=[12, 12],
        use_fov_model=True,
        image_model_config=dict(model_type="dinov2", num_hidden_layers=2, hidden_size=16, num_attention_heads=1,
                                patch_size=4),
        patch_model_config=dict(model_type="vit", num_hidden_layers=2, hidden_size=24, num_attention_heads=2,
                                patch_size=6),
        fov_model_config=dict(model_type="vit", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                              patch_size=8),
    )


class DepthProBackend:
    """Depth Pro (``DepthProForDepthEstimation``): metric depth and horizontal field of view from one image.

    The network predicts a *canonical inverse depth* ``c`` and a field of view. As in transformers'
    ``DepthProImageProcessor.post_process_depth_estimation``, metric depth at an output of width ``W``
    with horizontal focal ``f_px`` (pixels) is ``depth = f_px / (W * c)``. So depth is linear in the
    focal length: with a known ``K`` we use ``f_px = K[0, 0]`` (equivalently, rescale the prediction by
    ``f_given / f_estimated``); otherwise ``f_px`` comes from the predicted field of view and ``K`` is the
    centred camera of that field of view. Inverse depths below 1e-4 (beyond 10 km, e.g. sky) are NaN.

    Preprocessing replicates ``DepthProImageProcessor`` in torch (that class needs torchvision, which we
    do not use): normalisation with mean = std = 0.5 maps our ``[-1, 1]`` input to itself, then a
    bilinear resize (no antialias) to the square network input ``patch_size / min(scaled_images_ratios)``
    (1536 for the released model). The canonical inverse depth is resized back bilinearly.
    """

    name = "depth-pro"
    needs_weights = True

    def __init__(self, model, *, batch_size: int = 4):
        if getattr(model, "fov_model", None) is None:
            raise ValueError("DepthProBackend needs the field-of-view head: build the model with use_fov_model=True")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        cfg = model.config
        self.input_size = int(round(cfg.patch_size / min(cfg.scaled_images_ratios)))  # square network input
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = DEPTH_PRO_ID,
        device=None,
        torch_dtype: torch.dtype | None = None,
        *,
        local_files_only: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 4,
    ) -> "DepthProBackend":
        """Load from a hub id (HF cache) or a local folder. Float16 on CUDA, float32 on CPU by default.

        With ``local_files_only=True`` (default) nothing is downloaded and missing weights raise
        ``FileNotFoundError`` saying what to download.
        """
        from transformers import DepthProForDepthEstimation

        folder = _weights_folder(path_or_id, "Depth Pro", (), local_files_only, cache_dir)
        device = _default_device(device)
        model = DepthProForDepthEstimation.from_pretrained(
            str(folder), use_fov_model=True, dtype=_default_dtype(torch_dtype, device)
        )
        return cls(model.to(device), batch_size=batch_size)

    @classmethod
    def from_config(cls, config=None, seed: int = 0, device="cpu") -> "DepthProBackend":
        """Random weights (``torch.manual_seed(seed)``); ``config=None`` gives ``tiny_depth_pro_config()``."""
        from transformers import DepthProForDepthEstimation

        torch.manual_seed(seed)
        config = config if config is not None else tiny_depth_pro_config()
        model = DepthProForDepthEstimation(config, use_fov_model=True)
        return cls(model.to(device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _predict(self, images: Tensor) -> tuple[Tensor, Tensor]:  # images [B, 3, H, W] in [-1, 1]
        """Canonical inverse depth ``[B, H, W]`` (float32, input resolution) and fov ``[B]`` in degrees."""
        B, _, H, W = images.shape
        dtype = next(self.model.parameters()).dtype
        x = images.to(self.device, torch.float32)  # mean = std = 0.5 normalisation is the identity on [-1, 1]
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.model(pixel_values=x.to(dtype))
        c = out.predicted_depth.float()[:, None]  # [B, 1, h, w]
        c = F.interpolate(c, size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # [B, H, W]
        return c, out.field_of_view.float().reshape(B)

    @staticmethod
    def _metric_depth(canonical_inverse: Tensor, fx: Tensor, width: int) -> Tensor:  # [B, H, W], fx [B]
        inverse = canonical_inverse * width / fx[:, None, None]  # [B, H, W] metric inverse depth (1/m)
        depth = 1.0 / inverse.clamp(max=1e4)
        return torch.where(torch.isfinite(inverse) & (inverse >= 1e-4), depth, torch.full_like(depth, float("nan")))

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        _, H, W = image.shape
        c, fov = self._predict(image[None])  # [1, H, W], [1]
        if K is None:
            fov_deg = float(fov[0])
            if not (0.0 < fov_deg < 180.0):
                raise ValueError(f"Depth Pro predicted a field of view of {fov_deg:.4g} deg, outside (0, 180); pass K")
            K = intrinsics_from_fov(W, H, fov_deg)
        K = _check_K(K)
        depth = self._metric_depth(c, K[0, 0].reshape(1).to(c), W)[0]  # [H, W]
        return DepthEstimate(depth.to(image.device), K.to(image.device), "depth-pro")

    def estimate_batch(self, frames: Tensor, K: Tensor) -> Tensor:  # frames [3, F, H, W]; K [3, 3] -> [F, H, W]
        """Depth of frames with known, shared intrinsics (pipeline updates), ``batch_size`` at a time."""
        frames = _check_frames(frames)
        K = _check_K(K)
        W = frames.shape[-1]
        x = frames.permute(1, 0, 2, 3)  # [F, 3, H, W] frames first
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            c, _ = self._predict(x[i : i + self.batch_size])  # [b, H, W]
            out.append(self._metric_depth(c, K[0, 0].to(c).expand(c.shape[0]), W))
        return torch.cat(out).to(frames.device)


# ----------------------------------------------------------------------------- Depth Anything V2 metric
def tiny_depth_anything_config(max_depth: int = 20):
    """A metric DepthAnythingConfig small enough for CPU tests (sizes as in transformers' own tests)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=8, out_indices=[1, 2], reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=4, patch_size=16, neck_hidden_sizes=[2, 2],
        fusion_hidden_size=6, depth_estimation_type="metric", max_depth=max_depth,
    )


def _depth_anything_processor(size: int, multiple: int):
    """The Depth Anything V2 preprocessing (as in the hub checkpoints' preprocessor_config.json)."""
    from transformers import DPTImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    return DPTImageProcessorPil(
        size={"height": size, "width": size}, keep_aspect_ratio=True, ensure_multiple_of=multiple, do_pad=False,
        resample=PILImageResampling.BICUBIC, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
    )


class DepthAnythingV2MetricBackend:
    """Depth Anything V2 metric checkpoints (``DepthAnythingForDepthEstimation``, metric head).

    The model predicts metric depth but no intrinsics, so ``K`` is the caller's ``K`` or a centred
    camera of ``fov_x_deg`` (default 60 degrees). The depth does not depend on ``K``. Preprocessing is
    the checkpoint's own ``DPTImageProcessorPil`` (8-bit PIL image, aspect-preserving bicubic resize to
    a multiple of 14 around 518 px, ImageNet normalisation); the prediction is resized back bilinearly.
    Indoor checkpoints saturate at 20 m, outdoor ones at 80 m (``DEPTH_ANYTHING_V2_METRIC_IDS``).
    """

    name = "depth-anything-v2-metric"
    needs_weights = True

    def __init__(self, model, processor, *, fov_x_deg: float = 60.0, batch_size: int = 4):
        if model.config.depth_estimation_type != "metric":
            kind = model.config.depth_estimation_type
            raise ValueError(f"need a metric Depth Anything checkpoint, got depth_estimation_type={kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.fov_x_deg = _check_fov(fov_x_deg)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = DEPTH_ANYTHING_V2_METRIC_IDS["indoor-small"],
        fov_x_deg: float = 60.0,
        device=None,
        torch_dtype: torch.dtype | None = None,
        *,
        local_files_only: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 4,
    ) -> "DepthAnythingV2MetricBackend":
        """Load model + processor from a hub id (HF cache) or a local folder; as ``DepthProBackend.from_pretrained``."""
        from transformers import DepthAnythingForDepthEstimation, DPTImageProcessorPil

        extra = ("preprocessor_config.json",)
        folder = _weights_folder(path_or_id, "Depth Anything V2", extra, local_files_only, cache_dir)
        device = _default_device(device)
        model = DepthAnythingForDepthEstimation.from_pretrained(str(folder), dtype=_default_dtype(torch_dtype, device))
        processor = DPTImageProcessorPil.from_pretrained(str(folder))
        return cls(model.to(device), processor, fov_x_deg=fov_x_deg, batch_size=batch_size)

    @classmethod
    def from_config(
        cls, config=None, seed: int = 0, fov_x_deg: float = 60.0, device="cpu"
    ) -> "DepthAnythingV2MetricBackend":
        """Random weights; ``config=None`` gives ``tiny_depth_anything_config()``; processor sized to the backbone."""
        from transformers import DepthAnythingForDepthEstimation

        config = config if config is not None else tiny_depth_anything_config()
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
        processor = _depth_anything_processor(config.backbone_config.image_size, config.patch_size)
        return cls(model.to(device), processor, fov_x_deg=fov_x_deg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _predict(self, images: Tensor) -> Tensor:  # images [B, 3, H, W] in [-1, 1] -> [B, H, W] metres
        B, _, H, W = images.shape
        rgb = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # [B, 3, H, W] 8-bit
        rgb = rgb.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3] channels last for PIL
        pixel_values = self.processor(images=list(rgb), return_tensors="pt")["pixel_values"]  # [B, 3, h, w]
        dtype = next(self.model.parameters()).dtype
        pred = self.model(pixel_values=pixel_values.to(self.device, dtype)).predicted_depth.float()  # [B, h, w]
        depth = F.interpolate(pred[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # [B, H, W]
        return _nan_invalid(depth)

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        _, H, W = image.shape
        K = _check_K(K) if K is not None else intrinsics_from_fov(W, H, self.fov_x_deg)
        depth = self._predict(image[None])[0]  # [H, W]
        return DepthEstimate(depth.to(image.device), K.to(image.device), "depth-anything-v2-metric")

    def estimate_batch(self, frames: Tensor, K: Tensor) -> Tensor:  # frames [3, F, H, W]; K [3, 3] -> [F, H, W]
        frames = _check_frames(frames)
        _check_K(K)
        x = frames.permute(1, 0, 2, 3)  # [F, 3, H, W] frames first
        out = [self._predict(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out).to(frames.device)


# ----------------------------------------------------------------------------- depth files
_PNG16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_depth_file(path) -> Tensor:  # -> [H, W] float32 metres, NaN where invalid
    """Read ``.npy`` (float metres) or a 16-bit grayscale PNG (millimetres); NaN/inf/<= 0 become NaN."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"depth file not found: {p}")
    ext = p.suffix.lower()
    if ext == ".npy":
        arr = np.load(p, allow_pickle=False)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{p}: depth .npy must hold real numbers (metres), got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    elif ext == ".png":
        with Image.open(p) as im:
            if im.mode not in _PNG16_MODES:
                raise ValueError(
                    f"{p} is a {im.mode!r} PNG (8-bit or colour), which cannot hold depth in millimetres; "
                    f"save a 16-bit grayscale PNG in mm (save_depth_png16) or a .npy in metres"
                )
            arr = np.array(im).astype(np.float32) / 1000.0  # mm -> m
    else:
        raise ValueError(f"unsupported depth file extension {ext!r} for {p}: use .npy (metres) or .png (16-bit, mm)")
    if arr.ndim != 2:
        raise ValueError(f"{p}: depth must be 2-D [H, W], got shape {arr.shape}")
    depth = _nan_invalid(torch.from_numpy(arr))
    if not _valid(depth).any():
        raise ValueError(f"{p}: depth map {arr.shape} has no valid pixel (all NaN, inf or <= 0)")
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
    valid = _valid(d)
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

    def __init__(self, depth_or_path, fov_x_deg: float | None = None, K: Tensor | None = None, *, resize: bool = False):
        if fov_x_deg is not None and K is not None:
            K_list = torch.as_tensor(K).tolist()
            raise ValueError(f"give fov_x_deg or K, not both (got fov_x_deg={fov_x_deg} and K={K_list})")
        if isinstance(depth_or_path, (str, Path)):
            depth = load_depth_file(depth_or_path)
        else:
            depth = torch.as_tensor(depth_or_path)
            if depth.dim() != 2:
                raise ValueError(f"depth must be 2-D [H, W], got shape {tuple(depth.shape)}")
            depth = _nan_invalid(depth)
            if not _valid(depth).any():
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


class GroundTruthDepth:
    """A known depth map and its intrinsics (bundled examples with ground truth)."""

    name = "ground-truth"
    needs_weights = False

    def __init__(self, depth: Tensor, K: Tensor):  # depth [H, W] metres; K [3, 3]
        depth = torch.as_tensor(depth)
        if depth.dim() != 2:
            raise ValueError(f"depth must be 2-D [H, W], got shape {tuple(depth.shape)}")
        self.depth = _nan_invalid(depth)  # [H, W]
        self.K = _check_K(K)  # [3, 3]

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        if tuple(image.shape[1:]) != tuple(self.depth.shape):
            (h, w), (H, W) = self.depth.shape, image.shape[1:]
            raise ValueError(f"ground-truth depth is {w}x{h} (WxH) but the image is {W}x{H}")
        K = _resolve_K(self.K, K, "GroundTruthDepth")
        return DepthEstimate(self.depth.clone().to(image.device), K.to(image.device), "ground-truth")


class PlanarPriorBackend:
    """PLACEHOLDER GEOMETRY, NOT A DEPTH ESTIMATE: a flat ground plane and a back wall, for offline use.

    The camera looks horizontally (OpenCV axes, +y down) from a height chosen so that the ground is at
    depth ``near`` at the bottom image edge; above the ground's intersection with it, a fronto-parallel
    wall stands at depth ``far``. With ray slope ``t = (v + 1/2 - cy) / fy`` for pixel row ``v`` and
    camera height ``h = near * (H - cy) / fy``, ``depth(v) = min(far, h / t)`` for ``t > 0`` and ``far``
    above the horizon. Depth grows toward the top of the image, is the same in every column, positive
    and valid everywhere, and deterministic. It lets the pipeline run without weights; it says nothing
    about the actual scene.
    """

    name = "planar-prior (placeholder geometry, not a depth estimate)"
    needs_weights = False

    def __init__(self, fov_x_deg: float = 60.0, near: float = 1.5, far: float = 8.0):
        if not (0 < float(near) < float(far) and math.isfinite(float(far))):
            raise ValueError(f"need 0 < near < far < inf, got near={near}, far={far}")
        self.fov_x_deg = _check_fov(fov_x_deg)
        self.near, self.far = float(near), float(far)

    def estimate(self, image: Tensor, K: Tensor | None = None) -> DepthEstimate:  # image [3, H, W] in [-1, 1]
        image = _check_image(image)
        _, H, W = image.shape
        K = _check_K(K) if K is not None else intrinsics_from_fov(W, H, self.fov_x_deg)
        fy, cy = float(K[1, 1]), float(K[1, 2])
        if not (0 <= cy < H):
            raise ValueError(f"planar prior needs the principal point inside the image: cy={cy}, H={H}")
        height = self.near * (H - cy) / fy  # camera height above the ground (m)
        t = (torch.arange(H, dtype=torch.float64) + 0.5 - cy) / fy  # [H] ray slope dy/dz per row
        ground = torch.where(t > 0, height / t.clamp(min=1e-12), torch.full_like(t, math.inf))  # [H]
        rows = ground.clamp(max=self.far).float()  # [H]
        depth = rows[:, None].expand(H, W).contiguous()  # [H, W] same in every column
        return DepthEstimate(depth.to(image.device), K.to(image.device), "planar-prior")


# ----------------------------------------------------------------------------- scale alignment
def align_scale(depth: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """Robust ``s`` with ``s * depth ~ reference`` on pixels valid in both (and True in ``mask``).

    Works on log ratios ``r = log(reference / depth)``: start at their median, keep ``|r - centre| <=
    3 * 1.4826 * MAD`` (MAD about the centre over the kept set), re-centre on the kept set's mean, and
    repeat until the kept set stops changing. Returns ``exp(centre)``. depth, reference, mask: ``[...]``
    of one shape. Raises ``ValueError`` with the count when fewer than ``MIN_ALIGN_PIXELS`` pixels are common.
    """
    depth, reference = torch.as_tensor(depth), torch.as_tensor(reference)
    if depth.shape != reference.shape:
        raise ValueError(f"depth {tuple(depth.shape)} and reference {tuple(reference.shape)} must have one shape")
    common = _valid(depth) & _valid(reference.to(depth.device))
    if mask is not None:
        mask = torch.as_tensor(mask, device=depth.device)
        if mask.shape != depth.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {tuple(depth.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        common &= mask
    n = int(common.sum())
    if n < MIN_ALIGN_PIXELS:
        raise ValueError(f"align_scale needs at least {MIN_ALIGN_PIXELS} pixels valid in both maps (and mask), got {n}")
    r = torch.log(reference.to(depth.device)[common].double()) - torch.log(depth[common].double())  # [n]
    centre = r.median()
    keep = torch.ones_like(r, dtype=torch.bool)  # [n]
    for _ in range(50):
        sigma = 1.4826 * (r[keep] - centre).abs().median()
        new_keep = (r - centre).abs() <= max(3.0 * float(sigma), 1e-9)
        centre = r[new_keep].mean()
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return float(torch.exp(centre))


def estimate_frames(backend: DepthBackend, frames: Tensor, K: Tensor) -> Tensor:  # [3, F, H, W]; K [3, 3] or [F, 3, 3] -> [F, H, W]
    """Depth of several frames with known intrinsics, shared (``[3, 3]``) or per frame (``[F, 3, 3]``,
    e.g. a zoom): one ``backend.estimate_batch`` call when the intrinsics agree and the backend has
    one, else a loop of ``estimate``."""
    frames = _check_frames(frames)
    Fr = frames.shape[1]
    if K.dim() == 3:
        if K.shape != (Fr, 3, 3):
            raise ValueError(f"per-frame K must be [{Fr}, 3, 3], got {tuple(K.shape)}")
        if bool((K == K[:1]).all()):
            K = K[0]
        else:
            return torch.stack([backend.estimate(frames[:, i], K[i]).depth for i in range(Fr)])
    if hasattr(backend, "estimate_batch"):
        return backend.estimate_batch(frames, K)
    return torch.stack([backend.estimate(frames[:, i], K).depth for i in range(Fr)])


# ----------------------------------------------------------------------------- registry
DepthSourceName = Literal["depth-pro", "depth-anything-v2-metric", "planar-prior"]


@dataclass(frozen=True)
class DepthSourceInfo:
    name: str  # registry key (DepthSourceName)
    needs_weights: bool  # True when make_depth_backend loads weights
    default_weights: str | None  # hub id loaded by default (None: no weights)
    other_weights: tuple[str, ...]  # other hub ids the backend accepts
    description: str  # one line for the UI


DEPTH_SOURCES: dict[str, DepthSourceInfo] = {
    "depth-pro": DepthSourceInfo(
        "depth-pro", True, DEPTH_PRO_ID, (), "Apple Depth Pro: metric depth and field of view from one image"
    ),
    "depth-anything-v2-metric": DepthSourceInfo(
        "depth-anything-v2-metric", True, DEPTH_ANYTHING_V2_METRIC_IDS["indoor-small"],
        tuple(v for k, v in DEPTH_ANYTHING_V2_METRIC_IDS.items() if k != "indoor-small"),
        "Depth Anything V2 metric depth; field of view supplied by you (default 60 deg)",
    ),
    "planar-prior": DepthSourceInfo(
        "planar-prior", False, None, (), "placeholder ground plane + back wall, NOT an estimate (no weights)"
    ),
}
_EXTRA_FILES = {"depth-pro": (), "depth-anything-v2-metric": ("preprocessor_config.json",)}


def _source(name: str) -> DepthSourceInfo:
    if name not in DEPTH_SOURCES:
        raise ValueError(f"unknown depth source {name!r}; choose one of {sorted(DEPTH_SOURCES)}")
    return DEPTH_SOURCES[name]


def make_depth_backend(name: DepthSourceName, **kw) -> DepthBackend:
    """Build a backend by registry name; ``kw`` go to ``from_pretrained`` (weights) or the constructor."""
    _source(name)
    if name == "depth-pro":
        return DepthProBackend.from_pretrained(**kw)
    if name == "depth-anything-v2-metric":
        return DepthAnythingV2MetricBackend.from_pretrained(**kw)
    return PlanarPriorBackend(**kw)


def weights_available(name: DepthSourceName, path_or_id: str | None = None, cache_dir: str | None = None) -> bool:
    """Whether ``make_depth_backend(name)`` can load without network (local folder or HF cache)."""
    info = _source(name)
    if not info.needs_weights:
        return True
    return _local_weights(path_or_id or info.default_weights, _EXTRA_FILES[name], cache_dir) is not None
