"""Tests for mirage/plotting.py: PCA colours, cache / growth figures with camera frusta, timing and
cache-size charts; every figure must serialise to JSON."""

import json

import numpy as np
import pytest
import torch

from mirage.cameras import Camera, Cameras, look_at
from mirage.plotting import (
    cache_figure,
    cache_growth_figure,
    cache_size_figure,
    frustum_segments,
    pca_colors,
    timing_figure,
)


def path_cameras(n=5, width=64, height=36):
    eyes = torch.stack([torch.tensor([0.3 * i, 0.0, 0.2 * i]) for i in range(n)])  # [n, 3]
    targets = eyes + torch.tensor([0.0, 0.0, 1.0])
    cam_from_world = look_at(eyes, targets)  # [n, 4, 4]
    K = Camera.from_fov(width, height, 60.0).K
    return Cameras(K.expand(n, 3, 3), cam_from_world, width, height)


def segments_of(trace):  # list of ((x, y, z), (x, y, z)) from a None-separated line trace
    xs, ys, zs = list(trace.x), list(trace.y), list(trace.z)
    segs, run = [], []
    for p in zip(xs, ys, zs):
        if p[0] is None:
            segs.append(tuple(run))
            run = []
        else:
            run.append(p)
    assert not run
    return segs


# ---------------------------------------------------------------------------------------- colours
def test_pca_colors_deterministic_range_and_sign():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 2.0, 0.5])  # 3 known directions
    mixing = torch.linalg.qr(torch.randn(48, 48, generator=g))[0][:3]  # [3, 48] orthonormal rows
    feats = latent @ mixing + 0.01 * torch.randn(500, 48, generator=g)  # [500, 48]
    c1 = pca_colors(feats)
    c2 = pca_colors(feats.flip(0)).copy()[::-1]  # order of points does not matter
    assert c1.dtype == np.uint8 and c1.shape == (500, 3)
    assert np.array_equal(c1, c2)
    bf16 = pca_colors(feats.to(torch.bfloat16))  # latent dtype accepted, same colours up to rounding
    assert np.abs(bf16.astype(int) - c1.astype(int)).mean() < 2
    for ch in range(3):  # robust normalisation spans the range
        assert c1[:, ch].min() == 0 and c1[:, ch].max() == 255
    # channel 0 follows the strongest latent direction (up to the sign convention)
    corr = np.corrcoef(c1[:, 0].astype(float), latent[:, 0].numpy())[0, 1]
    assert abs(corr) > 0.95
    # -features has the same basis and negated scores: complementary colours
    flipped = pca_colors(-feats)
    assert np.abs(flipped.astype(int) + c1.astype(int) - 255).max() <= 1


def test_pca_colors_sign_convention(monkeypatch):
    """Whatever signs the eigensolver returns, the largest-|loading| rule gives the same colours."""
    feats = torch.randn(200, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(3, 0.1, 16)
    reference = pca_colors(feats)
    eigh = np.linalg.eigh

    def eigh_flipped(a):
        w, v = eigh(a)
        return w, v * np.where(np.arange(v.shape[1]) % 2 == 0, -1.0, 1.0)  # flip every other vector

    monkeypatch.setattr(np.linalg, "eigh", eigh_flipped)
    assert np.array_equal(pca_colors(feats), reference)


def test_pca_colors_degenerate():
    assert pca_colors(np.zeros((0, 8))).shape == (0, 3)
    const = pca_colors(np.ones((10, 8)))
    assert (const == 128).all()
    two = pca_colors(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, -1.0]]))  # C = 2 -> one component
    assert (two[:, 1:] == 128).all() and two[:, 0].min() == 0 and two[:, 0].max() == 255
    with pytest.raises(ValueError, match="N, C"):
        pca_colors(np.zeros(5))


