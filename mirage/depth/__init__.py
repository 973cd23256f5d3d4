"""Metric depth and intrinsics for one image, behind one interface (``DepthBackend``).

Every backend maps an image ``[3, H, W]`` in ``[-1, 1]`` (and optionally its known intrinsics ``K``)
to a ``DepthEstimate``: depth ``[H, W]`` float32 metres at the input resolution, NaN where invalid,
and ``K`` ``[3, 3]`` in the continuous pixel convention of ``CONVENTIONS.md``.

One module per concern:

* ``base``: ``DepthEstimate``, the ``DepthBackend`` protocol, input checks;
* ``depth_pro``: Apple Depth Pro (transformers), metric depth *and* field of view from one image;
* ``depth_anything``: Depth Anything V2 metric checkpoints; the field of view is supplied;
* ``files``: user depth maps (``.npy`` metres or 16-bit PNG millimetres) and ``FileDepth``;
* ``priors``: ``GroundTruthDepth`` (bundled examples) and ``PlanarPriorBackend``, which is NOT an
  estimate but a ground plane + back wall placeholder for offline use;
* ``align``: ``align_scale`` (robust scale between two depth maps) and ``estimate_frames``.

This file holds the registry (``DEPTH_SOURCES``, ``make_depth_backend``, ``weights_available``),
which never touches the network to answer whether weights are present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .. import weights
from .align import MIN_ALIGN_PIXELS, align_scale, estimate_frames
from .base import DepthBackend, DepthEstimate, nan_invalid
from .depth_anything import DEPTH_ANYTHING_LAYOUT, DEPTH_ANYTHING_V2_METRIC_IDS, DepthAnythingV2MetricBackend
from .depth_pro import DEPTH_PRO_ID, DEPTH_PRO_LAYOUT, DepthProBackend
from .files import FileDepth, load_depth_file, save_depth_png16
from .priors import GroundTruthDepth, PlanarPriorBackend

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
    "nan_invalid",
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
]

DepthSourceName = Literal["depth-pro", "depth-anything-v2-metric", "planar-prior"]


@dataclass(frozen=True)
class DepthSourceInfo:
    name: str  # registry key (DepthSourceName)
    needs_weights: bool  # True when make_depth_backend loads weights
    default_weights: str | None  # hub id loaded by default (None: no weights)
    other_weights: tuple[str, ...]  # other hub ids the backend accepts
    layout: weights.Layout | None  # what a complete checkpoint holds (None: no weights)
    description: str  # one line for the UI


DEPTH_SOURCES: dict[str, DepthSourceInfo] = {
    "depth-pro": DepthSourceInfo(
        "depth-pro", True, DEPTH_PRO_ID, (), DEPTH_PRO_LAYOUT, "Apple Depth Pro: metric depth and field of view from one image"
    ),
    "depth-anything-v2-metric": DepthSourceInfo(
        "depth-anything-v2-metric", True, DEPTH_ANYTHING_V2_METRIC_IDS["indoor-small"],
        tuple(v for k, v in DEPTH_ANYTHING_V2_METRIC_IDS.items() if k != "indoor-small"), DEPTH_ANYTHING_LAYOUT,
        "Depth Anything V2 metric depth; field of view supplied by you (default 60 deg)",
    ),
    "planar-prior": DepthSourceInfo(
        "planar-prior", False, None, (), None, "placeholder ground plane + back wall, NOT an estimate (no weights)"
    ),
}  # fmt: skip
assert set(DEPTH_SOURCES) == set(get_args(DepthSourceName))


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
    return weights.find_local(path_or_id or info.default_weights, info.layout, cache_dir) is not None
