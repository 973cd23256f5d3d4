"""The two 3D memories behind one protocol: latent tokens in 3D (Mirage) and the pixel RGB point
cloud (the baseline of GEN3C / Voyager / ViewCrafter-style systems).

Both are thin state (points, the frame each came from, per-point values) around the pure functions
of ``mirage.geometry``, and both implement ``SpatialMemory`` in full, so that callers never ask
which one they hold:

* ``initialize(observation)`` / ``update(observation)`` store an ``Observation``: the frames' cameras
  and depths plus *both* their latents and their pixels; each memory takes what it stores (tokens on
  the latent grid, colours at pixel resolution) and records the cells it appended (``last_added``);
* ``read(cameras)`` for a chunk's ``T = 4N + 1`` pixel-frame cameras -> ``MemoryReadout``: latents
  ``[C, F, h, w]``, visibility ``[F, h, w]``, depth ``[F, h, w]`` (``F = N + 1``). The latent memory
  reads with one projection on the latent grid; the RGB memory rasterizes every pixel frame at full
  resolution and encodes the renders with its codec, exactly the work GEN3C-style systems do;
* ``render(cameras)`` -> ``MemoryRender``: what the memory shows at each camera in pixels, with its
  mask and depth (the latent memory decodes each view's tokens as a single image with its codec);
* ``save`` / ``load`` (safetensors), ``to_ply``, ``nbytes``, ``num_points``, ``size_history``,
  ``timings`` (per-stage seconds of every call).

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

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .cameras import Camera, Cameras
from .frames import latent_aligned
from .geometry import (
    cell_footprints,
    downsample_depth,
    downsample_mask_any,
    splat_footprints,
    surface_band_slack,
    unproject_depth,
    valid_depth,
)
from .images import from_uint8, to_uint8
from .timing import StageTimer

__all__ = [
    "Observation",
    "MemoryReadout",
    "MemoryRender",
    "SpatialMemory",
    "LatentSpatialMemory",
    "RGBPointCloudMemory",
    "UpdatePolicy",
    "load_memory",
    "voxel_keys",
    "near_voxel_keys",
    "write_ply",
]


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


@dataclass
class MemoryReadout:
    """What a memory returns for a chunk of ``T`` pixel frames (``F = (T - 1) / 4 + 1``)."""

    latents: Tensor  # [C, F, h, w] normalized latents; zeros where hidden
    mask: Tensor  # [F, h, w] bool, True where the memory saw the cell
    depth: Tensor  # [F, h, w] readout depth in metres, NaN where hidden
    renders: Tensor | None = None  # pixel memories: [3, T, H, W] rasterized frames in [-1, 1]
    pixel_mask: Tensor | None = None  # pixel memories: [T, H, W] bool
    pixel_depth: Tensor | None = None  # pixel memories: [T, H, W] rendered depth in metres, NaN where hidden
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds for this read

    @property
    def hole_fraction(self) -> float:
        return 1.0 - float(self.mask.float().mean())

    def frame_depths(self, temporal_stride: int, first: int = 1) -> Tensor:  # -> [F-first, H, W] or [F-first, h, w]
        """Depth of the latent-aligned frames ``first .. F-1`` at the finest resolution the memory
        read: the rendered pixel depth when it rasterized pixels, else the latent-grid depth."""
        if self.pixel_depth is not None:
            return self.pixel_depth[first * temporal_stride :: temporal_stride]
        return self.depth[first:]

    def cpu(self) -> "MemoryReadout":
        move = lambda x: None if x is None else x.cpu()  # noqa: E731
        return replace(self, latents=self.latents.cpu(), mask=self.mask.cpu(), depth=self.depth.cpu(),
                       renders=move(self.renders), pixel_mask=move(self.pixel_mask), pixel_depth=move(self.pixel_depth))  # fmt: skip


@dataclass
class MemoryRender:
    """What a memory shows at ``V`` cameras, in pixels."""

    frames: Tensor  # [3, V, H, W] in [-1, 1]; hole_value where empty
    mask: Tensor  # [V, H, W] bool, True where the memory saw the pixel
    depth: Tensor  # [V, H, W] metres, NaN where empty


@runtime_checkable
class SpatialMemory(Protocol):
    """What every memory offers; callers use nothing else (``tests/test_memory.py`` checks both)."""

    kind: ClassVar[str]  # "latent" or "rgb"
    points: Tensor  # [N, 3] world positions of the stored points
    size_history: list[dict]  # one entry per initialize/update: step, added, num_points, nbytes
    timings: StageTimer  # per-stage seconds of every call
    last_added: Tensor | None  # [F, g_h, g_w] bool: the grid cells the last update appended, in point order

    @property
    def num_points(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def initialize(self, observation: Observation) -> "SpatialMemory": ...

    def update(self, observation: Observation) -> int: ...

    def read(self, cameras: Cameras) -> MemoryReadout: ...

    def render(self, cameras: Cameras) -> MemoryRender: ...

    def point_ids(self, cameras: Cameras) -> Tensor: ...

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


UpdatePolicy = Literal["fuse", "append"]


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
    subclasses say which grid they store at and which values they keep."""

    kind: ClassVar[str]
    _FORMAT = "mirage-memory"

    def __init__(
        self, *, codec, surface_tolerance: float, voxel_size: float | None, max_depth: float | None,
        update_policy: UpdatePolicy, max_footprint_cells: int, compact_footprints: bool, compile_reads: bool, device,
    ) -> None:  # fmt: skip
        if surface_tolerance < 0:
            raise ValueError(f"surface_tolerance must be >= 0, got {surface_tolerance}")
        if update_policy not in ("fuse", "append"):
            raise ValueError(f"update_policy must be 'fuse' or 'append', got {update_policy!r}")
        if not (isinstance(max_footprint_cells, int) and max_footprint_cells >= 1):
            raise ValueError(f"max_footprint_cells must be an int >= 1, got {max_footprint_cells!r}")
        if voxel_size is not None and not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 or None, got {voxel_size}")
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"max_depth must be > 0 or None, got {max_depth}")
        self.codec = codec  # a mirage.codecs.VideoCodec (or None where the memory never needs one)
        self.surface_tolerance = float(surface_tolerance)
        self.voxel_size = voxel_size
        self.max_depth = max_depth
        self.update_policy: UpdatePolicy = update_policy
        self.max_footprint_cells = max_footprint_cells
        self.compact_footprints = bool(compact_footprints)  # keep only covered candidates (one host sync), same result
        self.compile_reads = bool(compile_reads)  # reads through torch.compile (fused kernels), same result
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.grid: tuple[int, int] | None = None  # (rows, cols) of the storage grid, set by initialize
        self.points = torch.zeros(0, 3, device=self.device)  # [N, 3] world
        self.frame_ids = torch.zeros(0, dtype=torch.int32, device=self.device)  # [N] observation index, oldest first
        self.axes = torch.zeros(0, 2, 3, dtype=torch.float16, device=self.device)  # [N, 2, 3] footprint half-axes (world)
        self.values: Tensor | None = None  # [N, D] tokens (latent) or uint8 colours (rgb)
        self.frames_stored = 0  # observations (frames) stored so far
        self.last_added: Tensor | None = None  # [F, rows, cols] bool
        self.size_history: list[dict] = []
        self.timings = StageTimer(self.device)

    # ------------------------------------------------------------------ what subclasses define
    def _grid_of(self, cameras: Cameras) -> tuple[int, int]:  # (rows, cols) of the storage grid for these cameras
        raise NotImplementedError

    def _values_of(self, obs: Observation) -> Tensor:  # -> [F, rows, cols, D] values of each grid cell
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

    def _require_grid(self) -> tuple[int, int]:
        if self.grid is None:
            raise RuntimeError("the memory is empty: call initialize() first")
        return self.grid

    def _on_grid(self, cameras: Cameras) -> Cameras:
        """Cameras rescaled to the storage grid (checked against the size the memory was made for)."""
        rows, cols = self._require_grid()
        if self._grid_of(cameras) != (rows, cols):
            want = self._pixel_size()
            raise ValueError(f"cameras are {cameras.width}x{cameras.height} but this memory was made for {want[1]}x{want[0]} images")
        return cameras if (cameras.height, cameras.width) == (rows, cols) else cameras.rescaled(cols, rows)

    def _pixel_size(self) -> tuple[int, int]:  # (H, W) of the images this memory was made for
        rows, cols = self._require_grid()
        s = self._stride()
        return rows * s, cols * s

    def _stride(self) -> int:  # pixels per grid cell
        return 1

    # ------------------------------------------------------------------ initialize / update
    def initialize(self, observation: Observation):
        """Start the memory from one observation (normally the input image, ``F = 1``)."""
        if not valid_depth(observation.depths).any():
            raise ValueError("depth has no valid (finite, positive) value; cannot initialize the memory")
        cams = _as_cameras(observation.cameras)
        self.grid = self._grid_of(cams)
        self.points = torch.zeros(0, 3, device=self.device)
        self.frame_ids = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.axes = torch.zeros(0, 2, 3, dtype=torch.float16, device=self.device)
        self.values, self.frames_stored, self.size_history = None, 0, []
        self._store(observation, "initialize")
        return self

    def update(self, observation: Observation) -> int:
        """Store the cells with valid depth that are not far (``max_depth``), not excluded, not
        already explained by the memory (``update_policy="fuse"``) and not already stored
        (``voxel_size``). Returns the number of points added."""
        self._require_grid()
        return self._store(observation, "update")

    def _store(self, obs: Observation, step: str) -> int:
        cameras = _as_cameras(obs.cameras)
        Fr = len(cameras)
        rows, cols = self._require_grid()
        added_cells = []
        with self.timings.record(step):
            with self.timings.stage("update"):
                cams = self._on_grid(cameras).to(self.device)
                values = self._values_of(obs).to(self.device)  # [F, rows, cols, D]
                depth = self._depth_on_grid(obs.depths, Fr, "depths").to(self.device)  # [F, rows, cols]
                exclude = None if obs.exclude is None else self._mask_on_grid(obs.exclude, Fr).to(self.device)
                keep = valid_depth(depth)  # [F, rows, cols]
                if self.max_depth is not None:
                    keep &= depth <= self.max_depth
                if exclude is not None:
                    keep &= ~exclude
                pts = unproject_depth(torch.where(keep, depth, 1.0), cams.K, cams.world_from_cam)  # [F, rows, cols, 3]
                axes = cell_footprints(depth, cams.K, cams.world_from_cam)  # [F, rows, cols, 2, 3]
                fuse = self.update_policy == "fuse" and self.num_points > 0
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
                self.last_added = torch.stack(added_cells)  # [F, rows, cols]
                self.frames_stored += Fr
        added = int(self.last_added.sum())
        self.size_history.append({"step": step, "added": added, "num_points": self.num_points, "nbytes": self.nbytes})
        return added

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
                                 surface_tolerance=self.surface_tolerance, max_cells=self.max_footprint_cells,
                                 compact=self.compact_footprints, compiled=self.compile_reads)  # fmt: skip
        zmin = shown.closest  # [1, rows, cols], NaN where nothing covers the cell
        band = self.surface_tolerance * zmin
        if self.surface_tolerance > 0:  # as in the read: grazing surfaces get the local depth step as slack
            band = band + surface_band_slack(torch.where(shown.mask, zmin, torch.inf))
        return (shown.mask & (depth >= zmin - band))[0]

    def _depth_on_grid(self, depths: Tensor, Fr: int, name: str) -> Tensor:  # [F, H, W] or [F, rows, cols] -> [F, rows, cols]
        rows, cols = self._require_grid()
        if depths.dim() != 3 or depths.shape[0] != Fr:
            raise ValueError(f"{name} must be [F={Fr}, H, W], got {tuple(depths.shape)}")
        if tuple(depths.shape[-2:]) == (rows, cols):
            return torch.where(valid_depth(depths), depths.float(), torch.nan)
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
        if self.voxel_size is None or new_points.shape[0] == 0:
            return keep
        new_keys = voxel_keys(new_points, self.voxel_size)  # [M]
        if self.num_points:
            near = near_voxel_keys(new_points, self.voxel_size)  # [M, 8]
            keep &= ~torch.isin(near, voxel_keys(self.points, self.voxel_size)).any(dim=1)
        keep &= _first_of_each_key(torch.where(keep, new_keys, -1 - torch.arange(len(keep), device=keep.device)))
        return keep

    # ------------------------------------------------------------------ splat
    def _splat(self, cameras: Cameras, features: Tensor | None):
        """Footprint z-buffer of the stored points into ``cameras`` on the storage grid (band rule by frame age)."""
        rows, cols = self._require_grid()
        cams = self._on_grid(cameras)
        return splat_footprints(self.points, self.axes, self.frame_ids, features, cams.K, cams.cam_from_world, rows, cols,
                                surface_tolerance=self.surface_tolerance, max_cells=self.max_footprint_cells,
                                compact=self.compact_footprints, compiled=self.compile_reads)  # fmt: skip

    def point_ids(self, cameras: Cameras) -> Tensor:  # -> [V, rows, cols] long, -1 where empty
        """Which stored point each cell of the memory's grid shows from each camera (the read's z-buffer)."""
        return self._splat(_as_cameras(cameras), None).index

    # ------------------------------------------------------------------ files
    def _config(self) -> dict:
        return {"surface_tolerance": self.surface_tolerance, "voxel_size": self.voxel_size, "max_depth": self.max_depth,
                "update_policy": self.update_policy, "max_footprint_cells": self.max_footprint_cells,
                "compact_footprints": self.compact_footprints}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write the cache (points, frame ids, values, settings, size history) as safetensors."""
        rows, cols = self._require_grid()
        meta = {
            "format": self._FORMAT, "kind": self.kind, "version": "3",
            "config": json.dumps({**self._config(), "grid": [rows, cols], "frames_stored": self.frames_stored}),
            "size_history": json.dumps(self.size_history),
        }  # fmt: skip
        tensors = {"points": self.points, "frame_ids": self.frame_ids, "axes": self.axes, "values": self.values}
        path = Path(path)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, codec=None, device=None):
        """Read a cache written by ``save`` (``ValueError`` for another memory kind or another file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no memory file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for non-safetensors files
            raise ValueError(f"{path.name} is not a safetensors file: {err}") from None
        if meta.get("format") != cls._FORMAT or meta.get("kind") != cls.kind:
            raise ValueError(f"{path.name} is not a mirage {cls.kind} memory (format={meta.get('format')!r}, kind={meta.get('kind')!r})")
        cfg = json.loads(meta["config"])
        grid, frames_stored = cfg.pop("grid"), cfg.pop("frames_stored")
        mem = cls(codec=codec, **cfg, device=device)
        tensors = load_file(str(path), device=str(mem.device))
        mem.points, mem.frame_ids, mem.axes, mem.values = tensors["points"], tensors["frame_ids"], tensors["axes"], tensors["values"]
        mem.grid, mem.frames_stored = (int(grid[0]), int(grid[1])), int(frames_stored)
        mem.size_history = json.loads(meta.get("size_history", "[]"))
        return mem


def load_memory(path: str | Path, codec=None, device=None) -> "LatentSpatialMemory | RGBPointCloudMemory":
    """Either memory from a file written by ``save``."""
    for cls in (LatentSpatialMemory, RGBPointCloudMemory):
        try:
            return cls.load(path, codec=codec, device=device)
        except ValueError as err:
            if "is not a mirage" not in str(err):
                raise
    raise ValueError(f"{Path(path).name} is not a mirage memory file")


def write_ply(path: str | Path, points: Tensor, colors: Tensor, features: Tensor | None = None) -> Path:
    """points ``[N, 3]``, colors ``[N, 3]`` uint8, optional features ``[N, C]`` -> binary little-endian PLY."""
    import numpy as np

    pts = points.detach().float().cpu().numpy()
    col = torch.as_tensor(colors).detach().cpu().to(torch.uint8).numpy()
    if pts.shape[0] != col.shape[0]:
        raise ValueError(f"{pts.shape[0]} points but {col.shape[0]} colours")
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    feats = None
    if features is not None:
        feats = features.detach().float().cpu().numpy()
        fields += [(f"latent_{i}", "f4") for i in range(feats.shape[1])]
    rec = np.empty(pts.shape[0], dtype=np.dtype(fields).newbyteorder("<"))
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    if feats is not None:
        for i in range(feats.shape[1]):
            rec[f"latent_{i}"] = feats[:, i]
    ply_types = {"f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {pts.shape[0]}"]
    header += [f"property {ply_types[t]} {n}" for n, t in fields] + ["end_header"]
    path = Path(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())
    return path


# ----------------------------------------------------------------------------------- latent memory
class LatentSpatialMemory(_PointMemory):
    """Latent tokens lifted to 3D: one point per latent cell with valid depth, feature = its token.

    Reading for a camera is one hard z-buffer projection on the latent grid; reading the source
    camera back returns the source tokens exactly on every valid cell. ``codec`` is needed only by
    ``render`` (to decode each view's tokens into pixels).
    """

    kind = "latent"

    def __init__(
        self,
        *,
        codec=None,  # a mirage.codecs.VideoCodec, for render()
        spatial_stride: int = 16,  # pixels per latent cell (Wan2.2 VAE: 16)
        temporal_stride: int = 4,  # pixel frames per latent frame (Wan2.2 VAE: 4)
        surface_tolerance: float = 0.05,  # relative depth band of one surface (in it the oldest frame wins)
        voxel_size: float | None = None,  # deduplicate new points into occupied voxels (metres)
        max_depth: float | None = None,  # far/sky cutoff in metres for updates
        update_policy: UpdatePolicy = "fuse",  # "fuse": store what the memory does not explain; "append": all
        max_footprint_cells: int = 4,  # candidate cells per axis of a projected footprint
        compact_footprints: bool = False,  # False: no host sync in a read (a latent read is launch-bound on a GPU)
        compile_reads: bool = False,  # True: reads through torch.compile (for a GPU: fused kernels, same result)
        token_dtype: torch.dtype | str | None = torch.bfloat16,  # storage of the tokens (the paper's: bf16); None keeps theirs
        device=None,
    ) -> None:
        super().__init__(codec=codec, surface_tolerance=surface_tolerance, voxel_size=voxel_size, max_depth=max_depth,
                         update_policy=update_policy, max_footprint_cells=max_footprint_cells,
                         compact_footprints=compact_footprints, compile_reads=compile_reads, device=device)  # fmt: skip
        self.token_dtype = getattr(torch, token_dtype) if isinstance(token_dtype, str) else token_dtype
        if codec is not None:
            spatial_stride, temporal_stride = codec.spatial_stride, codec.temporal_stride
        self.spatial_stride = int(spatial_stride)
        self.temporal_stride = int(temporal_stride)

    @property
    def features(self) -> Tensor | None:  # [N, C] tokens in the latent dtype
        return self.values

    def _config(self) -> dict:
        return {**super()._config(), "spatial_stride": self.spatial_stride, "temporal_stride": self.temporal_stride,
                "compile_reads": self.compile_reads,
                "token_dtype": None if self.token_dtype is None else str(self.token_dtype).removeprefix("torch.")}  # fmt: skip

    def _stride(self) -> int:
        return self.spatial_stride

    def _grid_of(self, cameras: Cameras) -> tuple[int, int]:
        s = self.spatial_stride
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
        lat = lat if self.token_dtype is None else lat.to(self.token_dtype)
        return lat.permute(1, 2, 3, 0)  # [C, F, h, w] -> [F, h, w, C]

    def read(self, cameras: Cameras) -> MemoryReadout:
        """Read a chunk: ``T = 4N + 1`` pixel-frame cameras -> ``F = N + 1`` latent frames (frame ``4k``)."""
        return self.read_views(latent_aligned(_as_cameras(cameras), self.temporal_stride))

    def read_views(self, cameras: Cameras) -> MemoryReadout:
        """One latent frame per camera: latents ``[C, V, h, w]``, mask ``[V, h, w]``."""
        cameras = _as_cameras(cameras)
        with self.timings.record("read") as rec:
            with self.timings.stage("project"):
                out = self._splat(cameras, self.values)  # cameras stay where they are: one [V, 3, 4] projection moves
                latents = out.features.permute(1, 0, 2, 3)  # [V, C, h, w] -> [C, V, h, w]
        return MemoryReadout(latents=latents, mask=out.mask, depth=out.depth, timings=dict(rec))

    def render(self, cameras: Cameras) -> MemoryRender:
        """Each camera's readout decoded as a single image with the codec (every view, not only frames 4k)."""
        if self.codec is None:
            raise ValueError("the latent memory needs a codec to render pixels: LatentSpatialMemory(codec=...)")
        out = self.read_views(cameras)
        s = self.spatial_stride
        lat = out.latents.permute(1, 0, 2, 3)[:, :, None]  # [C, V, h, w] -> [V, C, 1, h, w] one image per view
        frames = self.codec.decode(lat)[:, :, 0].float()  # [V, 3, H, W]
        up = lambda x: x.repeat_interleave(s, -2).repeat_interleave(s, -1)  # noqa: E731  [V, h, w] -> [V, H, W]
        return MemoryRender(frames=frames.permute(1, 0, 2, 3), mask=up(out.mask), depth=up(out.depth))  # [3, V, H, W]

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

    ``read`` rasterizes every pixel frame of the chunk at full resolution (hard z-buffer, the same
    rule as the latent memory) and encodes the renders with ``codec`` to get the conditioning
    latent, exactly the work GEN3C-style systems do per chunk.
    """

    kind = "rgb"

    def __init__(
        self,
        codec=None,  # a mirage.codecs.VideoCodec: encode [B,3,T,H,W] -> [B,C,F,h,w] (needed by read())
        *,
        surface_tolerance: float = 0.05,
        voxel_size: float | None = None,
        max_depth: float | None = None,
        update_policy: UpdatePolicy = "fuse",
        max_footprint_cells: int = 4,
        compact_footprints: bool = True,  # True: only the covered candidates of millions of points (the same result)
        hole_value: float = 0.0,  # colour of empty pixels in the renders, in [-1, 1]
        visible_fraction: float = 0.5,  # a latent cell counts as seen when this share of its pixels is
        device=None,
    ) -> None:
        super().__init__(codec=codec, surface_tolerance=surface_tolerance, voxel_size=voxel_size, max_depth=max_depth,
                         update_policy=update_policy, max_footprint_cells=max_footprint_cells,
                         compact_footprints=compact_footprints, compile_reads=False, device=device)  # fmt: skip
        self.hole_value = float(hole_value)
        self.visible_fraction = float(visible_fraction)

    @property
    def colors(self) -> Tensor:  # [N, 3] uint8
        return self.values if self.values is not None else torch.zeros(0, 3, dtype=torch.uint8, device=self.device)

    @property
    def image_size(self) -> tuple[int, int] | None:  # (H, W)
        return self.grid

    def _config(self) -> dict:
        return {**super()._config(), "hole_value": self.hole_value, "visible_fraction": self.visible_fraction}

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
        H, W = self._require_grid()
        out = self._splat(cameras, None)
        rgb = self.colors[out.index.clamp(min=0).reshape(-1)].view(len(cameras), H, W, 3) if self.num_points else \
            torch.zeros(len(cameras), H, W, 3, dtype=torch.uint8, device=self.device)  # fmt: skip
        img = torch.where(out.mask.unsqueeze(-1), from_uint8(rgb), self.hole_value)  # [V, H, W, 3]
        return MemoryRender(frames=img.permute(3, 0, 1, 2).contiguous(), mask=out.mask, depth=out.depth)  # [3, V, H, W]

    def read(self, cameras: Cameras) -> MemoryReadout:
        """Rasterize all ``T = 4N + 1`` pixel frames, encode them: latents ``[C, N+1, h, w]``."""
        cameras = _as_cameras(cameras)
        if self.codec is None:
            raise ValueError("the pixel memory needs a codec to read latents: RGBPointCloudMemory(codec)")
        s, ts = self.codec.spatial_stride, self.codec.temporal_stride
        latent_aligned(cameras, ts)  # validates T
        with self.timings.record("read") as rec:
            with self.timings.stage("rasterize"):
                r = self.render(cameras)  # frames [3, T, H, W], mask [T, H, W], depth [T, H, W]
            with self.timings.stage("encode"):
                latents = self.codec.encode(r.frames[None])[0]  # [C, F, h, w]
            seen = F.avg_pool2d(r.mask[::ts].float()[:, None], s)[:, 0]  # [F, h, w] share of seen pixels
            mask = seen >= self.visible_fraction
            depth = downsample_depth(r.depth[::ts], s)  # [F, h, w] rendered depth on the latent grid
        return MemoryReadout(
            latents=latents, mask=mask.to(latents.device), depth=torch.where(mask, depth, torch.nan).to(latents.device),
            renders=r.frames, pixel_mask=r.mask, pixel_depth=r.depth, timings=dict(rec),
        )

    def to_ply(self, path: str | Path, colors: Tensor | None = None) -> Path:
        """Binary PLY: x y z (float32) and the stored colours (or ``colors``) as red green blue (uint8)."""
        self._require_grid()
        return write_ply(path, self.points, self.colors if colors is None else colors)