# ---------------------------------------------------------------------------------------- frusta
def test_frustum_segments_geometry():
    cam = Camera(torch.tensor([[2.0, 0, 2], [0, 2, 1], [0, 0, 1]]), torch.eye(4), 4, 2).batch()
    segs = frustum_segments(cam, 3.0)  # [1, 8, 2, 3]
    assert segs.shape == (1, 8, 2, 3)
    apex_edges = segs[0, :4]
    assert np.allclose(apex_edges[:, 0], 0.0)  # identity camera: apex at the origin
    corners = apex_edges[:, 1]  # pixel corners (0,0),(4,0),(4,2),(0,2) at depth 3
    assert np.allclose(corners, [[-3, -1.5, 3], [3, -1.5, 3], [3, 1.5, 3], [-3, 1.5, 3]])
    # a translated camera: world_from_cam moves the apex to the camera centre
    T = look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
    moved = frustum_segments(Cameras(cam.K, T[None], 4, 2), 3.0)
    assert np.allclose(moved[0, 0, 0], [1, 2, 3], atol=1e-6)
    assert np.allclose(moved[0, :4, 1], corners + np.array([1, 2, 3]), atol=1e-5)


def test_cache_figure_traces_and_counts():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(1000, 3, generator=g) + torch.tensor([0, 0, 5.0])
    colors = pca_colors(torch.randn(1000, 48, generator=g))
    cams = path_cameras(5)
    frames = torch.arange(1000) % 7
    fig = cache_figure(points, colors, cams, source_index=0, max_points=300, frames=frames)
    names = [t.name for t in fig.data]
    assert names == ["points", "frusta (5 of 5 frames)", "source camera", "trajectory"]
    assert "from frame %{customdata}" in fig.data[0].hovertemplate and "depth" in fig.data[0].hovertemplate
    assert np.isin(np.asarray(fig.data[0].customdata), np.arange(7)).all()
    assert "frame %{customdata}" in fig.data[3].hovertemplate and list(fig.data[3].customdata) == [0, 1, 2, 3, 4]
    pts = fig.data[0]
    assert len(pts.x) == 300 and len(pts.marker.color) == 300
    assert "300 of 1,000" in fig.layout.title.text
    assert len(segments_of(fig.data[1])) == 8 * 5
    assert len(segments_of(fig.data[2])) == 8
    assert fig.data[2].line.width > fig.data[1].line.width and fig.data[2].line.color != fig.data[1].line.color
    assert np.allclose(np.array([fig.data[3].x, fig.data[3].y, fig.data[3].z]).T, cams.centers.numpy(), atol=1e-6)
    # the subsample is deterministic and a subset of the input
    again = cache_figure(points, colors, cams, max_points=300)
    assert np.array_equal(np.asarray(again.data[0].x), np.asarray(pts.x))
    assert np.isin(np.asarray(pts.x), points[:, 0].numpy()).all()
    scene = fig.layout.scene
    assert (scene.camera.up.x, scene.camera.up.y, scene.camera.up.z) == (0, -1, 0)
    assert scene.aspectmode == "data" and fig.layout.uirevision is not None
    js = fig.to_json()
    json.loads(js)
    assert len(js) < 200_000


def test_cache_figure_without_cameras_and_all_points():
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    colors = np.full((50, 3), 200, np.uint8)
    fig = cache_figure(points, colors, None)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 50 and "50 of 50" in fig.layout.title.text
    assert fig.data[0].marker.color[0] == "#c8c8c8"
    with pytest.raises(ValueError, match="uint8"):
        cache_figure(points, colors.astype(np.float32), None)
    with pytest.raises(ValueError, match="source_index"):
        cache_figure(points, colors, path_cameras(3), source_index=3)


def test_frustum_scale_auto_follows_scene_extent():
    cams = path_cameras(2)
    colors = np.zeros((200, 3), np.uint8)
    pts = np.random.default_rng(1).uniform(-1, 1, size=(200, 3)).astype(np.float32)
    small = cache_figure(pts, colors, cams)
    big = cache_figure(pts * 10, colors, cams)
    def depth_of_first_corner(fig):
        seg = segments_of(fig.data[2])[0]  # source camera (identity) apex -> corner
        return seg[1][2]
    assert depth_of_first_corner(big) > 5 * depth_of_first_corner(small)
    fixed = cache_figure(pts, colors, cams, frustum_scale=0.7)
    assert depth_of_first_corner(fixed) == pytest.approx(0.7, abs=1e-5)


