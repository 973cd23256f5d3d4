"""The depth interface: ``DepthEstimate``, the ``DepthBackend`` protocol and input checks shared by
every backend (images ``[3, H, W]`` in ``[-1, 1]``, intrinsics ``[3, 3]`` in the continuous pixel
convention of ``CONVENTIONS.md``; depth is camera z in metres, NaN where invalid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..geometry import valid_depth

__all__ = ["DepthEstimate", "DepthBackend", "nan_invalid"]

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



def nan_invalid(depth: Tensor) -> Tensor:  # [...] -> [...] float32, NaN where invalid
    """Depth as float32 with every invalid value (``geometry.valid_depth``) replaced by NaN."""
    depth = depth.float()
    return torch.where(valid_depth(depth), depth, torch.full_like(depth, float("nan")))


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

