"""Plotly figures for the demo: the point cache in 3D with the camera path, its growth chunk by
chunk, per-stage timings and cache sizes. Every function returns a ``go.Figure`` that is
JSON-serialisable (``fig.to_json()``); point data is sent as float32 arrays (plotly encodes numpy
arrays as compact base64) and subsampled to at most ``max_points``.

World axes are OpenCV (y down), so 3D scenes use ``up = (0, -1, 0)`` and ``aspectmode = "data"``.
Chunks are numbered from 1 everywhere (``chunk_label``); what the memory held before the first chunk
is "image" (initialized from the input image).
"""

from __future__ import annotations

import textwrap
from typing import Literal, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from .cameras import Cameras

__all__ = [
    "STAGE_ORDER",
    "STAGE_NAMES",
    "chunk_label",
    "auto_point_size",
    "pca_colors",
    "subsample_indices",
    "frustum_indices",
    "frustum_segments",
    "cell_quads",
    "source_view",
    "cache_figure",
    "cache_growth_figure",
    "timing_figure",
    "cache_size_figure",
]

MiB = float(2**20)
STAGE_ORDER = ("project", "rasterize", "encode", "condition", "denoise", "decode", "depth", "update", "display")  # readout first
STAGE_COLORS = {  # readout stages in warm hues, generation in blues/greens
    "project": "#f58518",
    "rasterize": "#e45756",
    "encode": "#b279a2",
    "condition": "#9d755d",
    "denoise": "#4c78a8",
    "decode": "#72b7b2",
    "depth": "#54a24b",
    "update": "#eeca3b",
    "display": "#bab0ac",
}
STAGE_NAMES = {"display": "display (readout decoded for the page)"}  # legend names where the key alone says too little
SCENE_CAMERA = dict(up=dict(x=0, y=-1, z=0), eye=dict(x=0.0, y=-0.9, z=-1.9), center=dict(x=0, y=0, z=0))
PATH_COLOR = "#1f77b4"
SOURCE_COLOR = "#d62728"


def chunk_label(step: int) -> str:
    """The one name of a step in every figure: 0 is the input image (initialization), ``c >= 1`` is ``"chunk c"``."""
    return "image" if step == 0 else f"chunk {step}"


def auto_point_size(num_points: int, *, pixels_per_side: float = 240.0, lo: float = 2.0, hi: float = 12.0) -> float:
    """Marker size (screen pixels) from the cache's density: about ``pixels_per_side / sqrt(N)``, so
    that a few hundred cells of one image tile the view (a recognisable mosaic) and tens of thousands
    stay distinct; clipped to ``[lo, hi]``."""
    return float(np.clip(pixels_per_side / np.sqrt(max(int(num_points), 1)), lo, hi))


def _numpy(x: Tensor | np.ndarray, dtype) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        x = x.float().numpy() if x.is_floating_point() else x.numpy()
    return np.asarray(x).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------- colours
