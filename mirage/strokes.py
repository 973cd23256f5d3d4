"""A stroke drawn on the source image, turned into 3D points for a camera path.

The app draws with a Gradio ``ImageEditor`` (``image_mode="RGBA"``, ``fixed_canvas=False``); its
value is ``{"background", "layers", "composite"}``. The stroke is every pixel with alpha > 0 in any
layer. The drawing order is lost, so the stroke is ordered geometrically, skeleton-free:

1. pixels are pooled into square cells about one brush width wide (the brush width comes from the
   distance transform; cells grow so that at most ``max_nodes`` remain) and each cell becomes the
   centroid of its pixels;
2. a Euclidean minimum spanning tree joins the cells (this also bridges pen lifts), and its
   longest path (the tree diameter, two farthest-node searches) is the stroke's polyline: side
   branches of a scribble and the width of a thick brush drop out;
3. the polyline starts at the end nearer ``start_near`` (default: the image centre; pass the
   source camera's principal point), is smoothed with a 3-tap average (ends fixed) and resampled
   to ``num_points`` points equally spaced by arc length.

Stroke points are in pixel-index coordinates ``(u, v)`` (column, row; pixel ``(u, v)`` is the
integer cell), so the continuous image position is ``(u + 1/2, v + 1/2)`` (CONVENTIONS.md).
``lift_stroke`` puts each point at ``depth_fraction`` x the scene depth under it, so a camera path
through the points flies toward the drawn surface without entering it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import scipy.ndimage
import scipy.sparse.csgraph
import scipy.spatial
import torch
from torch import Tensor

from .cameras import Camera
from .geometry import unproject_points, valid_depth

__all__ = ["stroke_mask", "order_stroke", "stroke_pixels_from_layers", "lift_stroke"]


def _as_array(layer, name: str) -> np.ndarray:
    if isinstance(layer, (str, Path)):
        layer = PIL.Image.open(layer)
    if isinstance(layer, PIL.Image.Image):
        layer = np.asarray(layer.convert("RGBA") if layer.mode in ("RGBA", "LA", "PA", "P") else layer)
    if not isinstance(layer, np.ndarray):
        raise ValueError(f"{name} must be an image array, PIL image or path, got {type(layer).__name__}")
    return layer


def stroke_mask(editor_value, *, alpha_threshold: int = 0) -> np.ndarray:  # -> [H, W] bool
    """Pixels of the drawn stroke: alpha > ``alpha_threshold`` in any layer of an ``ImageEditor``
    value. Also accepts one RGBA layer ``[H, W, 4]`` or a bool mask ``[H, W]``."""
    if isinstance(editor_value, np.ndarray) and editor_value.dtype == bool:
        if editor_value.ndim != 2:
            raise ValueError(f"stroke mask must be [H, W], got shape {editor_value.shape}")
        return editor_value
    if isinstance(editor_value, dict):
        if "layers" not in editor_value:
            raise ValueError(f"ImageEditor value needs a 'layers' entry, got keys {sorted(editor_value)}")
        layers = [_as_array(l, f"layer {i}") for i, l in enumerate(editor_value["layers"] or []) if l is not None]
        background = editor_value.get("background")
    else:
        layers, background = [_as_array(editor_value, "stroke layer")], None
    if not layers:
        raise ValueError("no stroke drawn: the image editor has no layers")
    shape = layers[0].shape[:2]
    mask = np.zeros(shape, dtype=bool)
    for i, layer in enumerate(layers):
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise ValueError(
                f"layer {i} has shape {layer.shape}; strokes need RGBA layers [H, W, 4] "
                "(use gr.ImageEditor(image_mode='RGBA'))"
            )
        if layer.shape[:2] != shape:
            raise ValueError(f"layers have different sizes: {shape} and {layer.shape[:2]}")
        mask |= layer[:, :, 3] > alpha_threshold
    if background is not None:
        bg = _as_array(background, "background")
        if bg.shape[:2] != shape:
            raise ValueError(
                f"layers {shape} and background {bg.shape[:2]} differ in size (use fixed_canvas=False)"
            )
    return mask


def _tree_path(nodes: np.ndarray) -> list[int]:  # nodes: [K, 2] -> node indices of the MST diameter
    if len(nodes) == 1:
        return [0]
    dist = scipy.spatial.distance.cdist(nodes, nodes)  # [K, K]
    tree = scipy.sparse.csgraph.minimum_spanning_tree(dist)
    d0 = scipy.sparse.csgraph.shortest_path(tree, directed=False, indices=0)  # [K]
    a = int(np.argmax(d0))
    da, pred = scipy.sparse.csgraph.shortest_path(tree, directed=False, indices=a, return_predecessors=True)
    b = int(np.argmax(da))
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    return path[::-1]  # a -> b


def _resample(polyline: np.ndarray, num_points: int) -> np.ndarray:  # [K, 2] -> [num_points, 2]
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)  # [K - 1]
    s = np.concatenate([[0.0], np.cumsum(seg)])  # [K] arc length
    t = np.linspace(0.0, s[-1], num_points)
    return np.stack([np.interp(t, s, polyline[:, 0]), np.interp(t, s, polyline[:, 1])], axis=1)


def order_stroke(
    mask: np.ndarray,
    num_points: int = 16,
    *,
    start_near: tuple[float, float] | None = None,
    min_length: float = 4.0,
    max_nodes: int = 1500,
) -> Tensor:  # mask: [H, W] bool -> [num_points, 2] float32 (u, v) pixel-index coordinates
    """Order a stroke mask into a polyline and resample it (algorithm in the module docstring).

    start_near: continuous image point ``(x, y)`` the stroke should start near (default centre).
    Raises ``ValueError`` for an empty mask, a single pixel, or a polyline shorter than
    ``min_length`` pixels (a click, not a stroke).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"stroke mask must be [H, W], got shape {mask.shape}")
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    H, W = mask.shape
    vs, us = np.nonzero(mask)  # [P] rows, cols
    if len(us) == 0:
        raise ValueError("no stroke drawn: the layers have no pixel with alpha > 0")
    if len(us) == 1:
        raise ValueError(f"stroke of a single pixel at (u={us[0]}, v={vs[0]}): draw a line")
    radius = float(scipy.ndimage.distance_transform_edt(mask).max())  # brush half-width (+1/2)
    cell = max(1, int(round(2 * radius - 1)), int(np.ceil(np.sqrt(len(us) / max_nodes))))
    cell_id = (vs // cell) * (W // cell + 1) + us // cell  # [P]
    _, inverse, counts = np.unique(cell_id, return_inverse=True, return_counts=True)
    nodes = np.stack([np.bincount(inverse, us), np.bincount(inverse, vs)], axis=1) / counts[:, None]  # [K, 2]
    polyline = nodes[_tree_path(nodes)]  # [L, 2] (u, v)
    cx, cy = start_near if start_near is not None else (W / 2.0, H / 2.0)
    ends = polyline[[0, -1]] + 0.5  # [2, 2] continuous positions of both ends
    d = np.hypot(ends[:, 0] - cx, ends[:, 1] - cy)
    if d[1] < d[0]:
        polyline = polyline[::-1]
    if len(polyline) >= 3:  # 3-tap smoothing, ends fixed
        smooth = polyline.copy()
        smooth[1:-1] = (polyline[:-2] + polyline[1:-1] + polyline[2:]) / 3.0
        polyline = smooth
    length = float(np.linalg.norm(np.diff(polyline, axis=0), axis=1).sum())
    if length < min_length:
        raise ValueError(
            f"stroke is too short ({length:.1f} px along its length, need {min_length}): draw a line, not a dot"
        )
    return torch.from_numpy(_resample(polyline, num_points)).float()


def stroke_pixels_from_layers(
    editor_value,
    num_points: int = 16,
    *,
    target_size: tuple[int, int] | None = None,
    start_near: tuple[float, float] | None = None,
    min_length: float = 4.0,
) -> Tensor:  # -> [num_points, 2] float32 (u, v) pixel-index coordinates
    """Ordered, resampled stroke from an ``ImageEditor`` value (see ``stroke_mask``).

    target_size: ``(H, W)`` of the image the points are for (the depth map), when the editor
    canvas has another resolution; coordinates are rescaled in the continuous convention.
    start_near: continuous point ``(x, y)`` in target coordinates, e.g. the source camera's
    principal point ``(cx, cy)``; default the image centre.
    """
    mask = stroke_mask(editor_value)  # [h, w]
    h, w = mask.shape
    H, W = target_size if target_size is not None else (h, w)
    if H <= 0 or W <= 0:
        raise ValueError(f"target_size must be positive, got {target_size}")
    sx, sy = w / W, h / H  # target -> canvas
    start = None if start_near is None else (start_near[0] * sx, start_near[1] * sy)
    pixels = order_stroke(mask, num_points, start_near=start, min_length=min_length)  # [M, 2] canvas
    scale = torch.tensor([W / w, H / h])
    return ((pixels + 0.5) * scale - 0.5).float()


def lift_stroke(
    pixels: Tensor,
    depth: Tensor,
    camera: Camera,
    depth_fraction: float = 0.5,
    *,
    search_radius: int = 8,
) -> Tensor:  # pixels: [M, 2] (u, v) pixel-index coords; depth: [H, W] metres -> [M, 3] world
    """World points at ``depth_fraction`` x the depth under each stroke point (ray through the
    pixel centre ``(u + 1/2, v + 1/2)``). Invalid depth (NaN, inf, <= 0) under a point is replaced
    by the nearest valid pixel within ``search_radius`` pixels, else by the median valid depth of
    the image. ``depth_fraction`` in ``[0, 0.9]``: 0 stays at the camera, 0.9 stops just short of
    the surface.
    """
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    if pixels.dim() != 2 or pixels.shape[1] != 2 or pixels.shape[0] == 0:
        raise ValueError(f"pixels must be [M, 2] with M >= 1, got {tuple(pixels.shape)}")
    if not (0.0 <= depth_fraction <= 0.9):
        raise ValueError(f"depth_fraction must be in [0, 0.9], got {depth_fraction}")
    if depth.dim() != 2 or tuple(depth.shape) != (camera.height, camera.width):
        raise ValueError(f"depth {tuple(depth.shape)} must be [H, W] = ({camera.height}, {camera.width}) of the camera")
    H, W = depth.shape
    xy = pixels.double() + 0.5  # [M, 2] continuous positions
    outside = (xy[:, 0] < 0) | (xy[:, 0] > W) | (xy[:, 1] < 0) | (xy[:, 1] > H) | ~torch.isfinite(xy).all(1)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(f"stroke outside the image: point {i} (u={float(pixels[i,0]):.1f}, v={float(pixels[i,1]):.1f}) not in {W}x{H}")
    d = depth.detach().cpu().double()
    valid = valid_depth(d)  # [H, W]
    if not valid.any():
        raise ValueError("depth map has no valid pixel to lift the stroke onto")
    median = float(d[valid].median())
    iu = xy[:, 0].floor().long().clamp(0, W - 1)  # [M] pixel under each point
    iv = xy[:, 1].floor().long().clamp(0, H - 1)
    z = torch.empty(len(pixels), dtype=torch.float64)
    offsets = torch.arange(-search_radius, search_radius + 1)
    dv, du = torch.meshgrid(offsets, offsets, indexing="ij")  # [R, R] window offsets
    order = (du.square() + dv.square()).flatten().argsort(stable=True)  # nearest first
    du, dv = du.flatten()[order], dv.flatten()[order]  # [R*R]
    for m in range(len(pixels)):
        if valid[iv[m], iu[m]]:
            z[m] = d[iv[m], iu[m]]
            continue
        u, v = iu[m] + du, iv[m] + dv  # [R*R] window pixels, nearest first
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        u, v = u[inside], v[inside]
        hits = valid[v, u].nonzero()
        z[m] = d[v[hits[0, 0]], u[hits[0, 0]]] if len(hits) else median
    world = unproject_points(xy, depth_fraction * z, camera.K.cpu(), camera.world_from_cam.cpu())  # [M, 3] in float64
    return world.float()
