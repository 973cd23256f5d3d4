"""The two 3D memories behind one protocol: latent tokens in 3D (Mirage) and the pixel RGB point
cloud (the baseline of GEN3C / Voyager / ViewCrafter-style systems).

Both are thin state (points, the frame each came from, per-point values) around the pure functions
of ``mirage.geometry``, and both implement ``SpatialMemory`` in full, so that callers never ask
which one they hold:

* ``initialize(observation)`` / ``update(observation)`` store an ``Observation`` (the frames'
  cameras and depths plus *both* their latents and their pixels); each memory takes what it stores
  (tokens on the latent grid, colours at pixel resolution) and returns a ``MemoryUpdate``: the
  points it added, the grid cells they came from and the cache size after. Nothing is left behind
  for another call to pick up;
* ``read(cameras)`` for a chunk's ``T = 4N + 1`` pixel-frame cameras -> ``MemoryReadout``: latents
  ``[C, F, h, w]``, visibility and depth ``[F, h, w]`` (``F = N + 1``), and visibility and depth at
  every pixel frame ``[T, H, W]``. The latent memory reads with one projection on the latent grid
  (its pixel-level fields are that grid's, upsampled as ``render`` does); the RGB memory rasterizes
  every pixel frame at full resolution and encodes the renders with its codec, exactly the work
  GEN3C-style systems do;
* ``read_views(cameras)``: one latent frame per camera (the RGB memory encodes each view alone);
* ``render(cameras)`` -> ``MemoryRender``: what the memory shows at each camera in pixels, with its
  mask and depth (the latent memory decodes each view's tokens as a single image with its codec);
* ``save`` / ``load`` (``mirage.memory_files``: safetensors, checked completely before a memory is
  returned), ``to_ply``, ``nbytes``, ``num_points``, ``size_history``, ``timings``.

Settings are one frozen ``MemoryConfig`` (saved with the cache); the performance switches
(``compact_footprints``, ``compile_reads``) change no result and are not saved. ``make_memory(kind,
config)`` is the one factory.

Reading (the same for both, ``geometry.splat_footprints``): every point carries the parallelogram its
cell covered on the surface (``geometry.cell_footprints``), and covers every target cell whose centre
lies inside its projection, so magnified views come back without cracks; a cell shows the closest
surface, and among points of one surface (the depth band) the oldest *frame* wins, then the closest
point. Updating (``update_policy``): ``"fuse"`` (default) stores, frame by frame, only the cells the
memory does not already account for from that camera (a hole in its readout, or a surface in front of
the one it shows), so revisits add nothing and the cache is bounded by the surface seen at the
memory's resolution; ``"append"`` stores every valid cell, as in the paper.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar, Literal, Protocol, get_args, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Camera, Cameras
from .frames import causal_upsample, latent_aligned
from .geometry import (
    cell_footprints,
    downsample_depth,
    downsample_mask_any,
    pixel_centers,
    splat_footprints,
    splat_zbuffer,
    surface_band_slack,
    unproject_depth,
    unproject_points,
    valid_depth,
)
from .images import from_uint8, to_uint8
from .timing import StageTimer

__all__ = [
    "MemoryKind",
    "MEMORY_KINDS",
    "UpdatePolicy",
    "UPDATE_POLICIES",
    "MemoryConfig",
    "Observation",
    "MemoryUpdate",
    "MemorySnapshot",
    "MemoryReadout",
    "MemoryRender",
    "SpatialMemory",
    "LatentSpatialMemory",
    "RGBPointCloudMemory",
    "make_memory",
    "load_memory",
    "voxel_keys",
    "near_voxel_keys",
    "write_ply",
]

MemoryKind = Literal["latent", "rgb"]
MEMORY_KINDS: tuple[str, ...] = get_args(MemoryKind)
UpdatePolicy = Literal["fuse", "append"]
UPDATE_POLICIES: tuple[str, ...] = get_args(UpdatePolicy)
TokenDtype = Literal["bfloat16", "float16", "float32"]  # storage of the latent memory's tokens
TOKEN_DTYPES: tuple[str, ...] = get_args(TokenDtype)
# How a memory turns its points into a readout: "footprint" (ours: crack-free footprint splat, the oldest
# frame within a surface band wins), "mirage-reference" (the latent memory as the official Mirage code's
# LatentPointCloud reads: one cell per point by rounding, closest wins), "spatia-reference" (the pixel
# memory as Spatia renders it: PyTorch3D discs, 5 points per pixel alpha-composited, mirage.point_raster)
ReadoutRule = Literal["footprint", "mirage-reference", "spatia-reference"]
READOUT_RULES: tuple[str, ...] = get_args(ReadoutRule)
EmptyLatent = Literal["zero", "black"]  # latent: the token of an empty cell (0, or the codec's latent of a black frame)
EMPTY_LATENTS: tuple[str, ...] = get_args(EmptyLatent)


@dataclass(frozen=True)
class MemoryConfig:
    """What a memory stores and how it reads, saved with the cache. Fields marked *latent* or
    *pixel* are used by that memory only; the strides are the codec's (checked when one is given)."""

    surface_tolerance: float = 0.05  # relative depth band of one surface (in it the oldest frame wins); 0 = plain z-buffer
    voxel_size: float | None = None  # metres: a new point is dropped next to a stored one (dedup); None = no dedup
    max_depth: float | None = None  # metres: cells farther than this are not stored (far / sky); None = no cut
    update_policy: UpdatePolicy = "fuse"  # "fuse": store what the memory does not explain; "append": every valid cell
    max_footprint_cells: int = 4  # candidate cells per axis of a projected footprint
    token_dtype: TokenDtype | None = "bfloat16"  # latent: storage of the tokens (the paper's bf16); None keeps the latents' dtype
    hole_value: float = 0.0  # pixel: colour of empty pixels in the renders, in [-1, 1]
    visible_fraction: float = 0.5  # pixel: a latent cell counts as seen when this share of its pixels is
    spatial_stride: int = 16  # pixels per latent cell (Wan2.2 VAE: 16; a codec given must have the same)
    temporal_stride: int = 4  # pixel frames per latent frame (Wan2.2 VAE: 4)
    readout: ReadoutRule = "footprint"  # how points become a readout (READOUT_RULES; the reference ones: see there)
    empty_latent: EmptyLatent = "zero"  # latent: what an empty cell reads as ("black": Spatia's background, encoded)
    point_radius: float = 0.01  # pixel, spatia-reference: disc radius in NDC (the shorter image side spans 2)
    points_per_pixel: int = 5  # pixel, spatia-reference: nearest points composited per pixel
    render_voxel: float | None = None  # pixel, spatia-reference: metres, the cloud is voxel-averaged before a read
    render_voxel_step: float = 0.0  # pixel, spatia-reference: metres added to render_voxel per update (per round)

    def __post_init__(self) -> None:
        def number(name: str, ok, what: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"{name} must be {what}, got {v!r}")

        number("surface_tolerance", lambda v: v >= 0, "a number >= 0")
        for name in ("voxel_size", "max_depth"):
            if getattr(self, name) is not None:
                number(name, lambda v: v > 0, "a number > 0 (metres) or None")
        if self.update_policy not in UPDATE_POLICIES:
            raise ValueError(f"update_policy must be one of {UPDATE_POLICIES}, got {self.update_policy!r}")
        for name in ("max_footprint_cells", "spatial_stride", "temporal_stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.token_dtype is not None and self.token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {TOKEN_DTYPES} or None, got {self.token_dtype!r}")
        number("hole_value", lambda v: -1 <= v <= 1, "a number in [-1, 1]")
        number("visible_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]")
        for name, allowed in (("readout", READOUT_RULES), ("empty_latent", EMPTY_LATENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.readout != "footprint" and self.update_policy == "fuse":
            raise ValueError(f"readout={self.readout!r} reads as its reference, which appends every valid cell: "
                             "use update_policy='append'")  # fmt: skip
        number("point_radius", lambda v: v > 0, "a number > 0 (NDC)")
        if isinstance(self.points_per_pixel, bool) or not isinstance(self.points_per_pixel, int) or self.points_per_pixel < 1:
            raise ValueError(f"points_per_pixel must be an int >= 1, got {self.points_per_pixel!r}")
        if self.render_voxel is not None:
            number("render_voxel", lambda v: v > 0, "a number > 0 (metres) or None")
        number("render_voxel_step", lambda v: v >= 0, "a number >= 0 (metres)")

    def check_codec(self, codec) -> "MemoryConfig":
        """This config, after checking that ``codec`` (if any) has its strides (``ValueError`` naming both)."""
        if codec is not None and (self.spatial_stride, self.temporal_stride) != (codec.spatial_stride, codec.temporal_stride):
            raise ValueError(f"the memory's strides {self.spatial_stride}/{self.temporal_stride} (spatial/temporal) are not "
                             f"the codec's {codec.spatial_stride}/{codec.temporal_stride} "
                             f"({getattr(codec, 'name', type(codec).__name__)})")  # fmt: skip
        return self


CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(MemoryConfig))


@dataclass
class Observation:
    """Frames for a memory to store: the input image (``F = 1``) or the latent-aligned frames of a chunk.

    Every memory receives everything and stores what it keeps; ``latents`` and ``frames`` describe the
    same ``F`` frames (a memory that needs one of them raises ``ValueError`` when it is missing).
    """

    cameras: Cameras  # F cameras at pixel size W x H
    depths: Tensor  # [F, H, W] camera-z metres, NaN where unknown ([F, h, w] on the latent grid also works for latents)
    latents: Tensor | None = None  # [C, F, h, w] normalized latents of these frames
    frames: Tensor | None = None  # [3, F, H, W] pixels in [-1, 1]
    exclude: Tensor | None = None  # [F, H, W] (or [F, h, w]) bool: never store (far, sky, dynamic)

    @classmethod
    def single(cls, camera: Camera, depth: Tensor, latent: Tensor | None = None, image: Tensor | None = None,
               exclude: Tensor | None = None) -> "Observation":  # fmt: skip
        """One frame: depth ``[H, W]``, latent ``[C, h, w]`` or ``[C, 1, h, w]``, image ``[3, H, W]``, exclude ``[H, W]``."""
        if latent is not None and latent.dim() == 3:
            latent = latent[:, None]  # [C, h, w] -> [C, 1, h, w]
        return cls(_as_cameras(camera, "camera"), depth[None], latent, None if image is None else image[:, None],
                   None if exclude is None else exclude[None])  # fmt: skip


@dataclass(frozen=True)
class MemoryUpdate:
    """What one ``initialize`` or ``update`` stored."""

    step: str  # "initialize" or "update"
    added: int  # points appended
    cells: Tensor  # [F, g_h, g_w] bool: the storage-grid cells the points came from, row-major in point order
    num_points: int  # points in the memory after the call
    nbytes: int  # bytes of the cache after the call

    def record(self) -> dict:  # one entry of ``size_history`` (and of a saved file)
        return {"step": self.step, "added": self.added, "num_points": self.num_points, "nbytes": self.nbytes}

    def cpu(self) -> "MemoryUpdate":
        return replace(self, cells=self.cells.cpu())

    def colors(self, frames: Tensor) -> Tensor:  # frames [3, F, H, W] in [-1, 1] -> [added, 3] uint8
        """The image colour of each point this update stored (the mean of its cell's pixels in the frame
        it came from), in point order, whatever the memory's grid."""
        F_, g_h, g_w = self.cells.shape
        if frames.dim() != 4 or frames.shape[:2] != (3, F_) or frames.shape[2] % g_h or frames.shape[3] != frames.shape[2] // g_h * g_w:
            raise ValueError(f"frames must be [3, {F_}, H, W] with H, W multiples of the grid {g_h}x{g_w}, got {tuple(frames.shape)}")
        mean = F.avg_pool2d(frames.permute(1, 0, 2, 3).float(), frames.shape[2] // g_h)  # [3, F, H, W] -> [F, 3, g_h, g_w]
        return to_uint8(mean).permute(0, 2, 3, 1)[self.cells.to(mean.device)]  # [F, g_h, g_w, 3] -> [added, 3]


@dataclass(frozen=True)
class MemorySnapshot:
    """Where a memory stood (``snapshot``), to go back there (``restore``). Both memories only ever
    append, so this is three counts, whatever the cache's size."""

    num_points: int
    frames_stored: int
    updates: int  # entries of size_history


@dataclass
class MemoryReadout:
    """What a memory returns for ``T`` pixel frames read as ``F`` latent frames (``read``: ``T = 4N + 1``,
    ``F = N + 1``, latent frame ``k`` at pixel frame ``4k``; ``read_views``: one latent frame per
    camera, ``T = F``).

    Both memories give every field. ``pixel_mask`` and ``pixel_depth`` are what the memory shows at
    every pixel frame: a pixel memory rasterized them (``raster``); the latent memory's are its grid's,
    each cell its ``spatial_stride`` block and latent frame ``k`` over pixel frames ``4k-3 .. 4k``
    (``frames.causal_upsample``), made when first asked for: a read of the latent memory stays a read
    of the grid."""

    latents: Tensor  # [C, F, h, w] normalized latents; zeros where hidden
    mask: Tensor  # [F, h, w] bool, True where the memory saw the cell
    depth: Tensor  # [F, h, w] readout depth in metres, NaN where hidden
    num_frames: int  # T: the pixel frames read
    spatial_stride: int  # pixels per cell of the latent grid
    temporal_stride: int  # pixel frames per latent frame of this readout (1 for read_views)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds for this read
    raster: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # (mask, depth) [T, H, W] a pixel memory drew
    coverage: Tensor | None = field(default=None, repr=False)  # [T, H, W] float: a soft raster's coverage (None: the mask)
    render: MemoryRender | None = field(default=None, repr=False)  # what the memory shows at every pixel frame
    # (read(..., render=True): the pixel memory's raster of the read itself, the latent memory's views decoded)

    @property
    def pixel_mask(self) -> Tensor:  # [T, H, W] bool: what the memory shows at every pixel frame
        return self._pixels()[0]

    @property
    def pixel_depth(self) -> Tensor:  # [T, H, W] metres at every pixel frame, NaN where hidden
        return self._pixels()[1]

    @property
    def pixel_coverage(self) -> Tensor:  # [T, H, W] float in [0, 1]: how much of each pixel the memory shows
        return self.pixel_mask.float() if self.coverage is None else self.coverage

    def cell_mask(self) -> Tensor:  # -> [T, H, W] bool
        """The latent-grid visibility (the cells the model is given) at every pixel frame: each cell its
        block, latent frame ``k`` over pixel frames ``4k-3 .. 4k``."""
        return causal_upsample(self.mask, self.num_frames, self.spatial_stride, self.temporal_stride)

    def _pixels(self) -> tuple[Tensor, Tensor]:
        if self.raster is None:  # the grid's, upsampled once
            depth = causal_upsample(self.depth, self.num_frames, self.spatial_stride, self.temporal_stride)
            self.raster = (self.cell_mask(), depth)  # [T, H, W] each
        return self.raster

    @property
    def hole_fraction(self) -> float:
        return 1.0 - float(self.mask.float().mean())

    def frame_depths(self, first: int = 1) -> Tensor:  # -> [F - first, H, W]
        """Depth at pixel resolution of the latent-aligned frames ``first .. F-1`` (pixel frames ``s * k``)."""
        return latent_aligned(self.pixel_depth, self.temporal_stride)[first:]

    def to(self, device: torch.device | str) -> "MemoryReadout":
        raster = None if self.raster is None else (self.raster[0].to(device), self.raster[1].to(device))
        render = None if self.render is None else self.render.to(device)
        coverage = None if self.coverage is None else self.coverage.to(device)
        return replace(self, latents=self.latents.to(device), mask=self.mask.to(device), depth=self.depth.to(device),
                       raster=raster, render=render, coverage=coverage)  # fmt: skip

    def cpu(self) -> "MemoryReadout":
        return self.to("cpu")


@dataclass
class MemoryRender:
    """What a memory shows at ``V`` cameras, in pixels."""

    frames: Tensor  # [3, V, H, W] in [-1, 1]; hole_value where empty
    mask: Tensor  # [V, H, W] bool, True where the memory saw the pixel
    depth: Tensor  # [V, H, W] metres, NaN where empty
    coverage: Tensor | None = None  # [V, H, W] float in [0, 1] where a render is soft (spatia-reference); None: mask

    def to(self, device: torch.device | str) -> "MemoryRender":
        return MemoryRender(self.frames.to(device), self.mask.to(device), self.depth.to(device),
                            None if self.coverage is None else self.coverage.to(device))  # fmt: skip


@runtime_checkable
class SpatialMemory(Protocol):
    """What every memory offers; callers use nothing else (``tests/test_memory.py`` checks both)."""

    kind: ClassVar[str]  # "latent" or "rgb" (MEMORY_KINDS)
    config: MemoryConfig  # what it stores and how it reads
    points: Tensor  # [N, 3] world positions of the stored points
    frame_ids: Tensor  # [N] int32 index of the observation (frame) each point came from, oldest first
    size_history: list[dict]  # one MemoryUpdate.record() per initialize/update
    timings: StageTimer  # per-stage seconds of every call

    @property
    def num_points(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def grid(self) -> tuple[int, int] | None: ...  # (rows, cols) of the storage grid, None before initialize

    @property
    def image_size(self) -> tuple[int, int] | None: ...  # (H, W) of the images the memory was made for

    def initialize(self, observation: Observation) -> MemoryUpdate: ...

    def update(self, observation: Observation) -> MemoryUpdate: ...

    def read(self, cameras: Cameras, render: bool = False) -> MemoryReadout: ...

    def read_views(self, cameras: Cameras) -> MemoryReadout: ...

    def render(self, cameras: Cameras) -> MemoryRender: ...

    def point_ids(self, cameras: Cameras) -> Tensor: ...

    def to(self, device: torch.device | str) -> "SpatialMemory": ...

    def snapshot(self) -> MemorySnapshot: ...

    def restore(self, snapshot: MemorySnapshot) -> None: ...

    def save(self, path: str | Path) -> Path: ...

    def to_ply(self, path: str | Path, colors: Tensor | None = None) -> Path: ...


# ----------------------------------------------------------------------------------- voxel keys
def _pack(ijk: Tensor) -> Tensor:  # [..., 3] int64 voxel indices -> [...] int64 keys
    if ijk.numel() and int(ijk.abs().max()) >= (1 << 20) - 1:
        raise ValueError("points span more than 2^20 voxels per axis; use a larger voxel_size")
    ijk = ijk + (1 << 20)
    return (ijk[..., 0] << 42) | (ijk[..., 1] << 21) | ijk[..., 2]


def voxel_keys(points: Tensor, voxel_size: float) -> Tensor:  # [N, 3] -> [N] int64
    """One integer per voxel of side ``voxel_size`` (21 bits per axis, about +-1e6 voxels)."""
    return _pack(torch.floor(points / voxel_size).long())


_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # [8, 3]


def near_voxel_keys(points: Tensor, voxel_size: float) -> Tensor:  # [N, 3] -> [N, 8] int64
    """Keys of the 2x2x2 voxel block nearest each point: every voxel within half a voxel of it
    (per axis) is among them, so a point closer than ``voxel_size / 2`` to another is always found."""
    low = torch.round(points / voxel_size).long() - 1  # [N, 3] lower corner of the block
    return _pack(low[:, None, :] + _CORNERS.to(points.device))  # [N, 8, 3] -> [N, 8]


def _first_of_each_key(keys: Tensor) -> Tensor:  # [M] -> [M] bool, True at the first occurrence
    uniq, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel(), device=keys.device), reduce="amin")
    keep = torch.zeros_like(keys, dtype=torch.bool)
    keep[first] = True
    return keep


def _as_cameras(cameras: Cameras | Camera, name: str = "cameras") -> Cameras:
    if isinstance(cameras, Camera):
        return cameras.batch()
    if not isinstance(cameras, Cameras):
        raise TypeError(f"{name} must be Camera or Cameras, got {type(cameras).__name__}")
    return cameras


# ----------------------------------------------------------------------------------- the shared state
class _PointMemory:
    """Points, the frame each came from, and per-point values (tokens or colours) on the memory's own
    grid (``grid``: the latent grid or the pixel grid). One ``update`` for both memories; the
    subclasses say which grid they store at, which values they keep and how they read."""

    kind: ClassVar[str]
    _default_compact: ClassVar[bool]  # the footprint splat's compaction when not chosen (same result either way)

    def __init__(self, config: MemoryConfig | None = None, *, codec=None, device=None,
                 compact_footprints: bool | None = None, compile_reads: bool = False) -> None:  # fmt: skip
        if config is not None and not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a mirage.memory.MemoryConfig, got {type(config).__name__}")
        self.config = (config or MemoryConfig()).check_codec(codec)
        self.codec = codec  # a mirage.codecs.VideoCodec (read / render need one where they encode or decode)
        # performance switches, never saved: the same result either way
        self.compact_footprints = self._default_compact if compact_footprints is None else bool(compact_footprints)
        self.compile_reads = bool(compile_reads)  # reads through torch.compile (fused kernels on a GPU)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.grid: tuple[int, int] | None = None  # (rows, cols) of the storage grid, set by initialize
        self.points = torch.zeros(0, 3, device=self.device)  # [N, 3] world
        self.frame_ids = torch.zeros(0, dtype=torch.int32, device=self.device)  # [N] observation index, oldest first
        self.axes = torch.zeros(0, 2, 3, dtype=torch.float16, device=self.device)  # [N, 2, 3] footprint half-axes (world)
        self.values: Tensor | None = None  # [N, D] tokens (latent) or uint8 colours (rgb)
        self.frames_stored = 0  # observations (frames) stored so far
        self.size_history: list[dict] = []
        self.timings = StageTimer(self.device)

    # ------------------------------------------------------------------ what subclasses define
    def _grid_of(self, cameras: Cameras) -> tuple[int, int]:  # (rows, cols) of the storage grid for these cameras
        raise NotImplementedError

    def _values_of(self, obs: Observation) -> Tensor:  # -> [F, rows, cols, D] values of each grid cell
        raise NotImplementedError

    def _stride(self) -> int:  # pixels per grid cell
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the cache: xyz (float32), frame id (int32), footprint axes (6 float16) and the
        values of every point."""
        return sum(t.numel() * t.element_size() for t in (self.points, self.frame_ids, self.axes, self.values) if t is not None)

    @property
    def image_size(self) -> tuple[int, int] | None:  # (H, W) of the images this memory was made for
        if self.grid is None:
            return None
        return self.grid[0] * self._stride(), self.grid[1] * self._stride()

    def to(self, device: torch.device | str):
        """This memory on ``device`` (its tensors moved; returns ``self``)."""
        self.device = torch.device(device)
        self.points, self.frame_ids, self.axes = self.points.to(device), self.frame_ids.to(device), self.axes.to(device)
        self.values = None if self.values is None else self.values.to(device)
        self.timings.device = self.device
        return self

    def state_tensors(self) -> dict[str, Tensor]:
        """What a file holds of the memory: points ``[N, 3]``, frame ids ``[N]``, footprint axes
        ``[N, 2, 3]``, values ``[N, D]`` (``mirage.memory_files``)."""
        return {"points": self.points, "frame_ids": self.frame_ids, "axes": self.axes, "values": self.values}

    def load_state(self, tensors: dict[str, Tensor], grid: tuple[int, int], frames_stored: int,
                   size_history: list[dict]) -> None:  # fmt: skip
        """The memory as a file described it (``mirage.memory_files`` checks it first)."""
        dev = self.device
        self.points, self.frame_ids = tensors["points"].to(dev), tensors["frame_ids"].to(dev)
        self.axes, self.values = tensors["axes"].to(dev), tensors["values"].to(dev)
        self.grid, self.frames_stored, self.size_history = (int(grid[0]), int(grid[1])), int(frames_stored), list(size_history)

    def snapshot(self) -> MemorySnapshot:
        """Where the memory stands now; ``restore`` goes back to it (after any later updates)."""
        return MemorySnapshot(self.num_points, self.frames_stored, len(self.size_history))

    def restore(self, snapshot: MemorySnapshot) -> None:
        """Drop everything stored after ``snapshot`` was taken (``ValueError`` for a snapshot of another
        state: more points or frames than the memory has)."""
        n, f, u = snapshot.num_points, snapshot.frames_stored, snapshot.updates
        if n > self.num_points or f > self.frames_stored or u > len(self.size_history) or (n > 0 and self.grid is None):
            raise ValueError(f"snapshot of {n} points, {f} frames is not of this memory ({self.num_points} points, "
                             f"{self.frames_stored} frames)")  # fmt: skip
        # copies, not views: a view would keep (and pickle) the whole of the larger storage
        self.points, self.frame_ids, self.axes = self.points[:n].clone(), self.frame_ids[:n].clone(), self.axes[:n].clone()
        self.values = None if self.values is None else self.values[:n].clone()
        self.frames_stored, self.size_history = f, self.size_history[:u]

    def __getstate__(self) -> dict:
        """Pickled without its codec (a model, which stays where it is loaded): whoever unpickles a
        memory gives it its codec again (``memory.codec = ...``), as ``MiragePipeline.step`` does."""
        return {**{k: v for k, v in self.__dict__.items() if k != "_black"}, "codec": None}  # (and what it encoded)

    def _require_grid(self) -> tuple[int, int]:
        if self.grid is None:
            raise RuntimeError("the memory is empty: call initialize() first")
        return self.grid

    def _on_grid(self, cameras: Cameras) -> Cameras:
        """Cameras rescaled to the storage grid (checked against the size the memory was made for)."""
        rows, cols = self._require_grid()
        if len(cameras) == 0:
            raise ValueError("no cameras to read: pass at least one camera")
        if self._grid_of(cameras) != (rows, cols):
            H, W = self.image_size
            raise ValueError(f"cameras are {cameras.width}x{cameras.height} but this memory was made for {W}x{H} images")
        return cameras if (cameras.height, cameras.width) == (rows, cols) else cameras.rescaled(cols, rows)

    # ------------------------------------------------------------------ initialize / update
    def initialize(self, observation: Observation) -> MemoryUpdate:
        """Start the memory from one observation (normally the input image, ``F = 1``)."""
        if not valid_depth(observation.depths).any():
            raise ValueError("depth has no valid (finite, positive) value; cannot initialize the memory")
        self.grid = self._grid_of(_as_cameras(observation.cameras))
        self.points = torch.zeros(0, 3, device=self.device)
        self.frame_ids = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.axes = torch.zeros(0, 2, 3, dtype=torch.float16, device=self.device)
        self.values, self.frames_stored, self.size_history = None, 0, []
        return self._store(observation, "initialize")

    def update(self, observation: Observation) -> MemoryUpdate:
        """Store the cells with valid depth that are not far (``max_depth``), not excluded, not
        already explained by the memory (``update_policy="fuse"``) and not already stored
        (``voxel_size``)."""
        self._require_grid()
        return self._store(observation, "update")

    def _store(self, obs: Observation, step: str) -> MemoryUpdate:
        cfg = self.config
        cameras = _as_cameras(obs.cameras)
        Fr = len(cameras)
        added_cells = []
        with self.timings.record(step):
            with self.timings.stage("update"):
                cams = self._on_grid(cameras).to(self.device)
                values = self._values_of(obs).to(self.device)  # [F, rows, cols, D]
                depth = self._cell_depth(obs.depths, Fr).to(self.device)  # [F, rows, cols]
                exclude = None if obs.exclude is None else self._mask_on_grid(obs.exclude, Fr).to(self.device)
                keep = valid_depth(depth)  # [F, rows, cols]
                if cfg.max_depth is not None:
                    keep &= depth <= cfg.max_depth
                if exclude is not None:
                    keep &= ~exclude
                pts = self._cell_points(torch.where(keep, depth, 1.0), cams)  # [F, rows, cols, 3]
                axes = cell_footprints(depth, cams.K, cams.world_from_cam)  # [F, rows, cols, 2, 3]
                fuse = cfg.update_policy == "fuse" and self.num_points > 0
                for f in range(Fr):  # frame by frame: a frame is fused against the ones stored before it
                    cell = keep[f] & ~self._explained(cams[f], depth[f]) if fuse else keep[f]  # [rows, cols]
                    new_pts = pts[f][cell]  # [M, 3]
                    sel = self._dedup(new_pts)  # [M]
                    cell[cell.clone()] = sel  # [rows, cols]: the appended cells, row-major like the points
                    self.points = torch.cat([self.points, new_pts[sel]])
                    self.axes = torch.cat([self.axes, axes[f][cell].to(torch.float16)])
                    self.frame_ids = torch.cat([self.frame_ids, torch.full((int(sel.sum()),), self.frames_stored + f,
                                                                           dtype=torch.int32, device=self.device)])  # fmt: skip
                    new_vals = values[f][cell]  # [M', D]
                    self.values = new_vals.clone() if self.values is None else torch.cat([self.values, new_vals.to(self.values.dtype)])
                    added_cells.append(cell)
                self.frames_stored += Fr
        cells = torch.stack(added_cells)  # [F, rows, cols]
        result = MemoryUpdate(step, int(cells.sum()), cells, self.num_points, self.nbytes)
        self.size_history.append(result.record())
        return result

    def _explained(self, camera: Cameras, depth: Tensor) -> Tensor:  # camera [1] on the grid, depth [rows, cols] -> bool
        """Cells the memory already accounts for from ``camera``: a stored surface covers the cell and
        the observed depth is not in front of it, i.e. within the read's surface band around the
        closest covering point (``surface_tolerance`` relative, widened by the local depth step between
        neighbouring cells) or behind it, where the stored surface hides it from this camera (at an
        object's silhouette a cell's footprint spans both sides; storing what it hides would add the
        same hidden points on every revisit and change no readout from here). Holes and nearer
        surfaces are not accounted for."""
        rows, cols = self._require_grid()
        shown = splat_footprints(self.points, self.axes, self.frame_ids, None, camera.K, camera.cam_from_world, rows, cols,
                                 surface_tolerance=self.config.surface_tolerance, max_cells=self.config.max_footprint_cells,
                                 compact=self.compact_footprints, compiled=self.compile_reads)  # fmt: skip
        zmin = shown.closest  # [1, rows, cols], NaN where nothing covers the cell
        band = self.config.surface_tolerance * zmin
        if self.config.surface_tolerance > 0:  # as in the read: grazing surfaces get the local depth step as slack
            band = band + surface_band_slack(torch.where(shown.mask, zmin, torch.inf))
        return (shown.mask & (depth >= zmin - band))[0]

    def _cell_depth(self, depths: Tensor, Fr: int) -> Tensor:  # [F, H, W] or [F, rows, cols] -> [F, rows, cols]
        """The depth of each storage cell (NaN where invalid)."""
        return self._depth_on_grid(depths, Fr, "depths")

    def _cell_points(self, depth: Tensor, cams: Cameras) -> Tensor:  # [F, rows, cols] valid, cams on the grid -> [F, rows, cols, 3]
        """The world point of each storage cell: its centre lifted with its depth."""
        return unproject_depth(depth, cams.K, cams.world_from_cam)

    def _depth_on_grid(self, depths: Tensor, Fr: int, name: str) -> Tensor:  # [F, H, W] or [F, rows, cols] -> [F, rows, cols]
        rows, cols = self._require_grid()
        if depths.dim() != 3 or depths.shape[0] != Fr:
            raise ValueError(f"{name} must be [F={Fr}, H, W], got {tuple(depths.shape)}")
        if tuple(depths.shape[-2:]) == (rows, cols):
            return downsample_depth(depths, 1)  # invalid depth made NaN
        return downsample_depth(depths, self._factor(depths.shape[-2:], name))  # [F, rows, cols]

    def _mask_on_grid(self, mask: Tensor, Fr: int) -> Tensor:  # [F, H, W] bool -> [F, rows, cols] (any pixel set)
        if mask.dim() != 3 or mask.shape[0] != Fr:
            raise ValueError(f"exclude must be [F={Fr}, H, W] bool, got {tuple(mask.shape)}")
        mask = mask.bool()
        if tuple(mask.shape[-2:]) == self._require_grid():
            return mask
        return downsample_mask_any(mask, self._factor(mask.shape[-2:], "exclude"))

    def _factor(self, size, name: str) -> int:
        rows, cols = self._require_grid()
        H, W = size
        if H % rows or W % cols or H // rows != W // cols:
            raise ValueError(f"{name} size {H}x{W} is not a whole multiple of the memory's grid {rows}x{cols}")
        return H // rows

    def _dedup(self, new_points: Tensor) -> Tensor:  # [M, 3] -> [M] bool, the new points to keep
        """Drop a new point when a stored point lies in the 2x2x2 voxel block nearest it (always when
        closer than half a voxel, never when farther than two), or an earlier new point shares its voxel."""
        keep = torch.ones(new_points.shape[0], dtype=torch.bool, device=new_points.device)
        voxel = self.config.voxel_size
        if voxel is None or new_points.shape[0] == 0:
            return keep
        new_keys = voxel_keys(new_points, voxel)  # [M]
        if self.num_points:
            near = near_voxel_keys(new_points, voxel)  # [M, 8]
            keep &= ~torch.isin(near, voxel_keys(self.points, voxel)).any(dim=1)
        keep &= _first_of_each_key(torch.where(keep, new_keys, -1 - torch.arange(len(keep), device=keep.device)))
        return keep

    # ------------------------------------------------------------------ splat
    def _splat(self, cameras: Cameras, features: Tensor | None):
        """Footprint z-buffer of the stored points into ``cameras`` on the storage grid (band rule by frame age)."""
        rows, cols = self._require_grid()
        cams = self._on_grid(cameras)
        return splat_footprints(self.points, self.axes, self.frame_ids, features, cams.K, cams.cam_from_world, rows, cols,
                                surface_tolerance=self.config.surface_tolerance, max_cells=self.config.max_footprint_cells,
                                compact=self.compact_footprints, compiled=self.compile_reads)  # fmt: skip

    def point_ids(self, cameras: Cameras) -> Tensor:  # -> [V, rows, cols] long, -1 where empty
        """Which stored point each cell of the memory's grid shows from each camera (the read's z-buffer)."""
        return self._splat(_as_cameras(cameras), None).index

    # ------------------------------------------------------------------ files (mirage.memory_files)
    def save(self, path: str | Path) -> Path:
        """Write the cache (points, frame ids, footprints, values, config, size history) as safetensors."""
        from .memory_files import save_memory

        return save_memory(self, path)

    @classmethod
    def load(cls, path: str | Path, codec=None, device=None, **performance):
        """A memory of this kind from a file written by ``save``, checked completely first: ``ValueError``
        naming the file and the problem otherwise (another kind, a bad config, missing or misshaped
        tensors, counts that disagree, non-finite points). ``performance``: ``compact_footprints``,
        ``compile_reads``."""
        from .memory_files import load_memory_file

        return load_memory_file(path, kinds=(cls.kind,), codec=codec, device=device, **performance)


def load_memory(path: str | Path, codec=None, device=None, **performance) -> "LatentSpatialMemory | RGBPointCloudMemory":
    """Either memory from a file written by ``save`` (checked completely, as ``load``)."""
    from .memory_files import load_memory_file

    return load_memory_file(path, kinds=MEMORY_KINDS, codec=codec, device=device, **performance)


def make_memory(kind: MemoryKind, config: MemoryConfig | None = None, *, codec=None, device=None,
                **performance) -> "LatentSpatialMemory | RGBPointCloudMemory":  # fmt: skip
    """A new, empty memory of ``kind`` (``"latent"`` or ``"rgb"``) with ``config``; ``performance``:
    ``compact_footprints``, ``compile_reads``."""
    if kind not in MEMORY_KINDS:
        raise ValueError(f"memory kind must be one of {MEMORY_KINDS}, got {kind!r}")
    cls = LatentSpatialMemory if kind == "latent" else RGBPointCloudMemory
    return cls(config, codec=codec, device=device, **performance)


def write_ply(path: str | Path, points: Tensor, colors: Tensor, features: Tensor | None = None) -> Path:
    """points ``[N, 3]``, colors ``[N, 3]`` uint8, optional features ``[N, C]`` -> binary little-endian PLY."""
    import numpy as np

    pts = points.detach().float().cpu().numpy()
    col = torch.as_tensor(colors).detach().cpu().to(torch.uint8).numpy()
    if pts.shape[0] != col.shape[0]:
        raise ValueError(f"{pts.shape[0]} points but {col.shape[0]} colours")
    fields_ = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    feats = None
    if features is not None:
        feats = features.detach().float().cpu().numpy()
        fields_ += [(f"latent_{i}", "f4") for i in range(feats.shape[1])]
    rec = np.empty(pts.shape[0], dtype=np.dtype(fields_).newbyteorder("<"))
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    if feats is not None:
        for i in range(feats.shape[1]):
            rec[f"latent_{i}"] = feats[:, i]
    ply_types = {"f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {pts.shape[0]}"]
    header += [f"property {ply_types[t]} {n}" for n, t in fields_] + ["end_header"]
    path = Path(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())
    return path


def _readout(latents: Tensor, render: MemoryRender, stride: int, visible_fraction: float, temporal_stride: int,
             timings: dict) -> MemoryReadout:  # fmt: skip
    """A pixel memory's readout of rasterized frames ``render`` and their ``latents [C, F, h, w]``: a
    latent cell is seen where ``visible_fraction`` of its pixels are, at the latent-aligned frames."""
    aligned_mask = latent_aligned(render.mask, temporal_stride)  # [F, H, W]
    seen = F.avg_pool2d(aligned_mask.float()[:, None], stride)[:, 0]  # [F, h, w] share of seen pixels
    mask = (seen >= visible_fraction).to(latents.device)
    depth = downsample_depth(latent_aligned(render.depth, temporal_stride), stride).to(latents.device)  # [F, h, w]
    return MemoryReadout(latents, mask, torch.where(mask, depth, torch.nan), render.mask.shape[0], stride, temporal_stride,
                         dict(timings), raster=(render.mask, render.depth), coverage=render.coverage)  # fmt: skip


# ----------------------------------------------------------------------------------- latent memory
class LatentSpatialMemory(_PointMemory):
    """Latent tokens lifted to 3D: one point per latent cell with valid depth, feature = its token.

    Reading for a camera is one hard z-buffer projection on the latent grid; reading the source
    camera back returns the source tokens exactly on every valid cell. ``codec`` is needed only by
    ``render`` (to decode each view's tokens into pixels) and sets the strides.
    """

    kind = "latent"
    _default_compact = False  # no host sync in a read (a latent read is launch-bound on a GPU)

    @property
    def features(self) -> Tensor | None:  # [N, C] tokens in the latent dtype
        return self.values

    @property
    def spatial_stride(self) -> int:
        return self.config.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.config.temporal_stride

    def _stride(self) -> int:
        return self.config.spatial_stride

    def _grid_of(self, cameras: Cameras) -> tuple[int, int]:
        s = self.config.spatial_stride
        if cameras.width % s or cameras.height % s:
            raise ValueError(f"cameras are {cameras.width}x{cameras.height}, not a multiple of the latent stride {s}")
        return cameras.height // s, cameras.width // s

    def _values_of(self, obs: Observation) -> Tensor:  # -> [F, h, w, C]
        lat = obs.latents
        if lat is None:
            raise ValueError("the latent memory stores latents: the observation has none")
        h, w = self._require_grid()
        if lat.dim() != 4 or tuple(lat.shape[-2:]) != (h, w) or lat.shape[1] != len(obs.cameras):
            raise ValueError(f"latents must be [C, F={len(obs.cameras)}, {h}, {w}], got {tuple(lat.shape)}")
        if self.values is not None and lat.shape[0] != self.values.shape[1]:
            raise ValueError(f"latents have {lat.shape[0]} channels, the memory holds {self.values.shape[1]}")
        dtype = self.config.token_dtype
        lat = lat if dtype is None else lat.to(getattr(torch, dtype))
        return lat.permute(1, 2, 3, 0)  # [C, F, h, w] -> [F, h, w, C]

    # ---------------------------------------------------------- readout="mirage-reference"
    # The official Mirage code's LatentPointCloud (microsoft/LatentSpatialMemory b2cd738,
    # src/mirage/latent_point_cloud.py), in our conventions: it is given OpenCV intrinsics (pixel
    # centres at integers, ours + 1/2) scaled by 1/stride, so its cell (u, v) is our continuous grid
    # point (u + 1/(2s), v + 1/(2s)), and its round() of a projection is our floor(x + 1/2 - 1/(2s)).
    # Depth reaches the grid by bilinear resampling with holes as 0 (blended into their neighbours, as
    # there); one cell per point, the closest wins (ties: the lowest index, where the reference's
    # depth argsort is not stable; its last-write-wins index_put with repeated cells is a race, on the
    # CPU too, unless torch.use_deterministic_algorithms is on: then it is the closest, as here;
    # benchmarks/mirage_loop_equivalence.py); no footprints, no band, no far cut.
    def _reference(self) -> bool:
        return self.config.readout == "mirage-reference"

    def _cell_depth(self, depths: Tensor, Fr: int) -> Tensor:  # [F, H, W] or [F, h, w] -> [F, h, w], NaN where invalid
        if not self._reference() or tuple(depths.shape[-2:]) == self._require_grid():
            return super()._cell_depth(depths, Fr)
        if depths.dim() != 3 or depths.shape[0] != Fr:
            raise ValueError(f"depths must be [F={Fr}, H, W], got {tuple(depths.shape)}")
        self._factor(depths.shape[-2:], "depths")  # a whole multiple of the grid
        d = torch.where(valid_depth(depths), depths.float(), 0.0)[:, None]  # [F, 1, H, W] holes as 0, as the reference has them
        d = F.interpolate(d, size=self._require_grid(), mode="bilinear", align_corners=False)[:, 0]  # [F, h, w]
        return torch.where(d > 0, d, torch.nan)

    def _cell_points(self, depth: Tensor, cams: Cameras) -> Tensor:  # [F, h, w], cams on the grid -> [F, h, w, 3]
        if not self._reference():
            return super()._cell_points(depth, cams)
        Fr, h, w = depth.shape
        uv = pixel_centers(h, w, depth.device) - 0.5 + 0.5 / self.config.spatial_stride  # [h, w, 2] the reference's cells
        pts = unproject_points(uv.reshape(1, h * w, 2).expand(Fr, -1, -1), depth.float().reshape(Fr, h * w),
                               cams.K.to(depth.device), cams.world_from_cam.to(depth.device))  # [F, h*w, 3]  # fmt: skip
        return pts.reshape(Fr, h, w, 3)

    def _splat(self, cameras: Cameras, features: Tensor | None):
        if not self._reference():
            return super()._splat(cameras, features)
        rows, cols = self._require_grid()
        cams = self._on_grid(cameras)
        K = cams.K.clone()  # [V, 3, 3]
        K[:, :2, 2] += 0.5 - 0.5 / self.config.spatial_stride  # floor of the shifted projection = the reference's round()
        return splat_zbuffer(self.points, features, K, cams.cam_from_world, rows, cols)

    def _empty(self, num_frames: int, temporal_stride: int, views: int) -> Tensor:  # -> [C, V, h, w]
        """What an empty cell reads as with ``empty_latent="black"``: the codec's latent of a black video of
        ``num_frames`` frames (``read``), or of a black image (``read_views``, one per view)."""
        if self.codec is None:
            raise ValueError("empty_latent='black' needs the codec (the latent of a black frame): LatentSpatialMemory(codec=...)")
        cache = self.__dict__.setdefault("_black", {})
        key = (num_frames if temporal_stride > 1 else 1, str(self.device))
        if key not in cache:
            H, W = self.image_size
            black = -torch.ones(1, 3, key[0], H, W, device=self.device)  # [1, 3, T, H, W] black in [-1, 1]
            cache[key] = self.codec.encode(black)[0].float()  # [C, F, h, w]
        return cache[key].expand(-1, views, -1, -1) if temporal_stride == 1 else cache[key]

    def _read(self, cameras: Cameras, num_frames: int, temporal_stride: int) -> MemoryReadout:
        """One latent frame per camera, standing for ``num_frames`` pixel frames ``temporal_stride`` apart."""
        with self.timings.record("read") as rec:
            with self.timings.stage("project"):
                out = self._splat(cameras, self.values)  # cameras stay where they are: one [V, 3, 4] projection moves
                latents = out.features.permute(1, 0, 2, 3)  # [V, C, h, w] -> [C, V, h, w]
                if self.config.empty_latent == "black":
                    empty = self._empty(num_frames, temporal_stride, len(cameras)).to(latents.dtype)  # [C, V, h, w]
                    latents = torch.where(out.mask[None], latents, empty)
        return MemoryReadout(latents, out.mask, out.depth, num_frames, self.config.spatial_stride, temporal_stride, dict(rec))

    def read(self, cameras: Cameras, render: bool = False) -> MemoryReadout:
        """Read a chunk: ``T = 4N + 1`` pixel-frame cameras -> ``F = N + 1`` latent frames (frame ``4k``).
        ``render``: also what the memory shows at every pixel frame (``render``; timed as "render", apart)."""
        cameras = _as_cameras(cameras)
        ts = self.config.temporal_stride
        out = self._read(latent_aligned(cameras, ts), len(cameras), ts)
        if render:
            t0 = time.perf_counter()
            out.render = self.render(cameras)
            out.timings["render"] = time.perf_counter() - t0
        return out

    def read_views(self, cameras: Cameras) -> MemoryReadout:
        """One latent frame per camera: latents ``[C, V, h, w]``, mask ``[V, h, w]``."""
        cameras = _as_cameras(cameras)
        return self._read(cameras, len(cameras), 1)

    def render(self, cameras: Cameras) -> MemoryRender:
        """Each camera's readout decoded as a single image with the codec (every view, not only frames 4k)."""
        if self.codec is None:
            raise ValueError("the latent memory needs a codec to render pixels: LatentSpatialMemory(codec=...)")
        out = self.read_views(cameras)
        lat = out.latents.permute(1, 0, 2, 3)[:, :, None]  # [C, V, h, w] -> [V, C, 1, h, w] one image per view
        frames = self.codec.decode(lat)[:, :, 0].float()  # [V, 3, H, W]
        return MemoryRender(frames=frames.permute(1, 0, 2, 3), mask=out.pixel_mask, depth=out.pixel_depth)  # [3, V, H, W]

    def to_ply(self, path: str | Path, colors: Tensor | None = None) -> Path:
        """Binary PLY: x y z (float32), red green blue (uint8, PCA of the tokens unless given), and
        every latent channel as ``latent_i`` (float32)."""
        self._require_grid()
        if colors is None:
            from .plotting import pca_colors

            colors = torch.as_tensor(pca_colors(self.values.float().cpu()))
        return write_ply(path, self.points, colors, self.values)


# ----------------------------------------------------------------------------------- pixel memory
class RGBPointCloudMemory(_PointMemory):
    """The pixel-space baseline: one RGB point per pixel with valid depth.

    ``read`` rasterizes every pixel frame of the chunk at full resolution (the same footprint z-buffer
    as the latent memory) and encodes the renders with ``codec`` to get the conditioning latent,
    exactly the work GEN3C-style systems do per chunk.
    """

    kind = "rgb"
    _default_compact = True  # only the covered candidates of millions of points (the same result)

    @property
    def colors(self) -> Tensor:  # [N, 3] uint8
        return self.values if self.values is not None else torch.zeros(0, 3, dtype=torch.uint8, device=self.device)

    def _stride(self) -> int:
        return 1

    def _grid_of(self, cameras: Cameras) -> tuple[int, int]:
        return cameras.height, cameras.width

    def _values_of(self, obs: Observation) -> Tensor:  # -> [F, H, W, 3] uint8
        frames = obs.frames
        if frames is None:
            raise ValueError("the pixel memory stores colours: the observation has no frames")
        H, W = self._require_grid()
        if frames.dim() != 4 or frames.shape[0] != 3 or tuple(frames.shape[-2:]) != (H, W) or frames.shape[1] != len(obs.cameras):
            raise ValueError(f"frames must be [3, F={len(obs.cameras)}, {H}, {W}], got {tuple(frames.shape)}")
        if tuple(obs.depths.shape[-2:]) != (H, W):
            raise ValueError(f"the pixel memory needs depth at pixel resolution {H}x{W}, got {tuple(obs.depths.shape)}")
        return to_uint8(frames).permute(1, 2, 3, 0)  # [3, F, H, W] -> [F, H, W, 3]

    def render(self, cameras: Cameras) -> MemoryRender:
        """Rasterize ``V`` views at full resolution: frames ``[3, V, H, W]``, mask and depth ``[V, H, W]``."""
        cameras = _as_cameras(cameras)
        if self.config.readout == "spatia-reference":
            return self._spatia_render(cameras)
        H, W = self._require_grid()
        out = self._splat(cameras, None)
        rgb = self.colors[out.index.clamp(min=0).reshape(-1)].view(len(cameras), H, W, 3) if self.num_points else \
            torch.zeros(len(cameras), H, W, 3, dtype=torch.uint8, device=self.device)  # fmt: skip
        img = torch.where(out.mask.unsqueeze(-1), from_uint8(rgb), self.config.hole_value)  # [V, H, W, 3]
        return MemoryRender(frames=img.permute(3, 0, 1, 2).contiguous(), mask=out.mask, depth=out.depth)  # [3, V, H, W]

    def _spatia_render(self, cameras: Cameras) -> MemoryRender:
        """``readout="spatia-reference"``: the cloud as Spatia renders it for its branch (ZhaoJingjing713/Spatia
        5dd3457, inference.py and utils/render_point*.py): voxel-averaged at ``render_voxel`` plus
        ``render_voxel_step`` per update so far (its 1 cm + 0.5 cm per round), then PyTorch3D discs of
        ``point_radius`` NDC, the ``points_per_pixel`` nearest alpha-composited on ``hole_value``
        (``mirage.point_raster``), through Spatia's own camera conversion (``spatia_intrinsics``);
        ``coverage`` is its score render's. Not reproduced: its 8-bit mp4 round trips."""
        from .point_raster import rasterize_points, spatia_intrinsics, voxel_downsample

        cfg = self.config
        H, W = self._require_grid()
        points, colors = self.points, from_uint8(self.colors).add(1).div(2)  # [N, 3] in [0, 1]
        if cfg.render_voxel is not None and self.num_points:
            rounds = max(0, len(self.size_history) - 1)  # updates since the image: Spatia's round index
            points, colors = voxel_downsample(points, colors, cfg.render_voxel + cfg.render_voxel_step * rounds)
        K = spatia_intrinsics(cameras.K.to(self.device), H, W)  # [V, 3, 3]
        r = rasterize_points(points, colors, cameras.cam_from_world.to(self.device), K, (H, W), cfg.point_radius,
                             cfg.points_per_pixel, background=(cfg.hole_value + 1) / 2)  # fmt: skip
        frames = (r.features * 2 - 1).permute(1, 0, 2, 3).contiguous()  # [V, 3, H, W] in [0, 1] -> [3, V, H, W] in [-1, 1]
        return MemoryRender(frames, r.count > 0, r.depth, r.coverage)

    def _codec(self):
        if self.codec is None:
            raise ValueError("the pixel memory needs a codec to read latents: RGBPointCloudMemory(codec=...)")
        return self.codec

    def read(self, cameras: Cameras, render: bool = False) -> MemoryReadout:
        """Rasterize all ``T = 4N + 1`` pixel frames and encode them as one video: latents ``[C, N+1, h, w]``.
        ``render``: the readout also keeps the frames rasterized for it (no second rasterization)."""
        cameras = _as_cameras(cameras)
        codec, ts = self._codec(), self.config.temporal_stride
        latent_aligned(cameras, ts)  # validates T
        with self.timings.record("read") as rec:
            with self.timings.stage("rasterize"):
                r = self.render(cameras)  # frames [3, T, H, W], mask [T, H, W], depth [T, H, W]
            with self.timings.stage("encode"):
                latents = codec.encode(r.frames[None])[0]  # [C, F, h, w]
        out = _readout(latents, r, self.config.spatial_stride, self.config.visible_fraction, ts, rec)
        out.render = r if render else None
        return out

    def read_views(self, cameras: Cameras) -> MemoryReadout:
        """Rasterize ``V`` views and encode each as a single image: latents ``[C, V, h, w]``."""
        cameras = _as_cameras(cameras)
        codec = self._codec()
        with self.timings.record("read") as rec:
            with self.timings.stage("rasterize"):
                r = self.render(cameras)  # frames [3, V, H, W]
            with self.timings.stage("encode"):
                latents = codec.encode(r.frames.permute(1, 0, 2, 3)[:, :, None])  # [V, 3, 1, H, W] -> [V, C, 1, h, w]
                latents = latents[:, :, 0].permute(1, 0, 2, 3)  # [C, V, h, w]
        return _readout(latents, r, self.config.spatial_stride, self.config.visible_fraction, 1, rec)

    def to_ply(self, path: str | Path, colors: Tensor | None = None) -> Path:
        """Binary PLY: x y z (float32) and the stored colours (or ``colors``) as red green blue (uint8)."""
        self._require_grid()
        return write_ply(path, self.points, self.colors if colors is None else colors)
