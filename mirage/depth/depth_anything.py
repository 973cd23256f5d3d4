"""Depth Anything V2 metric checkpoints through transformers (the field of view is supplied)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import weights
from ..cameras import intrinsics_from_fov
from ..offload import execution_device
from ..images import to_uint8
from .base import (
    DepthEstimate, _check_fov, _check_frames, _check_image, _check_K, _default_device, _default_dtype, nan_invalid,
)  # fmt: skip

__all__ = ["DEPTH_ANYTHING_V2_METRIC_IDS", "DEPTH_ANYTHING_LAYOUT", "DepthAnythingV2MetricBackend", "depth_anything_processor"]

DEPTH_ANYTHING_V2_METRIC_IDS = {
    "indoor-small": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",  # max depth 20 m (Hypersim)
    "indoor-base": "depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf",
    "indoor-large": "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf",
    "outdoor-small": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",  # max depth 80 m (Virtual KITTI)
    "outdoor-base": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Base-hf",
    "outdoor-large": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf",
}
DEPTH_ANYTHING_LAYOUT: weights.Layout = {".": "model", "preprocessor_config.json": "file"}
_HINT = "Download them where there is network (`hf download {}`) or pass a local folder."


def depth_anything_processor(size: int, multiple: int):
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

        folder = weights.resolve(path_or_id, DEPTH_ANYTHING_LAYOUT, what="Depth Anything V2", hint=_HINT.format(path_or_id),
                                 local_files_only=local_files_only, cache_dir=cache_dir)
        device = _default_device(device)
        model = DepthAnythingForDepthEstimation.from_pretrained(str(folder), dtype=_default_dtype(torch_dtype, device))
        processor = DPTImageProcessorPil.from_pretrained(str(folder))
        return cls(model.to(device), processor, fov_x_deg=fov_x_deg, batch_size=batch_size)

    @classmethod
    def from_config(cls, config, seed: int = 0, fov_x_deg: float = 60.0, device="cpu") -> "DepthAnythingV2MetricBackend":
        """Random weights for a metric ``DepthAnythingConfig`` (tests use
        ``mirage.testing.tiny_depth_anything_config()``); the processor sized to its backbone."""
        from transformers import DepthAnythingForDepthEstimation

        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
        processor = depth_anything_processor(config.backbone_config.image_size, config.patch_size)
        return cls(model.to(device), processor, fov_x_deg=fov_x_deg)

    @property
    def device(self) -> torch.device:
        return execution_device(self.model)  # the offload hook's device when the pipeline offloads models

    @torch.no_grad()
    def _predict(self, images: Tensor) -> Tensor:  # images [B, 3, H, W] in [-1, 1] -> [B, H, W] metres
        B, _, H, W = images.shape
        rgb = to_uint8(images)  # [B, 3, H, W] 8-bit
        rgb = rgb.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3] channels last for PIL
        pixel_values = self.processor(images=list(rgb), return_tensors="pt")["pixel_values"]  # [B, 3, h, w]
        dtype = next(self.model.parameters()).dtype
        pred = self.model(pixel_values=pixel_values.to(self.device, dtype)).predicted_depth.float()  # [B, h, w]
        depth = F.interpolate(pred[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # [B, H, W]
        return nan_invalid(depth)

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