def pca_colors(features: Tensor | np.ndarray, *, percentile: float = 1.0) -> np.ndarray:  # [N, C] -> uint8 [N, 3]
    """Colour latent features by their first three principal components.

    Features are centred, the top-3 eigenvectors of their covariance (float64, ``eigh``) give the
    components, each with the sign that makes its largest-magnitude loading positive (so the
    colours are deterministic). Component ``i`` is mapped to channel ``i`` by its
    ``[percentile, 100 - percentile]`` range to ``0..255`` (clipped). A constant component, or a
    missing one when ``C < 3``, is mid-grey (128).
    """
    X = _numpy(features, np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be [N, C], got shape {X.shape}")
    N, C = X.shape
    if N == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    if not np.isfinite(X).all():
        raise ValueError("features contain non-finite values")
    if not (0.0 <= percentile < 50.0):
        raise ValueError(f"percentile must be in [0, 50), got {percentile}")
    Xc = X - X.mean(axis=0, keepdims=True)  # [N, C]
    cov = Xc.T @ Xc / max(N - 1, 1)  # [C, C]
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    k = min(3, C)
    V = eigvecs[:, ::-1][:, :k]  # [C, k] top-k components
    signs = np.sign(V[np.abs(V).argmax(axis=0), np.arange(k)])  # [k] sign of the largest |loading|
    V = V * np.where(signs == 0, 1.0, signs)
    Y = Xc @ V  # [N, k]
    out = np.full((N, 3), 128, dtype=np.uint8)
    for i in range(k):
        if eigvals[::-1][i] <= 1e-12 * max(float(eigvals.max()), 1e-300):
            continue  # constant component -> grey
        lo, hi = np.percentile(Y[:, i], [percentile, 100.0 - percentile])
        if hi - lo <= 0:
            lo, hi = Y[:, i].min(), Y[:, i].max()
        if hi - lo <= 0:
            continue
        out[:, i] = np.clip(np.round((Y[:, i] - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return out


def _hex_colors(colors: np.ndarray) -> list[str]:  # uint8 [N, 3] -> N strings "#rrggbb"
    packed = (colors[:, 0].astype(np.int64) << 16) | (colors[:, 1].astype(np.int64) << 8) | colors[:, 2]
    return [f"#{int(c):06x}" for c in packed]


def subsample_indices(num: int, max_points: int, seed: int = 0) -> np.ndarray:  # -> [min(num, max_points)] sorted
    """Deterministic uniform subsample (fixed seed) that keeps the original order."""
    if max_points <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if num <= max_points:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, size=max_points, replace=False))


def _check_points(points, colors) -> tuple[np.ndarray, np.ndarray]:
    P = _numpy(points, np.float32)
    Cc = colors.detach().cpu().numpy() if isinstance(colors, Tensor) else np.asarray(colors)  # no silent cast
    if P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {P.shape}")
    if Cc.dtype != np.uint8 or Cc.shape != P.shape:
        raise ValueError(f"colors must be uint8 [N, 3] matching points {P.shape}, got {Cc.dtype} {Cc.shape}")
    return P, Cc


# ------------------------------------------------------------------------------------ cell quads
def cell_quads(points: Tensor | np.ndarray, cam_from_world: Tensor, K: Tensor, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's footprint as a world quad: the ``stride x stride`` pixel square it covers in the image
    of the camera that stored it, at the cell's depth in that camera (a patch facing that camera).

    points [N, 3] world; cam_from_world [N, 4, 4] and K [N, 3, 3] each point's camera. Returns
    vertices [4N, 3] float32 (corners top-left, top-right, bottom-right, bottom-left as the camera sees
    them) and faces [2N, 3] int (two triangles per quad, indices into the vertices)."""
    P = torch.as_tensor(_numpy(points, np.float64))  # [N, 3]
    R, t = cam_from_world[:, :3, :3].double().cpu(), cam_from_world[:, :3, 3].double().cpu()  # [N, 3, 3], [N, 3]
    K = K.double().cpu()  # [N, 3, 3]
    p_cam = torch.einsum("nij,nj->ni", R, P) + t  # [N, 3]
    half = 0.5 * stride * p_cam[:, 2:3] / torch.stack([K[:, 0, 0], K[:, 1, 1]], 1)  # [N, 2] metres: (x, y) half sides
    signs = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)  # [4, 2] (y down)
    corners = p_cam[:, None].repeat(1, 4, 1)  # [N, 4, 3] camera frame
    corners[..., :2] += signs[None] * half[:, None]
    world = torch.einsum("nji,nkj->nki", R, corners - t[:, None])  # [N, 4, 3] R^T (c - t)
    base = 4 * np.arange(len(P))[:, None]  # [N, 1]
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=1).reshape(-1, 3)  # [2N, 3]
    return world.reshape(-1, 3).float().numpy(), faces


def _quads_trace(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, name: str,
                 frames: np.ndarray | None) -> go.Mesh3d:  # fmt: skip
    """Flat, unlit quads (each face exactly its cell's colour: no shading changes what is shown)."""
    hover = "z (depth from the source) %{z:.2f} m<extra></extra>"
    custom = None if frames is None else np.repeat(frames, 4)  # [4N] per vertex
    if frames is not None:
        hover = "from frame %{customdata}<br>" + hover
    return go.Mesh3d(
        x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
        facecolor=_hex_colors(np.repeat(colors, 2, axis=0)), flatshading=True, name=name, showlegend=True,
        lighting=dict(ambient=1.0, diffuse=0.0, specular=0.0, roughness=1.0, fresnel=0.0), customdata=custom,
        hovertemplate=hover,
    )


def source_view(lo: np.ndarray, hi: np.ndarray, target_depth: float) -> dict:
    """A 3D scene layout whose camera starts at the source camera (the world origin, world = source
    camera frame) looking down +z at ``target_depth``, y down on screen: axis ranges ``[lo, hi]``
    ([3] each, world) drawn to scale (``aspectmode="manual"``), so that a world point maps to plotly's
    normalized scene coordinates as ``(v - mid) / (hi - lo) * aspectratio``."""
    span = np.maximum(hi - lo, 1e-6)  # [3]
    ratio = span / span.max()  # [3] equal scale on every axis
    mid = 0.5 * (lo + hi)

    def norm(v):
        return {a: float((v[i] - mid[i]) / span[i] * ratio[i]) for i, a in enumerate("xyz")}

    return dict(
        aspectmode="manual", aspectratio=dict(zip("xyz", map(float, ratio))),
        xaxis=dict(range=[float(lo[0]), float(hi[0])], title="x (right)", nticks=5),
        yaxis=dict(range=[float(lo[1]), float(hi[1])], title="y (down)", nticks=5),
        zaxis=dict(range=[float(lo[2]), float(hi[2])], title="z (forward)", nticks=5),
        camera=dict(eye=norm(np.zeros(3)), center=norm(np.array([0.0, 0.0, target_depth])), up=dict(x=0, y=-1, z=0),
                    projection=dict(type="perspective")),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- cameras
def frustum_segments(cameras: Cameras, scale: float) -> np.ndarray:  # -> [N, 8, 2, 3] world segments
    """Eight edges per camera: apex to the four image corners at depth ``scale``, and the rectangle."""
    if not (scale > 0):
        raise ValueError(f"frustum scale must be positive, got {scale}")
    W, H = cameras.width, cameras.height
    corners_px = torch.tensor([[0.0, 0.0, 1.0], [W, 0.0, 1.0], [W, H, 1.0], [0.0, H, 1.0]])  # [4, 3] continuous
    rays = torch.linalg.solve(cameras.K.double()[:, None], corners_px.double()[None, :, :, None])[..., 0]  # [N, 4, 3]
    corners_cam = rays / rays[..., 2:3] * scale  # [N, 4, 3] at depth z = scale
    world_from_cam = cameras.world_from_cam.double()  # [N, 4, 4]
    corners = torch.einsum("nij,nkj->nki", world_from_cam[:, :3, :3], corners_cam) + world_from_cam[:, None, :3, 3]
    apex = world_from_cam[:, :3, 3]  # [N, 3]
    segs = []
    for i in range(4):
        segs.append(torch.stack([apex, corners[:, i]], dim=1))  # [N, 2, 3]
    for i in range(4):
        segs.append(torch.stack([corners[:, i], corners[:, (i + 1) % 4]], dim=1))
    return torch.stack(segs, dim=1).float().numpy()  # [N, 8, 2, 3]


def _segments_trace(segments: np.ndarray, color: str, width: float, name: str) -> go.Scatter3d:
    """One line trace for many segments ``[S, 2, 3]``, separated by ``None`` gaps."""
    xyz: list[list] = [[], [], []]
    for a, b in segments.reshape(-1, 2, 3):  # [S, 2, 3]
        for axis in range(3):
            xyz[axis] += [round(float(a[axis]), 5), round(float(b[axis]), 5), None]
    return go.Scatter3d(
        x=xyz[0], y=xyz[1], z=xyz[2], mode="lines", line=dict(color=color, width=width), name=name, hoverinfo="skip"
    )


def _auto_frustum_scale(points: np.ndarray, centers: np.ndarray) -> float:
    """5% of the robust (2..98 percentile) scene diagonal; 0.1 for a scene of one point."""
    cloud = np.concatenate([points.reshape(-1, 3), centers.reshape(-1, 3)])  # [N + V, 3]
    lo, hi = np.percentile(cloud, [2.0, 98.0], axis=0)
    diag = float(np.linalg.norm(hi - lo))
    return 0.05 * diag if diag > 1e-9 else 0.1


def frustum_indices(num_cameras: int, max_frusta: int) -> list[int]:
    """Which cameras get a frustum: every ``k``-th (``k`` the smallest step giving at most
    ``max_frusta``), and always the last."""
    if max_frusta < 2:
        raise ValueError(f"max_frusta must be at least 2, got {max_frusta}")
    step = max(1, int(np.ceil((num_cameras - 1) / (max_frusta - 1)))) if num_cameras > 1 else 1
    keep = list(range(0, num_cameras, step))
    return keep if keep[-1] == num_cameras - 1 else keep + [num_cameras - 1]


def _camera_traces(cameras: Cameras, source_index: int, scale: float, max_frusta: int = 12) -> list[go.Scatter3d]:
    if not (-len(cameras) <= source_index < len(cameras)):
        raise ValueError(f"source_index {source_index} out of range for {len(cameras)} cameras")
    shown = frustum_indices(len(cameras), max_frusta)
    segments = frustum_segments(cameras[torch.tensor(shown)], scale)  # [V', 8, 2, 3]
    source = frustum_segments(cameras[source_index : source_index + 1 or None], scale)  # [1, 8, 2, 3]
    centers = cameras.centers.detach().cpu().float().numpy()  # [V, 3]
    every = shown[1] - shown[0] if len(shown) > 1 else 1
    name = f"frusta ({len(shown)} of {len(cameras)} frames{f', one every {every}' if every > 1 else ''})"
    return [
        _segments_trace(segments, PATH_COLOR, 2, name),
        _segments_trace(source, SOURCE_COLOR, 6, "source camera"),
        go.Scatter3d(
            x=centers[:, 0], y=centers[:, 1], z=centers[:, 2], mode="lines+markers",
            line=dict(color=PATH_COLOR, width=4), marker=dict(size=3, color=PATH_COLOR),
            name="trajectory", customdata=np.arange(len(cameras)),
            hovertemplate="camera of frame %{customdata}<br>x %{x:.2f} m, y %{y:.2f} m, z %{z:.2f} m<extra></extra>",
        ),
    ]


def _scene_layout(title: str, uirevision: str) -> dict:
    return dict(
        title=dict(text=title),
        uirevision=uirevision,
        scene=dict(
            aspectmode="data", camera=SCENE_CAMERA, uirevision=uirevision,
            xaxis_title="x (right)", yaxis_title="y (down)", zaxis_title="z (forward)",
        ),
        margin=dict(l=0, r=0, t=40, b=0),
        legend=dict(x=0.0, y=1.0, bgcolor="rgba(255,255,255,0.6)"),
        template="plotly_white",
    )


def _points_trace(points: np.ndarray, colors: np.ndarray, name: str, size: float, visible=True,
                  frames: np.ndarray | None = None) -> go.Scatter3d:  # fmt: skip
    """Points with hover: the frame each came from (when known) and its depth z in the world frame
    (world = the source camera, so z is the depth seen from the source)."""
    hover = "z (depth from the source) %{z:.2f} m<br>x %{x:.2f} m, y %{y:.2f} m"
    if frames is not None:
        hover = "from frame %{customdata}<br>" + hover
    return go.Scatter3d(
        x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="markers",
        marker=dict(size=size, color=_hex_colors(colors), line=dict(width=0)),
        name=name, visible=visible, customdata=frames, hovertemplate=hover + "<extra></extra>",
    )


# ---------------------------------------------------------------------------------------- figures
def cache_figure(
    points: Tensor | np.ndarray,
    colors: Tensor | np.ndarray,
    cameras: Cameras | None = None,
    source_index: int = 0,
    max_points: int = 60000,
    frustum_scale: float | None = None,
    title: str = "Latent point cache",
    *,
    point_size: float | None = None,
    frames: Tensor | np.ndarray | None = None,
    max_frusta: int = 12,
    uirevision: str = "mirage-cache",
    cells: tuple[Tensor, Tensor, int] | None = None,
    pixel_cloud: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None,
    from_source: bool = False,
) -> go.Figure:
    """The point cache ``points [N, 3]`` coloured by ``colors uint8 [N, 3]``, with the camera path.

    Traces, in order: the cache (hover: the frame each came from, ``frames [N]``, and its depth) as
    markers, or with ``cells = (cam_from_world [N, 4, 4], K [N, 3, 3], stride)`` (each point's camera
    and the latent stride) as its cells' footprints (``cell_quads``); with ``pixel_cloud = (points
    [M, 3], colors uint8 [M, 3])`` the pixel memory's points, hidden until picked in the legend; frusta
    of at most ``max_frusta`` cameras (``frustum_indices``, one trace); the source frustum (thicker,
    red); the trajectory through every camera centre (hover: its frame). Above ``max_points`` points a
    fixed random subsample is shown and the title says how many of how many. ``point_size`` None:
    from the density (``auto_point_size``). ``from_source``: the view starts at the source camera
    (``source_view``; world = source camera frame). Figures with the same ``uirevision`` keep the
    user's view when redrawn.
    """
    P, Cc = _check_points(points, colors)
    keep = subsample_indices(len(P), max_points)
    F = None if frames is None else _numpy(frames, np.int64)[keep]
    size = auto_point_size(len(keep)) if point_size is None else point_size
    full_title = f"{title} — {len(keep):,} of {len(P):,} points shown"
    fig = go.Figure(layout=_scene_layout(full_title, uirevision))
    if cells is None:
        fig.add_trace(_points_trace(P[keep], Cc[keep], "points", size, frames=F))
    else:
        cam_from_world, K, stride = cells
        idx = torch.from_numpy(keep)
        vertices, faces = cell_quads(P[keep], cam_from_world[idx], K[idx], stride)
        fig.add_trace(_quads_trace(vertices, faces, Cc[keep], "latent cells (each cell's footprint)", F))
    shown = [P[keep]]
    if pixel_cloud is not None:
        Q, Qc = _check_points(*pixel_cloud)
        some = subsample_indices(len(Q), max_points)
        fig.add_trace(_points_trace(Q[some], Qc[some], f"pixel memory ({len(some):,} of {len(Q):,} points)",
                                    max(1.0, auto_point_size(len(some))), visible="legendonly"))  # fmt: skip
    if cameras is not None:
        centers = cameras.centers.detach().cpu().float().numpy()
        scale = frustum_scale if frustum_scale is not None else _auto_frustum_scale(P[keep], centers)
        for trace in _camera_traces(cameras, source_index, scale, max_frusta):
            fig.add_trace(trace)
        shown.append(centers)
    if from_source:
        cloud = np.concatenate(shown)  # [N + V, 3]
        lo, hi = cloud.min(axis=0), cloud.max(axis=0)  # everything stays in view
        pad = 0.05 * (hi - lo) + 1e-3
        lo, hi = np.minimum(lo - pad, 0.0), np.maximum(hi + pad, 0.0)  # the source camera (the origin) inside
        fig.update_layout(scene=source_view(lo, hi, float(np.median(P[keep][:, 2]))), margin=dict(l=0, r=0, t=40, b=30),
                          legend=dict(orientation="h", x=0.0, y=0.0, yanchor="top"))  # below: nothing covers the picture
    return fig


def cache_growth_figure(
    points: Tensor | np.ndarray,
    colors: Tensor | np.ndarray,
    counts: Sequence[int],
    cameras: Cameras | None = None,
    source_index: int = 0,
    max_points: int = 60000,
    frustum_scale: float | None = None,
    title: str = "Cache growth",
    *,
    point_size: float | None = None,
    frames: Tensor | np.ndarray | None = None,
    max_frusta: int = 12,
    uirevision: str = "mirage-growth",
) -> go.Figure:
    """The cache as it grew: ``points [N, 3]`` / ``colors [N, 3]`` of an append-only cache and the
    cumulative point ``counts`` after each step (``[s["num_points"] for s in memory.size_history]``;
    step 0 is the image, step ``c`` chunk ``c``: ``chunk_label``).

    One point trace per step holds the points that step added (subsampled once over the whole
    cache, so nothing is sent twice); slider step ``s`` shows traces ``0..s``. Camera traces, if
    any, come after the point traces and stay visible.
    """
    P, Cc = _check_points(points, colors)
    counts = [int(c) for c in counts]
    if not counts or any(b < a for a, b in zip([0] + counts, counts)) or counts[-1] != len(P):
        raise ValueError(f"counts must be non-decreasing and end at the number of points {len(P)}, got {counts}")
    keep = subsample_indices(len(P), max_points)  # [M] sorted
    bounds = np.searchsorted(keep, [0] + counts)  # [S + 1] subsample index range of each step
    F = None if frames is None else _numpy(frames, np.int64)
    size = auto_point_size(len(keep)) if point_size is None else point_size
    fig = go.Figure(layout=_scene_layout(title, uirevision))
    S = len(counts)
    for s in range(S):
        idx = keep[bounds[s] : bounds[s + 1]]
        name = f"{chunk_label(s)} (+{counts[s] - (counts[s - 1] if s else 0):,})"
        fig.add_trace(_points_trace(P[idx], Cc[idx], name, size, visible=True, frames=None if F is None else F[idx]))
    camera_traces = []
    if cameras is not None:
        centers = cameras.centers.detach().cpu().float().numpy()
        scale = frustum_scale if frustum_scale is not None else _auto_frustum_scale(P[keep], centers)
        camera_traces = _camera_traces(cameras, source_index, scale, max_frusta)
        for trace in camera_traces:
            fig.add_trace(trace)
    steps = []
    for s in range(S):
        visible = [i <= s for i in range(S)] + [True] * len(camera_traces)
        label = chunk_label(s)
        steps.append(dict(
            method="update", label=label,
            args=[{"visible": visible}, {"title.text": f"{title} after {label}: {counts[s]:,} points ({len(keep):,} sampled in all)"}],
        ))
    fig.update_layout(
        sliders=[dict(active=S - 1, steps=steps, currentvalue=dict(prefix="after ", font=dict(size=13)),
                      pad=dict(t=10, b=10, l=20, r=20), x=0.05, len=0.9, font=dict(size=12))],
        title=dict(text=steps[-1]["args"][1]["title.text"]), margin=dict(l=0, r=0, t=50, b=90),
    )  # fmt: skip
    return fig


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (plotly's ``<br>``): plotly never
    wraps titles or tick labels itself, and a half-width panel cuts them."""
    return "<br>".join(textwrap.wrap(text, width)) or text


def _title(title: str, subtitle: str | None) -> dict:
    return dict(text=_wrap(title, 60)) | ({} if not subtitle else dict(subtitle=dict(text=_wrap(subtitle, 80))))


def _ordered_stages(entries: Sequence[dict[str, float]]) -> list[str]:
    seen = [s for e in entries for s in e]
    extra = list(dict.fromkeys(s for s in seen if s not in STAGE_ORDER))
    return [s for s in STAGE_ORDER if s in seen] + extra


def timing_figure(
    timings: dict[str, Sequence[dict[str, float]]],
    *,
    aggregate: Literal["total", "mean", "per_chunk"] = "total",
    stages: Sequence[str] | None = None,
    log_y: bool = False,
    title: str = "Time per stage",
    subtitle: str | None = None,
) -> go.Figure:
    """Stacked bars of seconds per stage for each method (names wrapped on the axis), the stages'
    legend below the bars, ``subtitle`` under the title (what the run was).

    timings: method -> one ``{stage: seconds}`` dict per chunk (a stage a method does not run is
    simply absent and counts 0). ``aggregate``: sum over chunks, mean per chunk, or one bar per
    (chunk, method) on a two-level x axis. One bar trace per stage (readout stages first, see
    ``STAGE_ORDER``), then a text trace ``"total"`` with each bar's total. ``log_y`` for readouts
    that differ by 100x.
    """
    if not timings:
        raise ValueError("timings is empty")
    if aggregate not in ("total", "mean", "per_chunk"):
        raise ValueError(f"aggregate must be 'total', 'mean' or 'per_chunk', got {aggregate!r}")
    for method, entries in timings.items():
        if len(entries) == 0:
            raise ValueError(f"method {method!r} has no timing entries")
        for c, entry in enumerate(entries):
            for stage, sec in entry.items():
                if not np.isfinite(sec) or sec < 0:
                    raise ValueError(f"timing {method!r} chunk {c} stage {stage!r} is not a time: {sec}")
    all_entries = [e for entries in timings.values() for e in entries]
    stages = list(stages) if stages is not None else _ordered_stages(all_entries)
    methods = list(timings)
    labels = {m: _wrap(m, 16) for m in methods}  # the axis of a half-width panel holds about 16 characters
    if aggregate == "per_chunk":
        chunks = max(len(v) for v in timings.values())
        bars = [(c, m) for c in range(chunks) for m in methods if c < len(timings[m])]
        x = [[chunk_label(c + 1) for c, _ in bars], [labels[m] for _, m in bars]]  # two-level category axis, chunks from 1
        values = {s: [float(timings[m][c].get(s, 0.0)) for c, m in bars] for s in stages}
    else:
        x = [labels[m] for m in methods]
        div = {m: (len(timings[m]) if aggregate == "mean" else 1) for m in methods}
        values = {s: [sum(float(e.get(s, 0.0)) for e in timings[m]) / div[m] for m in methods] for s in stages}
    fig = go.Figure()
    for s in stages:
        fig.add_trace(go.Bar(x=x, y=values[s], name=STAGE_NAMES.get(s, s), marker_color=STAGE_COLORS.get(s)))
    totals = [sum(values[s][i] for s in stages) for i in range(len(values[stages[0]]) if stages else 0)]
    fig.add_trace(go.Scatter(
        x=x, y=totals, mode="text", text=[f"{t:.3g} s" for t in totals], textposition="top center",
        name="total", showlegend=False, hoverinfo="skip", cliponaxis=False,
    ))
    unit = {"total": "seconds (sum over chunks)", "mean": "seconds per chunk", "per_chunk": "seconds"}[aggregate]
    yaxis = dict(title=unit, type="log" if log_y else "linear")
    top = max(totals, default=0.0)
    if not log_y and top > 0:
        yaxis["range"] = [0, 1.18 * top]  # room above the tallest bar for its total
    fig.update_layout(
        barmode="stack", title=_title(title, subtitle), yaxis=yaxis, template="plotly_white",
        legend=dict(orientation="h", x=0.0, yref="container", y=0.0, yanchor="bottom", traceorder="normal",
                    entrywidth=0.33, entrywidthmode="fraction"),  # at the bottom, clear of tilted tick labels
        margin=dict(t=90 if subtitle else 60, b=40), xaxis=dict(automargin=True),
    )
    return fig


def cache_size_figure(
    sizes: dict[str, Sequence[int]],
    *,
    reference: str | None = None,
    log_y: bool = False,
    title: str = "Cache size",
) -> go.Figure:
    """Cache size in MiB after each step (``chunk_label``: the image, then chunk 1, 2, ...) for each method.

    Every other method's size at the last step is annotated as a ratio to ``reference`` (default:
    the method with the smallest last size), e.g. ``"rgb = 36.2x latent"``; the ratios are also in
    ``fig.layout.meta["ratios"]``.
    """
    if not sizes:
        raise ValueError("sizes is empty")
    lengths = {m: len(v) for m, v in sizes.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"every method needs the same, non-zero number of steps, got {lengths}")
    for m, v in sizes.items():
        if any(int(b) != b or b < 0 for b in v):
            raise ValueError(f"sizes of {m!r} must be non-negative byte counts, got {list(v)}")
    last = {m: int(v[-1]) for m, v in sizes.items()}
    if reference is None:
        reference = min(last, key=last.get)
    elif reference not in sizes:
        raise ValueError(f"reference {reference!r} is not one of {list(sizes)}")
    fig = go.Figure()
    labels = [chunk_label(s) for s in range(len(next(iter(sizes.values()))))]
    for m, v in sizes.items():
        fig.add_trace(go.Scatter(
            x=labels, y=[int(b) / MiB for b in v], mode="lines+markers", name=m,
            hovertemplate="after %{x}: %{y:.3f} MiB<extra>" + m + "</extra>",
        ))
    step = labels[-1]
    ratios = {}
    for m in sizes:
        if m == reference:
            continue
        if last[reference] == 0:
            text = f"{m}: ratio undefined ({reference} is empty)"
        else:
            ratios[m] = last[m] / last[reference]
            text = f"{m} = {ratios[m]:.1f}x {reference}"
        y = last[m] / MiB
        if log_y:  # annotations on a log axis are placed in log10 units
            y = float(np.log10(y)) if y > 0 else None
        fig.add_annotation(x=step, y=y, text=text, showarrow=True, arrowhead=2, ax=-60, ay=-30)
    fig.update_layout(
        title=_title(title, None), xaxis=dict(title="after", type="category", automargin=True),
        yaxis=dict(title="MiB", type="log" if log_y else "linear") | (dict(dtick="D2") if log_y else {}),  # 1, 2, 5 per decade
        template="plotly_white", legend=dict(orientation="h", x=0.0, y=-0.25, yanchor="top"),
        meta=dict(ratios=ratios, reference=reference),
    )
    return fig