def test_cache_growth_figure_slider():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(600, 3, generator=g)
    colors = np.zeros((600, 3), np.uint8)
    counts = [100, 250, 600]
    fig = cache_growth_figure(points, colors, counts, path_cameras(4), max_points=10_000)
    assert [len(t.x) for t in fig.data[:3]] == [100, 150, 350]  # points added per step
    assert len(fig.data) == 3 + 3  # + frusta, source, trajectory
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3
    assert steps[0].args[0]["visible"] == [True, False, False, True, True, True]
    assert steps[2].args[0]["visible"] == [True] * 6
    assert [st.label for st in steps] == ["image", "chunk 1", "chunk 2"]
    assert [t.name for t in fig.data[:3]] == ["image (+100)", "chunk 1 (+150)", "chunk 2 (+350)"]
    sub = cache_growth_figure(points, colors, counts, None, max_points=60)
    assert sum(len(t.x) for t in sub.data) == 60
    json.loads(sub.to_json())
    with pytest.raises(ValueError, match="counts"):
        cache_growth_figure(points, colors, [100, 50, 600])
    with pytest.raises(ValueError, match="counts"):
        cache_growth_figure(points, colors, [100, 500])


# --------------------------------------------------------------------------------- bar and lines
def test_timing_figure_totals_and_stages():
    timings = {
        "latent memory": [{"project": 0.001, "denoise": 6.0, "decode": 1.7}, {"project": 0.002, "denoise": 6.2, "decode": 1.7, "update": 0.01}],
        "RGB point cloud": [{"rasterize": 0.04, "encode": 0.5, "denoise": 6.0, "decode": 1.7}] * 2,
    }
    fig = timing_figure(timings)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["project", "rasterize", "encode", "denoise", "decode", "update"]
    assert list(bars[0].x) == ["latent memory", "RGB point cloud"]
    assert bars[0].y == pytest.approx((0.003, 0.0))
    assert bars[2].y == pytest.approx((0.0, 1.0))
    total = fig.data[-1]
    assert total.name == "total" and total.mode == "text"
    assert total.y == pytest.approx((0.003 + 12.2 + 3.4 + 0.01, 2 * (0.04 + 0.5 + 6.0 + 1.7)))
    assert fig.layout.barmode == "stack"
    mean = timing_figure(timings, aggregate="mean", stages=["project", "rasterize", "encode"], log_y=True)
    assert mean.layout.yaxis.type == "log"
    assert mean.data[-1].y == pytest.approx((0.0015, 0.54))
    per = timing_figure(timings, aggregate="per_chunk")
    assert len(per.data[0].x) == 2 and list(per.data[0].x[1]) == ["latent memory", "RGB point cloud"] * 2
    assert list(per.data[0].x[0]) == ["chunk 1", "chunk 1", "chunk 2", "chunk 2"]  # chunks from 1, as everywhere
    assert per.data[-1].cliponaxis is False and per.layout.yaxis.range[1] > max(per.data[-1].y)  # totals not cut
    json.loads(per.to_json())
    long = timing_figure({"Latent memory (Mirage)": [{"denoise": 1.0}]}, title="T", subtitle="what the run was")
    assert list(long.data[0].x) == ["Latent memory<br>(Mirage)"]  # a half-width panel cuts longer tick labels
    assert long.layout.title.subtitle.text == "what the run was"
    assert long.layout.legend.yref == "container" and long.layout.legend.y == 0  # below the tilted labels
    with pytest.raises(ValueError, match="denoise"):
        timing_figure({"m": [{"denoise": -1.0}]})
    with pytest.raises(ValueError, match="empty"):
        timing_figure({})


