"""The two 3D memories: latent tokens in 3D (Mirage) and the pixel RGB point cloud (baseline).

Both are thin state (points plus per-point values) around the pure functions of
``mirage.geometry``, with the same interface:

* ``initialize(...)`` from the first frame, its depth and its camera;
* ``read(cameras)`` for a chunk's ``T = 4N + 1`` pixel-frame cameras -> ``MemoryReadout`` with
  latents ``[C, F, h, w]`` and a visibility mask ``[F, h, w]`` (``F = N + 1``);
* ``update(values, depths, cameras, exclude=None)`` with the latent-aligned frames of a chunk.

``LatentSpatialMemory.read`` is one projection at latent resolution. ``RGBPointCloudMemory.read``
rasterizes every pixel frame at full resolution and encodes the renders with the codec, as
GEN3C / Voyager / ViewCrafter-style systems do. Both record per-stage timings in ``timings``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .cameras import Camera, Cameras
from .geometry import (
    downsample_depth,
    downsample_mask_any,
    splat_zbuffer,
    unproject_depth,
    valid_depth,
)
from .timing import StageTimer

__all__ = ["MemoryReadout", "LatentSpatialMemory", "RGBPointCloudMemory", "voxel_keys", "near_voxel_keys", "write_ply"]


@dataclass
class MemoryReadout:
    """What a memory returns for a chunk of ``T`` pixel frames (``F = (T - 1) / 4 + 1``)."""

    latents: Tensor  # [C, F, h, w] normalized latents; zeros where hidden
    mask: Tensor  # [F, h, w] bool, True where the memory saw the cell
    depth: Tensor | None = None  # [F, h, w] readout depth in metres, NaN where hidden
    renders: Tensor | None = None  # RGB memory only: [3, T, H, W] rasterized frames in [-1, 1]
    pixel_mask: Tensor | None = None  # RGB memory only: [T, H, W] bool
    pixel_depth: Tensor | None = None  # RGB memory only: [T, H, W] rendered depth in metres, NaN where hidden
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds for this read

    @property
    def hole_fraction(self) -> float:
        return 1.0 - float(self.mask.float().mean())


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


def _check_cameras(cameras: Cameras | Camera, name: str = "cameras") -> Cameras:
    if isinstance(cameras, Camera):
        return cameras.batch()
    if not isinstance(cameras, Cameras):
        raise TypeError(f"{name} must be Camera or Cameras, got {type(cameras).__name__}")
    return cameras


def _chunk_latent_cameras(cameras: Cameras, temporal_stride: int) -> Cameras:
    """The cameras of the latent-aligned pixel frames 0, 4, 8, ... of a 4N+1-frame chunk."""
    T = len(cameras)
    if T < 1 or (T - 1) % temporal_stride:
        raise ValueError(f"a chunk needs {temporal_stride}N+1 pixel-frame cameras, got {T}")
    return cameras[::temporal_stride]


class _PointMemory:
    """Shared state handling: points, dedup, exclusion, size history. Subclasses own the values."""

    def __init__(self, *, surface_tolerance: float, voxel_size: float | None, max_depth: float | None, device) -> None:
        if surface_tolerance < 0:
            raise ValueError(f"surface_tolerance must be >= 0, got {surface_tolerance}")
        if voxel_size is not None and not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 or None, got {voxel_size}")
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"max_depth must be > 0 or None, got {max_depth}")
        self.surface_tolerance = float(surface_tolerance)
        self.voxel_size = voxel_size
        self.max_depth = max_depth
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.points = torch.zeros(0, 3, device=self.device)  # [N, 3] world
        self.size_history: list[dict] = []
        self.timings = StageTimer(self.device)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def _keep_mask(self, depth: Tensor, exclude: Tensor | None) -> Tensor:  # [F, h, w] -> [F, h, w] bool
        keep = valid_depth(depth)
        if self.max_depth is not None:
            keep &= depth <= self.max_depth
        if exclude is not None:
            keep &= ~exclude
        return keep

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

    def _record_size(self, step: str, added: int) -> None:
        self.size_history.append({"step": step, "added": added, "num_points": self.num_points, "nbytes": self.nbytes})

    @property
    def nbytes(self) -> int:  # pragma: no cover - subclasses
        raise NotImplementedError


class LatentSpatialMemory(_PointMemory):
    """Latent tokens lifted to 3D: one point per latent cell with valid depth, feature = its token.

    Reading for a camera is one hard z-buffer projection on the latent grid; reading the source
    camera back returns the source tokens exactly on every valid cell.
    """

    def __init__(
        self,
        *,
        spatial_stride: int = 16,  # pixels per latent cell (Wan2.2 VAE: 16)
        temporal_stride: int = 4,  # pixel frames per latent frame (Wan2.2 VAE: 4)
        surface_tolerance: float = 0.05,  # relative depth band in which the oldest point wins
        voxel_size: float | None = None,  # deduplicate new points into occupied voxels (metres)
        max_depth: float | None = None,  # far/sky cutoff in metres for updates
        device=None,
    ) -> None:
        super().__init__(surface_tolerance=surface_tolerance, voxel_size=voxel_size, max_depth=max_depth, device=device)
        self.spatial_stride = int(spatial_stride)
        self.temporal_stride = int(temporal_stride)
        self.features: Tensor | None = None  # [N, C] in the latent dtype
        self.grid: tuple[int, int] | None = None  # latent (h, w)
        self.last_added: Tensor | None = None  # [F, h, w] bool: the cells the last update appended, in point order

    # ------------------------------------------------------------------ state
    @property
    def nbytes(self) -> int:
        """Bytes of the cache: xyz (float32) plus one latent token per point."""
        feats = 0 if self.features is None else self.features.numel() * self.features.element_size()
        return self.points.numel() * self.points.element_size() + feats

    def initialize(self, latent: Tensor, depth: Tensor, camera: Camera | Cameras, exclude: Tensor | None = None):
        """latent: ``[C, h, w]`` or ``[C, 1, h, w]``; depth: ``[H, W]`` (or ``[h, w]``); camera at pixel size."""
        if latent.dim() == 3:
            latent = latent.unsqueeze(1)  # [C, h, w] -> [C, 1, h, w]
        if latent.dim() != 4 or latent.shape[1] != 1:
            raise ValueError(f"latent must be [C, h, w] or [C, 1, h, w], got {tuple(latent.shape)}")
        if depth.dim() != 2:
            raise ValueError(f"depth must be [H, W], got {tuple(depth.shape)}")
        if not valid_depth(depth).any():
            raise ValueError("depth has no valid (finite, positive) value; cannot initialize the memory")
        self.points = torch.zeros(0, 3, device=self.device)
        self.features = None
        self.grid = (latent.shape[-2], latent.shape[-1])
        self.size_history = []
        self.update(latent, depth[None], _check_cameras(camera, "camera"), None if exclude is None else exclude[None], _step="initialize")
        return self

    def _latent_cameras(self, cameras: Cameras) -> Cameras:
        h, w = self._require_grid()
        s = self.spatial_stride
        if (cameras.width, cameras.height) != (w * s, h * s):
            raise ValueError(
                f"cameras are {cameras.width}x{cameras.height} but the latent grid {w}x{h} at stride {s} "
                f"needs {w * s}x{h * s}"
            )
        return cameras.rescaled(w, h)

    def _require_grid(self) -> tuple[int, int]:
        if self.grid is None:
            raise RuntimeError("the memory is empty: call initialize() first")
        return self.grid

    def update(
        self,
        latents: Tensor,  # [C, F, h, w]
        depths: Tensor,  # [F, H, W] pixel-resolution metres (or [F, h, w] already on the latent grid)
        cameras: Cameras,  # F cameras of those frames, at pixel size
        exclude: Tensor | None = None,  # [F, H, W] or [F, h, w] bool: cells never to store (sky, dynamic)
        *,
        _step: str = "update",
    ) -> int:
        """Append the cells with valid depth that are not far/sky and not excluded. Returns the count added."""
        cameras = _check_cameras(cameras)
        h, w = self._require_grid()
        if latents.dim() != 4 or latents.shape[-2:] != (h, w):
            raise ValueError(f"latents must be [C, F, {h}, {w}], got {tuple(latents.shape)}")
        C, Fr = latents.shape[:2]
        if self.features is not None and C != self.features.shape[1]:
            raise ValueError(f"latents have {C} channels, the memory holds {self.features.shape[1]}")
        if len(cameras) != Fr:
            raise ValueError(f"{Fr} latent frames but {len(cameras)} cameras")
        if depths.dim() != 3 or depths.shape[0] != Fr:
            raise ValueError(f"depths must be [F={Fr}, H, W], got {tuple(depths.shape)}")
        with self.timings.record(_step):
            with self.timings.stage("update"):
                cams = self._latent_cameras(cameras).to(self.device)
                d = depths.to(self.device)
                if d.shape[-2:] != (h, w):
                    d = downsample_depth(d, self._factor(d.shape[-2:], "depths"))  # [F, h, w]
                ex = None
                if exclude is not None:
                    if exclude.shape[0] != Fr or exclude.dim() != 3:
                        raise ValueError(f"exclude must be [F={Fr}, H, W] bool, got {tuple(exclude.shape)}")
                    ex = exclude.to(self.device).bool()
                    if ex.shape[-2:] != (h, w):
                        ex = downsample_mask_any(ex, self._factor(ex.shape[-2:], "exclude"))  # [F, h, w]
                keep = self._keep_mask(d, ex)  # [F, h, w]
                pts = unproject_depth(torch.where(keep, d, 1.0), cams.K, cams.world_from_cam)  # [F, h, w, 3]
                feats = latents.to(self.device).permute(1, 2, 3, 0)  # [C, F, h, w] -> [F, h, w, C]
                new_pts, new_feats = pts[keep], feats[keep]  # [M, 3], [M, C]
                sel = self._dedup(new_pts)
                new_pts, new_feats = new_pts[sel], new_feats[sel]
                keep[keep.clone()] = sel  # [F, h, w]: appended cells, row-major like the points
                self.last_added = keep
                self.points = torch.cat([self.points, new_pts])
                self.features = new_feats.clone() if self.features is None else torch.cat([self.features, new_feats.to(self.features.dtype)])
        self._record_size(_step, int(new_pts.shape[0]))
        return int(new_pts.shape[0])

    def _factor(self, size, name: str) -> int:
        h, w = self._require_grid()
        H, W = size
        if H % h or W % w or H // h != W // w:
            raise ValueError(f"{name} size {H}x{W} is not a whole multiple of the latent grid {h}x{w}")
        return H // h

    # ------------------------------------------------------------------ read
    def read(self, cameras: Cameras) -> MemoryReadout:
        """Read a chunk: ``T = 4N + 1`` pixel-frame cameras -> ``F = N + 1`` latent frames (frame ``4k``)."""
        return self.read_views(_chunk_latent_cameras(_check_cameras(cameras), self.temporal_stride))

    def read_views(self, cameras: Cameras) -> MemoryReadout:
        """One latent frame per camera: latents ``[C, V, h, w]``, mask ``[V, h, w]``."""
        cameras = _check_cameras(cameras)
        h, w = self._require_grid()
        with self.timings.record("read") as rec:
            with self.timings.stage("project"):
                cams = self._latent_cameras(cameras)
                out = splat_zbuffer(  # cameras stay where they are: one [V, 3, 4] projection is moved
                    self.points, self.features, cams.K, cams.cam_from_world, h, w, surface_tolerance=self.surface_tolerance
                )
                latents = out.features.permute(1, 0, 2, 3)  # [V, C, h, w] -> [C, V, h, w]
        return MemoryReadout(latents=latents, mask=out.mask, depth=out.depth, timings=dict(rec))

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the cache (points, features, settings, size history) as safetensors."""
        h, w = self._require_grid()
        meta = {
            "format": "mirage-latent-memory",
            "version": "1",
            "config": json.dumps(
                {"spatial_stride": self.spatial_stride, "temporal_stride": self.temporal_stride,
                 "surface_tolerance": self.surface_tolerance, "voxel_size": self.voxel_size,
                 "max_depth": self.max_depth, "grid": [h, w]}
            ),
            "size_history": json.dumps(self.size_history),
        }
        path = Path(path)
        save_file({"points": self.points.contiguous().cpu(), "features": self.features.contiguous().cpu()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, device=None) -> "LatentSpatialMemory":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no memory file at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "mirage-latent-memory":
            raise ValueError(f"{path} is not a mirage latent memory (format={meta.get('format')!r})")
        cfg = json.loads(meta["config"])
        grid = cfg.pop("grid")
        mem = cls(**cfg, device=device)
        tensors = load_file(str(path), device=str(mem.device))
        mem.points, mem.features, mem.grid = tensors["points"], tensors["features"], (int(grid[0]), int(grid[1]))
        mem.size_history = json.loads(meta.get("size_history", "[]"))
        return mem

    def to_ply(self, path: str | Path, colors: Tensor | None = None) -> Path:
        """Binary PLY: x y z (float32), red green blue (uint8, PCA of the tokens unless given), and
        every latent channel as ``latent_i`` (float32)."""
        self._require_grid()
        if colors is None:
            from .plotting import pca_colors

            colors = torch.as_tensor(pca_colors(self.features.float().cpu()))
        return write_ply(path, self.points, colors, self.features)


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


class RGBPointCloudMemory(_PointMemory):
    """The pixel-space baseline: one RGB point per pixel with valid depth.

    ``read`` rasterizes every pixel frame of the chunk at full resolution (hard z-buffer, the same
    rule as the latent memory) and encodes the renders with ``codec`` to get the conditioning
    latent, exactly the work GEN3C-style systems do per chunk.
    """

    def __init__(
        self,
        codec,  # a mirage.codecs.VideoCodec: encode [B,3,T,H,W] -> [B,C,F,h,w]
        *,
        surface_tolerance: float = 0.05,
        voxel_size: float | None = None,
        max_depth: float | None = None,
        hole_value: float = 0.0,  # colour of empty pixels in the renders, in [-1, 1]
        visible_fraction: float = 0.5,  # a latent cell counts as seen when this share of its pixels is
        device=None,
    ) -> None:
        super().__init__(surface_tolerance=surface_tolerance, voxel_size=voxel_size, max_depth=max_depth, device=device)
        self.codec = codec
        self.colors = torch.zeros(0, 3, dtype=torch.uint8, device=self.device)  # [N, 3]
        self.hole_value = float(hole_value)
        self.visible_fraction = float(visible_fraction)
        self.image_size: tuple[int, int] | None = None  # (H, W)

    @property
    def nbytes(self) -> int:
        """Bytes of the cache: xyz (float32) plus RGB (uint8) per point."""
        return self.points.numel() * self.points.element_size() + self.colors.numel() * self.colors.element_size()

    def initialize(self, image: Tensor, depth: Tensor, camera: Camera | Cameras, exclude: Tensor | None = None):
        """image ``[3, H, W]`` in [-1, 1]; depth ``[H, W]`` metres; camera at ``W x H``."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
        if depth.shape != image.shape[1:]:
            raise ValueError(f"depth {tuple(depth.shape)} does not match image {tuple(image.shape[1:])}")
        if not valid_depth(depth).any():
            raise ValueError("depth has no valid (finite, positive) value; cannot initialize the memory")
        self.points = torch.zeros(0, 3, device=self.device)
        self.colors = torch.zeros(0, 3, dtype=torch.uint8, device=self.device)
        self.image_size = tuple(image.shape[1:])
        self.size_history = []
        self.update(image[:, None], depth[None], _check_cameras(camera, "camera"), None if exclude is None else exclude[None], _step="initialize")
        return self

    def update(
        self,
        frames: Tensor,  # [3, F, H, W] in [-1, 1]
        depths: Tensor,  # [F, H, W] metres
        cameras: Cameras,  # F cameras at W x H
        exclude: Tensor | None = None,  # [F, H, W] bool
        *,
        _step: str = "update",
    ) -> int:
        cameras = _check_cameras(cameras)
        if self.image_size is None:
            raise RuntimeError("the memory is empty: call initialize() first")
        H, W = self.image_size
        if frames.dim() != 4 or frames.shape[0] != 3 or frames.shape[-2:] != (H, W):
            raise ValueError(f"frames must be [3, F, {H}, {W}], got {tuple(frames.shape)}")
        Fr = frames.shape[1]
        if depths.shape != (Fr, H, W):
            raise ValueError(f"depths must be [{Fr}, {H}, {W}], got {tuple(depths.shape)}")
        if len(cameras) != Fr or (cameras.width, cameras.height) != (W, H):
            raise ValueError(f"need {Fr} cameras of {W}x{H}, got {len(cameras)} of {cameras.width}x{cameras.height}")
        if exclude is not None and exclude.shape != (Fr, H, W):
            raise ValueError(f"exclude must be [{Fr}, {H}, {W}], got {tuple(exclude.shape)}")
        with self.timings.record(_step):
            with self.timings.stage("update"):
                d = depths.to(self.device).float()
                keep = self._keep_mask(d, None if exclude is None else exclude.to(self.device).bool())  # [F, H, W]
                cams = cameras.to(self.device)
                pts = unproject_depth(torch.where(keep, d, 1.0), cams.K, cams.world_from_cam)  # [F, H, W, 3]
                rgb = ((frames.to(self.device).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                rgb = rgb.permute(1, 2, 3, 0)  # [3, F, H, W] -> [F, H, W, 3]
                new_pts, new_rgb = pts[keep], rgb[keep]  # [M, 3], [M, 3]
                sel = self._dedup(new_pts)
                new_pts, new_rgb = new_pts[sel], new_rgb[sel]
                self.points = torch.cat([self.points, new_pts])
                self.colors = torch.cat([self.colors, new_rgb])
        self._record_size(_step, int(new_pts.shape[0]))
        return int(new_pts.shape[0])

    def render(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """Rasterize ``V`` views at full resolution -> (rgb ``[3, V, H, W]`` in [-1, 1], mask ``[V, H, W]``)."""
        cameras = _check_cameras(cameras)
        if self.image_size is None:
            raise RuntimeError("the memory is empty: call initialize() first")
        H, W = self.image_size
        if (cameras.width, cameras.height) != (W, H):
            raise ValueError(f"cameras are {cameras.width}x{cameras.height}, the memory renders {W}x{H}")
        out = splat_zbuffer(self.points, None, cameras.K, cameras.cam_from_world, H, W, surface_tolerance=self.surface_tolerance)
        rgb = self.colors[out.index.clamp(min=0).reshape(-1)].view(len(cameras), H, W, 3) if self.num_points else torch.zeros(len(cameras), H, W, 3, dtype=torch.uint8, device=self.device)
        self._last_depth = out.depth  # [V, H, W], kept for read() to report the readout depth
        img = rgb.float() / 127.5 - 1.0  # [V, H, W, 3]
        img = torch.where(out.mask.unsqueeze(-1), img, self.hole_value)
        return img.permute(3, 0, 1, 2).contiguous(), out.mask  # [V, H, W, 3] -> [3, V, H, W]

    def read(self, cameras: Cameras) -> MemoryReadout:
        """Rasterize all ``T = 4N + 1`` pixel frames, encode them: latents ``[C, N+1, h, w]``."""
        cameras = _check_cameras(cameras)
        _chunk_latent_cameras(cameras, self.codec.temporal_stride)  # validates T
        with self.timings.record("read") as rec:
            with self.timings.stage("rasterize"):
                renders, pixel_mask = self.render(cameras)  # [3, T, H, W], [T, H, W]
            with self.timings.stage("encode"):
                latents = self.codec.encode(renders[None])[0]  # [C, F, h, w]
            s, ts = self.codec.spatial_stride, self.codec.temporal_stride
            seen = F.avg_pool2d(pixel_mask[::ts].float()[:, None], s)[:, 0]  # [F, h, w] share of seen pixels
            mask = seen >= self.visible_fraction
            depth = downsample_depth(self._last_depth[::ts], s)  # [F, h, w] rendered depth on the latent grid
        return MemoryReadout(
            latents=latents, mask=mask.to(latents.device), depth=torch.where(mask, depth, torch.nan).to(latents.device),
            renders=renders, pixel_mask=pixel_mask, pixel_depth=self._last_depth, timings=dict(rec),
        )
