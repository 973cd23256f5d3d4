"""Depth of generated frames: robust scale alignment to the memory, and batched estimation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import valid_depth
from .base import DepthBackend, _check_frames

__all__ = ["MIN_ALIGN_PIXELS", "align_scale", "estimate_frames"]

MIN_ALIGN_PIXELS = 10  # align_scale refuses to fit a scale on fewer common valid pixels


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
    common = valid_depth(depth) & valid_depth(reference.to(depth.device))
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