def test_cache_size_figure_ratio():
    MiB = 2**20
    sizes = {"latent memory": [int(0.46 * MiB), int(0.9 * MiB), int(2.25 * MiB)],
             "RGB point cloud": [int(8.76 * MiB), int(26.3 * MiB), int(43.8 * MiB)]}
    fig = cache_size_figure(sizes)
    assert list(fig.data[0].y) == pytest.approx([0.46, 0.9, 2.25], abs=1e-6)
    ratio = sizes["RGB point cloud"][-1] / sizes["latent memory"][-1]
    assert fig.layout.meta["ratios"]["RGB point cloud"] == pytest.approx(ratio)
    assert fig.layout.meta["reference"] == "latent memory"
    (ann,) = fig.layout.annotations
    assert ann.text == f"RGB point cloud = {ratio:.1f}x latent memory" and ann.text.endswith("19.5x latent memory")
    assert ann.x == "chunk 2" and ann.y == pytest.approx(sizes["RGB point cloud"][-1] / MiB)
    assert list(fig.data[0].x) == ["image", "chunk 1", "chunk 2"]  # the one chunk numbering of every figure
    log = cache_size_figure(sizes, log_y=True, reference="RGB point cloud")
    assert log.layout.annotations[0].y == pytest.approx(np.log10(2.25), abs=1e-3)
    assert log.layout.meta["ratios"]["latent memory"] == pytest.approx(1 / ratio)
    assert log.layout.yaxis.dtick == "D2" and fig.layout.yaxis.dtick is None  # log: 1, 2, 5 labelled per decade
    json.loads(log.to_json())
    with pytest.raises(ValueError, match="same"):
        cache_size_figure({"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="reference"):
        cache_size_figure(sizes, reference="nope")


def test_point_size_follows_density_and_frusta_are_subsampled():
    from mirage.plotting import auto_point_size, frustum_indices

    assert auto_point_size(576) == pytest.approx(10.0)  # one 512-px image's latent cells: a visible mosaic
    assert auto_point_size(60_000) == 2.0 and auto_point_size(1) == 12.0  # clipped
    assert auto_point_size(100) > auto_point_size(5000)
    assert frustum_indices(65, 12) == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 64]
    assert frustum_indices(5, 12) == [0, 1, 2, 3, 4] and frustum_indices(1, 12) == [0]
    fig = cache_figure(np.zeros((10, 3), np.float32) + [0, 0, 5], np.zeros((10, 3), np.uint8), path_cameras(65))
    assert fig.data[1].name == "frusta (12 of 65 frames, one every 6)" and len(segments_of(fig.data[1])) == 8 * 12
    assert len(fig.data[3].x) == 65  # the trajectory keeps every camera


def test_cell_quads_are_the_cells_pixel_squares_at_their_depth():
    """Seen from the camera that stored them, a cell's quad covers exactly its ``stride x stride``
    pixel square, at the cell's depth, whichever way the camera looks."""
    from mirage.cameras import Camera
    from mirage.geometry import project_points
    from mirage.plotting import cell_quads

    cam = Camera.from_fov(96, 64, 60.0, look_at(torch.tensor([[0.5, -0.2, 0.1]]), torch.tensor([[1.0, 0.3, 4.0]]))[0])
    s, rows, cols = 16, torch.tensor([0, 1, 3]), torch.tensor([0, 4, 5])
    uv = torch.stack([(cols + 0.5) * s, (rows + 0.5) * s], -1).double()  # [3, 2] cell centres in pixels
    z = torch.tensor([2.0, 3.5, 7.0], dtype=torch.float64)  # [3]
    cam_pts = torch.cat([(uv - cam.K[:2, 2].double()) / cam.K.diagonal()[:2].double() * z[:, None], z[:, None]], 1)  # [3, 3]
    world = (cam_pts - cam.cam_from_world[:3, 3].double()) @ cam.cam_from_world[:3, :3].double()  # [3, 3] R^T (p - t)
    verts, faces = cell_quads(world.float(), cam.cam_from_world.expand(3, 4, 4), cam.K.expand(3, 3, 3), s)
    assert verts.shape == (12, 3) and faces.shape == (6, 3) and faces.max() == 11
    px, depth = project_points(torch.from_numpy(verts).double(), cam.K[None].double(), cam.cam_from_world[None].double())
    expected = torch.stack([torch.stack([cols * s, rows * s], -1), torch.stack([(cols + 1) * s, rows * s], -1),
                            torch.stack([(cols + 1) * s, (rows + 1) * s], -1), torch.stack([cols * s, (rows + 1) * s], -1)],
                           1).reshape(12, 2).double()  # fmt: skip
    torch.testing.assert_close(px[0].double(), expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(depth[0].double(), z.repeat_interleave(4), atol=1e-5, rtol=0)
