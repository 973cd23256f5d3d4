"""Pinhole cameras in OpenCV axes (+x right, +y down, +z forward).

Conventions (see ``CONVENTIONS.md``):

* ``K`` maps camera coordinates to *continuous* image coordinates in which pixel ``(u, v)``
  covers ``[u, u+1) x [v, v+1)`` and its centre is ``(u + 1/2, v + 1/2)``. Rescaling an image by
  ``s`` therefore rescales ``fx, fy, cx, cy`` by ``s`` with no half-pixel correction.
* ``cam_from_world`` is the 4x4 rigid transform taking world points to camera points
  (a.k.a. the view matrix / extrinsics). ``world_from_cam`` is its inverse (the pose).
* Depth is the camera-space ``z`` in metres (not the ray length).

``Camera`` is one view; ``Cameras`` is ``N`` views of one image size (a path, a chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Camera",
    "Cameras",
    "intrinsics_from_fov",
    "fov_from_intrinsics",
    "invert_rigid",
    "look_at",
]


def _check_matrix(name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=torch.float32)
    if tuple(value.shape[-len(shape) :]) != shape:
        raise ValueError(f"{name} must have trailing shape {shape}, got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has non-finite entries: {value.tolist()}")
    return value


def invert_rigid(dst_from_src: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """Invert rigid transforms ``[R | t]`` exactly (``R^T``, ``-R^T t``)."""
    R = dst_from_src[..., :3, :3]  # [..., 3, 3]
    t = dst_from_src[..., :3, 3:]  # [..., 3, 1]
    out = torch.zeros_like(dst_from_src)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> Tensor:  # -> [3, 3]
    """Pixel intrinsics for a horizontal field of view, square pixels, centred principal point."""
    if not (0.0 < float(fov_x_deg) < 180.0):
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    f = 0.5 * width / torch.tan(torch.deg2rad(torch.tensor(float(fov_x_deg), dtype=torch.float64)) / 2)
    K = torch.tensor(
        [[float(f), 0.0, width / 2.0], [0.0, float(f), height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32
    )
    return K


def fov_from_intrinsics(K: Tensor, width: int) -> float:  # K: [3, 3]
    """Horizontal field of view in degrees."""
    return float(torch.rad2deg(2 * torch.atan(torch.tensor(width / 2.0) / K[0, 0].double().cpu())))


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """``cam_from_world`` for cameras at ``eye`` looking at ``target`` (OpenCV axes).

    eye, target: ``[..., 3]`` world points; up: ``[3]`` world up direction (default ``-y``, i.e.
    OpenCV's "y down" world). Returns ``[..., 4, 4]``.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32).to(eye)
    up = torch.tensor([0.0, -1.0, 0.0]) if up is None else torch.as_tensor(up, dtype=torch.float32)
    up = up.to(eye).expand_as(eye)
    z = target - eye  # [..., 3] forward
    if (z.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: eye and target coincide")
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(-up, z, dim=-1)  # right = down x forward
    if (x.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)  # down
    R = torch.stack([x, y, z], dim=-2)  # [..., 3, 3] rows are camera axes in world coordinates
    out = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    out[..., :3, :3] = R
    out[..., :3, 3] = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


@dataclass(frozen=True)
class Cameras:
    """``N`` pinhole cameras sharing one image size.

    K: ``[N, 3, 3]`` pixel intrinsics (continuous coordinates, pixel centres at ``u + 1/2``).
    cam_from_world: ``[N, 4, 4]`` world-to-camera rigid transforms (OpenCV axes).
    width, height: image size in pixels.
    """

    K: Tensor  # [N, 3, 3]
    cam_from_world: Tensor  # [N, 4, 4]
    width: int
    height: int

    def __post_init__(self) -> None:
        K = _check_matrix("K", self.K, (3, 3))
        T = _check_matrix("cam_from_world", self.cam_from_world, (4, 4))
        if K.dim() == 2:
            K = K[None]
        if T.dim() == 2:
            T = T[None]
        if K.dim() != 3 or T.dim() != 3:
            raise ValueError(f"K and cam_from_world must be [N,3,3] and [N,4,4], got {tuple(K.shape)}, {tuple(T.shape)}")
        if K.shape[0] != T.shape[0]:
            if K.shape[0] == 1:
                K = K.expand(T.shape[0], 3, 3)
            else:
                raise ValueError(f"{K.shape[0]} intrinsics for {T.shape[0]} poses")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        fx, fy = K[:, 0, 0], K[:, 1, 1]
        if (fx <= 0).any() or (fy <= 0).any() or (K[:, 1, 0] != 0).any() or (K[:, 2, :2] != 0).any() or (K[:, 2, 2] != 1).any():
            raise ValueError(f"K must be upper-triangular with positive focal lengths and K[2,2]=1, got {K.tolist()}")
        R = T[:, :3, :3].double()
        det = torch.linalg.det(R)  # [N]
        orth = (R @ R.transpose(-1, -2) - torch.eye(3, dtype=R.dtype, device=R.device)).abs().amax(dim=(-1, -2))  # [N]
        last_row = torch.tensor([0, 0, 0, 1.0], dtype=torch.float64, device=R.device)
        bad = ((det - 1).abs() > 1e-3) | (orth > 1e-3) | (T[:, 3, :].double() - last_row).abs().amax(-1).gt(1e-6)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"cam_from_world[{i}] is not a rigid transform (det(R)={float(det[i]):.6g}, "
                f"|RR^T-I|={float(orth[i]):.3g}): {T[i].tolist()}"
            )
        object.__setattr__(self, "K", K.float().contiguous())
        object.__setattr__(self, "cam_from_world", T.float().contiguous())
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def _derived(cls, K: Tensor, cam_from_world: Tensor, width: int, height: int) -> "Cameras":
        """Build from tensors derived from already validated cameras (slices, rescales, moves),
        skipping the checks: reads of the memory create these on every call."""
        out = object.__new__(cls)
        object.__setattr__(out, "K", K)
        object.__setattr__(out, "cam_from_world", cam_from_world)
        object.__setattr__(out, "width", int(width))
        object.__setattr__(out, "height", int(height))
        return out

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index) -> "Cameras":
        """Index or slice; always returns ``Cameras`` (an int keeps a leading axis of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        K, T = self.K[index], self.cam_from_world[index]
        if K.dim() != 3:
            raise IndexError(f"Cameras index must be an int, a slice or a 1-D index, got {index!r}")
        return Cameras._derived(K, T, self.width, self.height)

    def camera(self, i: int) -> "Camera":
        return Camera(self.K[i], self.cam_from_world[i], self.width, self.height)

    @property
    def world_from_cam(self) -> Tensor:  # [N, 4, 4]
        return invert_rigid(self.cam_from_world)

    @property
    def centers(self) -> Tensor:  # [N, 3] camera centres in world coordinates
        return self.world_from_cam[:, :3, 3]

    @property
    def device(self) -> torch.device:
        return self.K.device

    def to(self, device) -> "Cameras":
        return Cameras._derived(self.K.to(device), self.cam_from_world.to(device), self.width, self.height)

    def projection(self) -> Tensor:  # [N, 3, 4]
        """Full projection ``K @ cam_from_world[:3]``: world points to ``(z u, z v, z)``."""
        return self.K @ self.cam_from_world[:, :3, :]

    def rescaled(self, width: int, height: int) -> "Cameras":
        """Same cameras for an image resized to ``width x height`` (e.g. the latent grid).

        With pixel centres at ``u + 1/2``, cell ``i`` of a grid downsampled by ``s`` has its centre at
        ``s * (i + 1/2)`` in the original image, so ``K`` scales by ``width / self.width`` exactly.
        """
        sx, sy = width / self.width, height / self.height
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        S = torch.tensor([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]], dtype=self.K.dtype, device=self.K.device)  # [3, 3]
        return Cameras._derived(S @ self.K, self.cam_from_world, width, height)

    @staticmethod
    def cat(items: "list[Cameras]") -> "Cameras":
        if not items:
            raise ValueError("Cameras.cat needs at least one Cameras")
        sizes = {(c.width, c.height) for c in items}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate cameras of different image sizes: {sorted(sizes)}")
        return Cameras._derived(
            torch.cat([c.K for c in items]), torch.cat([c.cam_from_world for c in items]), items[0].width, items[0].height
        )


@dataclass(frozen=True)
class Camera:
    """One pinhole camera. K: ``[3, 3]``; cam_from_world: ``[4, 4]``; OpenCV axes."""

    K: Tensor  # [3, 3]
    cam_from_world: Tensor  # [4, 4]
    width: int
    height: int

    def __post_init__(self) -> None:
        batch = self.batch()  # validates
        object.__setattr__(self, "K", batch.K[0])
        object.__setattr__(self, "cam_from_world", batch.cam_from_world[0])

    def batch(self) -> Cameras:
        K = torch.as_tensor(self.K, dtype=torch.float32)
        T = torch.as_tensor(self.cam_from_world, dtype=torch.float32)
        if K.shape != (3, 3) or T.shape != (4, 4):
            raise ValueError(f"Camera needs K [3,3] and cam_from_world [4,4], got {tuple(K.shape)}, {tuple(T.shape)}")
        return Cameras(K[None], T[None], self.width, self.height)

    @property
    def world_from_cam(self) -> Tensor:  # [4, 4]
        return invert_rigid(self.cam_from_world)

    @property
    def center(self) -> Tensor:  # [3]
        return self.world_from_cam[:3, 3]

    def rescaled(self, width: int, height: int) -> "Camera":
        return self.batch().rescaled(width, height).camera(0)

    def to(self, device) -> "Camera":
        return Camera(self.K.to(device), self.cam_from_world.to(device), self.width, self.height)

    @staticmethod
    def from_fov(width: int, height: int, fov_x_deg: float, cam_from_world: Tensor | None = None) -> "Camera":
        T = torch.eye(4) if cam_from_world is None else cam_from_world
        return Camera(intrinsics_from_fov(width, height, fov_x_deg), T, width, height)
