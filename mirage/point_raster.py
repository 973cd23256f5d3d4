"""Soft point rasterizer with PyTorch3D's point-rendering semantics, and Open3D's voxel downsampling.

Spatia (ZhaoJingjing713/Spatia ``utils/render_point_torch3d.py``) renders its point cloud for its
trained side branch with PyTorch3D ``PointsRasterizationSettings(image_size=(H, W), radius=0.01,
points_per_pixel=5)``, ``PointsRenderer`` and ``AlphaCompositor(background_color=(0, 0, 0))``, after
``open3d.geometry.PointCloud.voxel_down_sample`` (``utils/render_point.py``). ``rasterize_points``
is that renderer, written here from PyTorch3D's source (pytorch3d @ 9381c40), with our cameras:

- **Pixels and NDC.** Pixel ``(u, v)`` has its centre at ``(u + 1/2, v + 1/2)`` (``CONVENTIONS.md``);
  NDC spans 2 units over the *shorter* side, so one pixel is ``2 / min(H, W)`` NDC on both axes
  (``csrc/rasterize_points/rasterization_utils.h:16-41``). PyTorch3D's +X-left, +Y-up NDC flips
  (``rasterize_points_cpu.cpp:50-58``) are undone by Spatia's OpenCV -> PyTorch3D axis change
  (``render_point_torch3d.py:18-45, 93``), so rows and columns are OpenCV's, as here.
- **Which points.** A point is skipped when its camera ``z`` is not finite and positive: PyTorch3D
  skips ``z < 0`` (``rasterize_points_cpu.cpp:68``, ``rasterize_points.cu:55``) and at ``z = 0``
  its projection divides by zero, so that point can never hit a pixel. There is no far plane.
- **Which pixels.** A point hits a pixel when the squared NDC distance from the pixel centre to the
  projected point is *strictly* below ``radius**2`` (``rasterize_points_cpu.cpp:71-74``,
  ``rasterize_points.cu:57-60``): a point exactly on the disc's edge does not hit.
- **Which K.** Each pixel keeps the ``points_per_pixel`` hits nearest in ``z``, in ascending
  ``(z, point index)`` order: the CPU kernel's max-heap of ``(z, index, dist2)`` tuples
  (``rasterize_points_cpu.cpp:60-91``). The CUDA kernel orders by ``z`` alone
  (``rasterize_points.cu:26-28, 61-79``), so for exactly equal ``z`` it may keep or order other points.
- **Alpha and compositing.** ``alpha = 1 - dist2 / radius**2`` (``renderer/points/renderer.py:62-65``),
  composited front to back, ``out = sum_k alpha_k prod_{l<k} (1 - alpha_l) f_k``
  (``renderer/compositing.py:75-77``, ``csrc/compositing/alpha_composite_cpu.cpp:42-53``). The
  background replaces only pixels that kept no point and is *not* mixed into the others
  (``renderer/points/compositor.py:33-41, 82-114``).
- **Coverage** is ``sum_k alpha_k prod_{l<k} (1 - alpha_l) = 1 - prod_k (1 - alpha_k)``: exactly what
  Spatia's score render (an all-ones cloud, same geometry, black background) returns.

Spatia's camera (``render_point_torch3d.py:95-100``: focal ``2 f / (s - 1)``, principal point
``2 (c - (S - 1) / 2) / (s - 1)`` in PyTorch3D's flipped NDC, ``s = min(H, W)``) is not the pinhole
of its ``K``: ``spatia_intrinsics`` gives the pixel ``K`` that projects as it does (``f' = f s / (s - 1)``,
``c' = S / 2 - (c - (S - 1) / 2) s / (s - 1)`` per axis, ``S`` = that axis' size); ``rasterize_points``
itself takes any ``K``.

The rasterizer works per view on chunks of points: each point's candidate pixels are the square of
pixels around its disc; hits are merged with the kept list of the earlier chunks by one stable sort
of ``(pixel, z)`` keys (points in index order, so ties keep the lower index first) and cut to ``K``
per pixel. Memory is bounded by the chunk and by ``H * W * K`` kept entries; no atomics, so the
result is deterministic on CPU and CUDA. ``tests/test_point_raster.py`` checks both functions against
per-pixel Python references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .geometry import project_points, valid_depth

__all__ = ["PointRaster", "rasterize_points", "spatia_intrinsics", "voxel_downsample"]

# Candidate (point, pixel) slots examined at once; bounds the chunk's temporaries (~30 B per slot).
_SLOTS_PER_CHUNK = 1 << 22


@dataclass
class PointRaster:
    """Output of ``rasterize_points`` for ``V`` views of ``H x W`` pixels."""

    features: Tensor  # [V, C, H, W] float32 composited features; the background where count == 0
    coverage: Tensor  # [V, H, W] float32 1 - prod_k (1 - alpha_k) over the kept points; 0 where count == 0
    depth: Tensor  # [V, H, W] float32 camera z of the nearest kept point, NaN where count == 0
    count: Tensor  # [V, H, W] long points kept at the pixel (<= points_per_pixel)


def rasterize_points(
    points: Tensor,  # [N, 3] world points
    features: Tensor,  # [N, C] any float features (colours in [0, 1], latents, ones)
    cam_from_world: Tensor,  # [V, 4, 4]
    K: Tensor,  # [V, 3, 3] pixel intrinsics, pixel centres at u + 1/2
    image_size: tuple[int, int],  # (H, W)
    radius: float = 0.01,  # disc radius in NDC: the shorter image side spans 2
    points_per_pixel: int = 5,
    background: float | Tensor = 0.0,  # scalar or [C]; Spatia: 0
) -> PointRaster:
    """PyTorch3D ``PointsRenderer(PointsRasterizer, AlphaCompositor)`` of one cloud in ``V`` views
    (semantics and sources in the module docstring)."""
    H, W = _check_inputs(points, features, cam_from_world, K, image_size, radius, points_per_pixel)
    V, C, device = cam_from_world.shape[0], features.shape[1], points.device
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    if bg.shape not in ((), (C,)):
        raise ValueError(f"background must be a scalar or have {C} values, got shape {tuple(bg.shape)}")
    pixel_ndc = 2.0 / min(H, W)  # NDC size of one pixel on both axes
    N = points.shape[0]
    f = torch.cat([features.float(), features.new_zeros(1, C, dtype=torch.float32)])  # [N + 1, C]; row N: empty slot
    out_f, out_cov, out_z, out_n = [], [], [], []
    for v in range(V):
        uv, z = project_points(points, K[v : v + 1].to(device), cam_from_world[v : v + 1].to(device))  # [1, N, 2], [1, N]
        index, alpha = _nearest_k(uv[0], z[0], H, W, radius, pixel_ndc, points_per_pixel)  # [H*W, K] each
        transmit = torch.ones(H * W, device=device)  # [H*W] prod_{l<k} (1 - alpha_l)
        acc = torch.zeros(H * W, C, device=device)  # [H*W, C]
        cov = torch.zeros(H * W, device=device)  # [H*W]
        for k in range(points_per_pixel):  # front to back, in a fixed order (deterministic)
            w = alpha[:, k] * transmit  # [H*W]; 0 in empty slots, whose feature row is 0 too
            acc += w[:, None] * f[index[:, k]]
            cov += w
            transmit = transmit * (1 - alpha[:, k])
        count = (index < N).sum(1)  # [H*W]
        acc = torch.where((count == 0)[:, None], bg.expand(C), acc)  # background only where no point
        nearest = torch.cat([z[0], z.new_full((1,), torch.nan)])[index[:, 0]]  # [H*W] NaN where empty
        out_f.append(acc.T.reshape(C, H, W))  # [H*W, C] -> [C, H, W]
        out_cov.append(cov.view(H, W))
        out_z.append(nearest.view(H, W))
        out_n.append(count.view(H, W))
    return PointRaster(torch.stack(out_f), torch.stack(out_cov), torch.stack(out_z), torch.stack(out_n))


def spatia_intrinsics(K: Tensor, height: int, width: int) -> Tensor:  # [..., 3, 3] ours -> [..., 3, 3] ours
    """The pixel intrinsics (our convention) under which a pinhole projects as Spatia's render does when
    it is given ``K``: Spatia hands PyTorch3D the OpenCV intrinsics (ours - 1/2) as NDC focal
    ``2 f / (s - 1)`` and principal point ``2 (c - (S - 1) / 2) / (s - 1)``; PyTorch3D's NDC has +x left
    and +y up, so the principal point's offset comes out mirrored about the image centre and the focal
    scaled by ``s / (s - 1)`` (``s = min(H, W)``). A centred ``K`` stays centred."""
    s = min(height, width)
    out = K.clone().float()
    for axis, size in ((0, width), (1, height)):
        c_cv = K[..., axis, 2].float() - 0.5  # OpenCV: pixel centres at integers
        out[..., axis, axis] = K[..., axis, axis].float() * s / (s - 1)
        out[..., axis, 2] = size / 2 - (c_cv - (size - 1) / 2) * s / (s - 1)
    return out


def _nearest_k(
    uv: Tensor,  # [N, 2] projected centres, continuous pixel coordinates
    z: Tensor,  # [N] camera depth
    H: int,
    W: int,
    radius: float,  # NDC
    pixel_ndc: float,  # NDC size of one pixel
    K: int,
) -> tuple[Tensor, Tensor]:  # index [H*W, K] long (N: empty), alpha [H*W, K] float32 (0: empty)
    """The ``K`` hits nearest in ``(z, point index)`` of every pixel, and their alphas."""
    device, N = uv.device, uv.shape[0]
    r_px = radius / pixel_ndc  # disc radius in pixels
    M = math.floor(2 * r_px) + 3  # pixels per axis of a square holding every centre within r_px (+1 for rounding)
    span = max(1, _SLOTS_PER_CHUNK // (M * M))
    usable = valid_depth(z) & torch.isfinite(uv).all(1)  # [N]
    r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)  # squared in float32, as the kernels do
    # (pixel << 32) + float bits of z: positive floats order like their bits, so keys order by (pixel, z)
    z_bits = torch.where(usable, z, 1.0).float().view(torch.int32).long()  # [N]
    steps = torch.arange(M, device=device, dtype=uv.dtype)  # [M]
    key = torch.empty(0, dtype=torch.long, device=device)  # [T] kept list, sorted by (pixel, z, point)
    point = torch.empty(0, dtype=torch.long, device=device)  # [T]
    alpha = torch.empty(0, device=device)  # [T]
    for s in range(0, N, span):
        e = min(N, s + span)
        c = torch.where(usable[s:e, None], uv[s:e], 0.0)  # [n, 2] (x, y)
        first = torch.floor(c - 0.5 - r_px)  # [n, 2] first column / row whose centre may lie in the disc
        cells = first.unsqueeze(-1) + steps  # [n, 2, M] columns (0) and rows (1)
        d = (cells + 0.5 - c.unsqueeze(-1)) * pixel_ndc  # [n, 2, M] NDC offsets of the centres
        in_cols = (cells[:, 0] >= 0) & (cells[:, 0] < W)  # [n, M]
        in_rows = (cells[:, 1] >= 0) & (cells[:, 1] < H)  # [n, M]
        dist2 = d[:, 1, :, None] ** 2 + d[:, 0, None, :] ** 2  # [n, M, M] rows x columns
        hit = (dist2 < r2) & in_rows[:, :, None] & in_cols[:, None, :] & usable[s:e, None, None]  # [n, M, M]
        flat = hit.view(-1).nonzero().squeeze(1)  # [h] hits in (point, row, column) order
        p = flat // (M * M)  # [h] point within the chunk
        row = cells[p, 1, (flat // M) % M].long()  # [h]
        col = cells[p, 0, flat % M].long()  # [h]
        new_key = ((row * W + col) << 32) + z_bits[s + p]  # [h]
        key = torch.cat([key, new_key])  # earlier chunks (lower indices) first: the stable sort keeps them first on ties
        point = torch.cat([point, s + p])
        alpha = torch.cat([alpha, 1 - dist2.view(-1)[flat] / r2])
        key, order = torch.sort(key, stable=True)  # [T] by (pixel, z), then by position = point index
        rank = _rank_in_pixel(key >> 32)  # [T]
        keep = rank < K
        key, point, alpha = key[keep], point[order][keep], alpha[order][keep]
    pixel, rank = key >> 32, _rank_in_pixel(key >> 32)  # [T] each
    index = torch.full((H * W, K), N, dtype=torch.long, device=device)
    alphas = torch.zeros(H * W, K, device=device)
    index[pixel, rank] = point  # every (pixel, rank) once: deterministic
    alphas[pixel, rank] = alpha
    return index, alphas


def _rank_in_pixel(pixel: Tensor) -> Tensor:  # [T] sorted pixel ids -> [T] position within its pixel
    return torch.arange(pixel.numel(), device=pixel.device) - torch.searchsorted(pixel, pixel)


def _check_inputs(points, features, cam_from_world, K, image_size, radius, points_per_pixel) -> tuple[int, int]:
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    if features.ndim != 2 or features.shape[0] != points.shape[0]:
        raise ValueError(f"features must be [N, C] with N = {points.shape[0]}, got {tuple(features.shape)}")
    if cam_from_world.ndim != 3 or cam_from_world.shape[1:] != (4, 4):
        raise ValueError(f"cam_from_world must be [V, 4, 4], got {tuple(cam_from_world.shape)}")
    if K.shape != (cam_from_world.shape[0], 3, 3):
        raise ValueError(f"K must be [V, 3, 3] with V = {cam_from_world.shape[0]}, got {tuple(K.shape)}")
    H, W = (int(x) for x in image_size)
    if H < 1 or W < 1 or H * W >= 1 << 31:
        raise ValueError(f"image_size must be (H, W) with 1 <= H * W < 2^31, got {tuple(image_size)}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive NDC length, got {radius}")
    if int(points_per_pixel) != points_per_pixel or points_per_pixel < 1:
        raise ValueError(f"points_per_pixel must be a positive integer, got {points_per_pixel}")
    return H, W


def voxel_downsample(
    points: Tensor,  # [N, 3]
    features: Tensor,  # [N, C] float
    voxel: float,  # voxel side, in the units of the points
) -> tuple[Tensor, Tensor]:  # points [M, 3], features [M, C]: the means of each occupied voxel
    """Open3D's ``PointCloud::VoxelDownSample`` (isl-org/Open3D @ 22a6a30,
    ``cpp/open3d/geometry/PointCloud.cpp:366-412``): voxels start half a voxel below the cloud's
    minimum corner (``:374``), a point's voxel is ``floor((p - start) / voxel)`` in float64
    (``:386-390``) and each occupied voxel gives the mean position and mean feature of its points
    (``:259-290, 395-402``). Open3D returns the voxels in hash-map order; here they come sorted by
    voxel index (x, then y, then z). Means are float64 sums in point order, cast back to the inputs'
    dtypes; no atomics, so the result is deterministic on CPU and CUDA."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    if features.ndim != 2 or features.shape[0] != points.shape[0]:
        raise ValueError(f"features must be [N, C] with N = {points.shape[0]}, got {tuple(features.shape)}")
    if not (math.isfinite(voxel) and voxel > 0):
        raise ValueError(f"voxel must be a positive length, got {voxel}")
    if points.shape[0] == 0:
        return points, features
    p = points.double()  # [N, 3]
    if not torch.isfinite(p).all():
        raise ValueError("points must be finite")
    start = p.min(0).values - voxel / 2  # [3]
    if float((p.max(0).values + voxel / 2 - start).max()) > voxel * (2**31 - 1):  # PointCloud.cpp:376-379
        raise ValueError(f"voxel {voxel} is too small for a cloud of this extent")
    ijk = torch.floor((p - start) / voxel).long()  # [N, 3]
    _, inverse, counts = torch.unique(ijk, dim=0, return_inverse=True, return_counts=True)  # [M, 3] sorted rows
    order = torch.sort(inverse, stable=True).indices  # [N] grouped by voxel, point order within each
    data = torch.cat([p, features.double()], 1)[order]  # [N, 3 + C]
    means = torch.segment_reduce(data, "sum", lengths=counts, axis=0) / counts[:, None]  # [M, 3 + C]
    return means[:, :3].to(points.dtype), means[:, 3:].to(features.dtype)
