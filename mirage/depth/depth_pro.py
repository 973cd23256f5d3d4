"""Apple Depth Pro through transformers: metric depth and field of view from one image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import weights
from ..cameras import intrinsics_from_fov
from ..offload import execution_device
from .base import DepthEstimate, _check_frames, _check_image, _check_K, _default_device, _default_dtype

__all__ = ["DEPTH_PRO_ID", "DEPTH_PRO_LAYOUT", "DepthProBackend", "split_to_patches_by_view"]

DEPTH_PRO_ID = "apple/DepthPro-hf"
DEPTH_PRO_LAYOUT: weights.Layout = {".": "model"}


def split_to_patches_by_view(pixel_values: Tensor, patch_size: int, overlap_ratio: float) -> Tensor:
    """transformers' Depth Pro ``split_to_patches`` (the same patches in the same order, bit for bit)
    without ``F.unfold``: on CUDA that runs im2col once per image with a 384 x 384 kernel, 168 ms of
    a chunk's 571 ms of depth on an H100 (``benchmarks/speed.py --depth --profile``); here one
    strided view, copied once. [B, C, H, W] -> [n * B, C, P, P], patch-major as transformers'."""
    B, C, H, W = pixel_values.shape
    if H == W == patch_size:
        return pixel_values
    stride = int(patch_size * (1 - overlap_ratio))
    patches = pixel_values.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # [B, C, nH, nW, P, P]
    return patches.permute(2, 3, 0, 1, 4, 5).reshape(-1, C, patch_size, patch_size)  # [nH * nW * B, C, P, P]


def _use_patches_by_view() -> None:
    """Make transformers' Depth Pro cut its patches with ``split_to_patches_by_view``: once, for every
    Depth Pro in the process, since the two give the same patches bit for bit (transformers' own stays
    in ``TRANSFORMERS_SPLIT_TO_PATCHES``). Set once and left, rather than swapped around each call: a
    lock held through a forward would deadlock a process forked meanwhile (ZeroGPU's workers are)."""
    global TRANSFORMERS_SPLIT_TO_PATCHES
    from transformers.models.depth_pro import modeling_depth_pro

    if modeling_depth_pro.split_to_patches is not split_to_patches_by_view:
        TRANSFORMERS_SPLIT_TO_PATCHES = modeling_depth_pro.split_to_patches
        modeling_depth_pro.split_to_patches = split_to_patches_by_view


TRANSFORMERS_SPLIT_TO_PATCHES = None  # transformers' split_to_patches, once _use_patches_by_view has replaced it


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
    (1536 for the released model). The canonical inverse depth is resized back bilinearly. The model
    cuts its patches with ``split_to_patches_by_view`` (the same patches, without im2col).
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
        _use_patches_by_view()

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

        folder = weights.resolve(path_or_id, DEPTH_PRO_LAYOUT, what="Depth Pro", local_files_only=local_files_only,
                                 cache_dir=cache_dir, hint=f"Download them where there is network (`hf download {path_or_id}`) "
                                 "or pass a local folder.")  # fmt: skip
        device = _default_device(device)
        model = DepthProForDepthEstimation.from_pretrained(
            str(folder), use_fov_model=True, dtype=_default_dtype(torch_dtype, device)
        )
        return cls(model.to(device), batch_size=batch_size)

    @classmethod
    def from_config(cls, config, seed: int = 0, device="cpu") -> "DepthProBackend":
        """Random weights (``torch.manual_seed(seed)``) for a ``DepthProConfig`` (tests use
        ``mirage.testing.tiny_depth_pro_config()``, benchmarks ``depth_pro_large_config()``)."""
        from transformers import DepthProForDepthEstimation

        torch.manual_seed(seed)
        model = DepthProForDepthEstimation(config, use_fov_model=True)
        return cls(model.to(device))

    @property
    def device(self) -> torch.device:
        return execution_device(self.model)  # the offload hook's device when the pipeline offloads models

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


