"""A synthetic room rendered by analytic ray casting, with exact depth from any camera.

The scene is a closed box room (floor, ceiling, four walls) with a different procedural texture
on every wall, plus a few spheres and axis-aligned boxes inside. ``SyntheticScene.render`` casts
one ray through every pixel centre ``(u + 1/2, v + 1/2)`` (CONVENTIONS.md) in pure, vectorized
torch, so revisit tests and the app get ground-truth RGB and camera-``z`` depth for any path.

World axes are OpenCV-like: +x right, +y down (the floor is the ``y = room_max[1]`` plane), +z
forward. ``default_camera`` sits at the world origin with the identity pose, looking at the back
wall, so the world frame equals the default (source) camera's frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mirage.cameras import Camera, Cameras

__all__ = ["Sphere", "Box", "SyntheticScene", "default_scene", "default_camera", "WALL_NAMES"]

# Surface ids 0..5 are the room faces (axis a, side s -> id 2a + s); objects follow.
WALL_NAMES = ("left wall", "right wall", "ceiling", "floor", "front wall", "back wall")
_LIGHT_DIR = (0.3, -1.0, -0.5)  # direction *towards* the light (up, slightly left and back)


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]  # world position, metres
    radius: float  # metres
    color: tuple[float, float, float]  # base RGB in [0, 1]; a 3D checker darkens alternate cells


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]  # min corner, metres
    hi: tuple[float, float, float]  # max corner, metres
    color: tuple[float, float, float]  # base RGB in [0, 1]


@dataclass(frozen=True)
class SyntheticScene:
    """Closed room ``[room_min, room_max]`` with objects; cameras must be inside, outside objects."""

    room_min: tuple[float, float, float] = (-2.5, -1.4, -2.0)  # room inner min corner (x, y=ceiling, z=front)
    room_max: tuple[float, float, float] = (2.5, 1.6, 6.0)  # room inner max corner (x, y=floor, z=back)
    spheres: tuple[Sphere, ...] = ()  # spheres inside the room
    boxes: tuple[Box, ...] = ()  # axis-aligned boxes inside the room
    tile: float = 0.3  # texture period in metres (about 16 px at 4 m for a 256-px, 60-degree view)
    shading: bool = True  # view-independent Lambert term from a fixed light direction
    chunk_rays: int = field(default=1 << 19, compare=False)  # rays cast per batch (bounds memory)

    def __post_init__(self) -> None:
        lo, hi = torch.tensor(self.room_min), torch.tensor(self.room_max)
        if not (lo < hi).all():
            raise ValueError(f"room_min {self.room_min} must be below room_max {self.room_max} on every axis")
        for s in self.spheres:
            c = torch.tensor(s.center)
            if s.radius <= 0 or (c - s.radius < lo).any() or (c + s.radius > hi).any():
                raise ValueError(f"sphere {s} must have a positive radius and lie inside the room")
        for b in self.boxes:
            blo, bhi = torch.tensor(b.lo), torch.tensor(b.hi)
            if not (blo < bhi).all() or (blo < lo).any() or (bhi > hi).any():
                raise ValueError(f"box {b} must have lo < hi and lie inside the room")
        if self.tile <= 0:
            raise ValueError(f"tile must be positive, got {self.tile}")

    # ------------------------------------------------------------------ public
    def render(self, cameras: Cameras | Camera) -> tuple[Tensor, Tensor]:
        """RGB ``[V, 3, H, W]`` in ``[-1, 1]`` and depth ``[V, H, W]`` (camera ``z``, metres, finite)."""
        if isinstance(cameras, Camera):
            cameras = cameras.batch()
        V, H, W = len(cameras), cameras.height, cameras.width
        self._check_centers(cameras.centers)
        device = cameras.device
        u = torch.arange(W, device=device, dtype=torch.float32) + 0.5  # [W] pixel centres
        v = torch.arange(H, device=device, dtype=torch.float32) + 0.5  # [H]
        pix = torch.stack([u.expand(H, W), v[:, None].expand(H, W), torch.ones(H, W, device=device)], -1)  # [H, W, 3]
        # Camera-space directions with z = 1 exactly, so the ray parameter t equals camera z.
        dirs_cam = torch.einsum("vij,hwj->vhwi", torch.linalg.inv(cameras.K), pix)  # [V, H, W, 3]
        dirs_cam[..., 2] = 1.0
        world_from_cam = cameras.world_from_cam  # [V, 4, 4]
        dirs = torch.einsum("vij,vhwj->vhwi", world_from_cam[:, :3, :3], dirs_cam)  # [V, H, W, 3]
        origins = world_from_cam[:, None, None, :3, 3].expand(V, H, W, 3)  # [V, H, W, 3]
        dirs, origins = dirs.reshape(-1, 3), origins.reshape(-1, 3)  # [V*H*W, 3] flatten rays

        rgb, depth = [], []
        for start in range(0, dirs.shape[0], self.chunk_rays):
            sl = slice(start, start + self.chunk_rays)
            t, surface, normal = self._cast(origins[sl], dirs[sl])
            rgb.append(self._shade(origins[sl] + t[:, None] * dirs[sl], surface, normal))
            depth.append(t)
        rgb = torch.cat(rgb).reshape(V, H, W, 3).permute(0, 3, 1, 2)  # [V, 3, H, W] channels first
        depth = torch.cat(depth).reshape(V, H, W)  # [V, H, W]
        return (rgb * 2 - 1).contiguous(), depth

    # ------------------------------------------------------------------ geometry
    def _check_centers(self, centers: Tensor) -> None:  # centers: [V, 3]
        lo = torch.tensor(self.room_min, device=centers.device)
        hi = torch.tensor(self.room_max, device=centers.device)
        for i, c in enumerate(centers):
            inside_room = bool(((c > lo) & (c < hi)).all())
            in_sphere = any(
                float((c - torch.tensor(s.center, device=c.device)).norm()) <= s.radius for s in self.spheres
            )
            in_box = any(
                bool(((c >= torch.tensor(b.lo, device=c.device)) & (c <= torch.tensor(b.hi, device=c.device))).all())
                for b in self.boxes
            )
            if not inside_room or in_sphere or in_box:
                raise ValueError(
                    f"camera {i} centre {c.tolist()} must be inside the room {self.room_min}..{self.room_max} "
                    "and outside every object"
                )

    def _cast(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Nearest hit of rays starting inside the room. origins, dirs: ``[N, 3]``.

        Returns t ``[N]`` (hit = origin + t * dir), surface id ``[N]`` long, unit normal ``[N, 3]``
        facing the ray origin.
        """
        lo = torch.tensor(self.room_min, device=dirs.device)
        hi = torch.tensor(self.room_max, device=dirs.device)
        # Room: the ray leaves through the plane it heads towards on each axis; the nearest one wins.
        positive = dirs > 0  # [N, 3]
        plane = torch.where(positive, hi, lo)  # [N, 3]
        t_axis = torch.where(dirs != 0, (plane - origins) / dirs, torch.full_like(dirs, math.inf))  # [N, 3]
        t, axis = t_axis.min(dim=-1)  # [N], [N]
        surface = 2 * axis + positive.gather(1, axis[:, None])[:, 0].long()  # [N] wall id
        normal = torch.zeros_like(dirs)  # [N, 3]
        normal.scatter_(1, axis[:, None], torch.where(positive.gather(1, axis[:, None]), -1.0, 1.0))

        for k, s in enumerate(self.spheres):
            c = torch.tensor(s.center, device=dirs.device)
            oc = origins - c  # [N, 3]
            a = (dirs * dirs).sum(-1)  # [N]
            b = (oc * dirs).sum(-1)  # [N]
            disc = b * b - a * ((oc * oc).sum(-1) - s.radius**2)  # [N]
            t_hit = (-b - disc.clamp(min=0).sqrt()) / a  # [N] entry point (cameras are outside spheres)
            hit = (disc >= 0) & (t_hit > 0) & (t_hit < t)
            t = torch.where(hit, t_hit, t)
            surface = torch.where(hit, 6 + k, surface)
            n = (origins + t_hit[:, None] * dirs - c) / s.radius  # [N, 3]
            normal = torch.where(hit[:, None], n, normal)

        for k, bx in enumerate(self.boxes):
            blo = torch.tensor(bx.lo, device=dirs.device)
            bhi = torch.tensor(bx.hi, device=dirs.device)
            t1, t2 = (blo - origins) / dirs, (bhi - origins) / dirs  # [N, 3] slab entries/exits (+-inf if dir=0)
            t_near, near_axis = torch.minimum(t1, t2).max(dim=-1)  # [N]
            t_far = torch.maximum(t1, t2).min(dim=-1).values  # [N]
            hit = (t_near <= t_far) & (t_near > 0) & (t_near < t)
            t = torch.where(hit, t_near, t)
            surface = torch.where(hit, 6 + len(self.spheres) + k, surface)
            n = torch.zeros_like(dirs)  # [N, 3]
            n.scatter_(1, near_axis[:, None], -torch.sign(dirs.gather(1, near_axis[:, None])))
            normal = torch.where(hit[:, None], n, normal)
        return t, surface, normal

    # ------------------------------------------------------------------ appearance
    def _materials(self, device) -> dict[str, Tensor]:
        """Per-surface texture table, indexed by surface id (walls 0..5, then spheres, then boxes).

        pattern = sum(floor(p / period) * axes) mod 2 picks colour0 or colour1 (a checker when two
        axes are set, stripes with one, a solid 3D checker on objects with three); the colour is
        then scaled by ``gain_lo + gain_hi * r[grad_axis]`` with ``r`` the position in the room (0..1).
        """
        t = self.tile
        walls = [  # colour0, colour1, period, axes, grad_axis, gain_lo, gain_hi
            ((0.80, 0.20, 0.15), (0.95, 0.90, 0.75), t, (0, 1, 1), 2, 0.6, 0.4),  # left: red/cream checker
            ((0.15, 0.30, 0.85), (0.90, 0.95, 1.00), t, (0, 0, 1), 1, 0.7, 0.3),  # right: blue/white stripes
            ((0.55, 0.55, 0.60), (0.85, 0.85, 0.85), t, (1, 0, 1), 0, 0.7, 0.3),  # ceiling: grey checker
            ((0.45, 0.28, 0.12), (0.85, 0.72, 0.50), 2 * t, (1, 0, 1), 2, 0.7, 0.3),  # floor: wood checker
            ((0.50, 0.20, 0.60), (0.95, 0.85, 0.20), t, (1, 0, 0), 1, 0.7, 0.3),  # front: purple/yellow stripes
            ((0.10, 0.55, 0.25), (0.95, 0.97, 0.92), t, (1, 1, 0), 0, 0.55, 0.45),  # back: green/white checker
        ]
        objects = [s.color for s in self.spheres] + [b.color for b in self.boxes]
        rows = walls + [(c, tuple(0.45 * v for v in c), 0.5 * t, (1, 1, 1), 1, 1.0, 0.0) for c in objects]
        cols = list(zip(*rows))
        return {
            "color0": torch.tensor(cols[0], device=device),  # [S, 3]
            "color1": torch.tensor(cols[1], device=device),  # [S, 3]
            "period": torch.tensor(cols[2], device=device),  # [S]
            "axes": torch.tensor(cols[3], device=device, dtype=torch.float32),  # [S, 3]
            "grad_axis": torch.tensor(cols[4], device=device),  # [S]
            "gain_lo": torch.tensor(cols[5], device=device),  # [S]
            "gain_hi": torch.tensor(cols[6], device=device),  # [S]
        }

    def _shade(self, points: Tensor, surface: Tensor, normal: Tensor) -> Tensor:
        """RGB ``[N, 3]`` in ``[0, 1]`` for hit points ``[N, 3]``, ids ``[N]`` and normals ``[N, 3]``."""
        m = {k: v[surface] for k, v in self._materials(points.device).items()}  # per-ray material rows
        lo = torch.tensor(self.room_min, device=points.device)
        hi = torch.tensor(self.room_max, device=points.device)
        rel = (points - lo) / (hi - lo)  # [N, 3] position in the room, 0..1
        pattern = (torch.floor(points / m["period"][:, None]) * m["axes"]).sum(-1).remainder(2)  # [N] 0 or 1
        rgb = m["color0"] + (m["color1"] - m["color0"]) * pattern[:, None]  # [N, 3]
        gain = m["gain_lo"] + m["gain_hi"] * rel.gather(1, m["grad_axis"][:, None])[:, 0]  # [N]
        rgb = rgb * gain[:, None]
        if self.shading:
            light = torch.tensor(_LIGHT_DIR, device=points.device)
            rgb = rgb * (0.65 + 0.35 * (normal @ (light / light.norm())).clamp(min=0))[:, None]
        return rgb.clamp(0, 1)


def default_scene() -> SyntheticScene:
    """The room used by tests and the app: three spheres and two boxes in a 5 x 3 x 8 m room."""
    return SyntheticScene(
        spheres=(
            Sphere(center=(-1.0, 1.1, 3.5), radius=0.5, color=(0.95, 0.55, 0.10)),  # on the floor, left
            Sphere(center=(1.3, 1.25, 2.4), radius=0.35, color=(0.20, 0.75, 0.85)),  # on the floor, right
            Sphere(center=(0.6, -0.2, 4.6), radius=0.4, color=(0.85, 0.25, 0.65)),  # floating, centre
        ),
        boxes=(
            Box(lo=(-0.4, 0.8, 4.2), hi=(0.4, 1.6, 5.0), color=(0.90, 0.85, 0.20)),  # crate on the floor
            Box(lo=(1.4, 0.2, 4.8), hi=(2.5, 1.6, 6.0), color=(0.35, 0.70, 0.30)),  # cupboard in the corner
        ),
    )


def default_camera(width: int = 256, height: int = 160, fov_x_deg: float = 60.0) -> Camera:
    """Identity-pose camera at the world origin, 1.6 m above the floor, looking at the back wall (+z)."""
    return Camera.from_fov(width, height, fov_x_deg)
