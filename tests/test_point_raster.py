"""PyTorch3D-style point rasterizer and Open3D-style voxel downsampling against slow references,
plus hand-checkable cases (edge of the disc, K truncation, ties, points behind the camera)."""

import math

import numpy as np
import pytest
import torch

import mirage.point_raster as point_raster
from mirage.geometry import project_points
from mirage.point_raster import rasterize_points, voxel_downsample


# ---------------------------------------------------------------------------------------- references
def reference_raster(points, features, cam_from_world, K, image_size, radius, points_per_pixel, background):
    """Per pixel, per point, from PyTorch3D's semantics: hit if the squared NDC distance from the pixel
    centre is < radius^2 (float32, same formula as the fast path so that edges are decided alike), the
    K hits nearest in (z, index), alpha = 1 - d2 / r2, front-to-back compositing, background only
    where nothing hit."""
    uv, z = project_points(points, K, cam_from_world)  # [V, N, 2], [V, N]
    V, N = z.shape
    H, W = image_size
    C = features.shape[1]
    f32 = np.float32
    pixel_ndc, r2 = f32(2.0 / min(H, W)), f32(radius) * f32(radius)
    bg = np.broadcast_to(np.asarray(background, dtype=np.float64), (C,))
    out = np.zeros((V, C, H, W))
    coverage, depth, count = np.zeros((V, H, W)), np.full((V, H, W), np.nan), np.zeros((V, H, W), dtype=np.int64)
    most_hits = 0  # the largest number of hits at one pixel, before the cut to K
    for v in range(V):
        for row in range(H):
            for col in range(W):
                hits = []
                for i in range(N):
                    zi, u, w = float(z[v, i]), float(uv[v, i, 0]), float(uv[v, i, 1])
                    if not (zi > 0 and math.isfinite(zi) and math.isfinite(u) and math.isfinite(w)):
                        continue  # behind or on the camera plane
                    dx = (f32(col) + f32(0.5) - f32(u)) * pixel_ndc
                    dy = (f32(row) + f32(0.5) - f32(w)) * pixel_ndc
                    d2 = dy * dy + dx * dx
                    if d2 < r2:
                        hits.append((zi, i, float(f32(1) - d2 / r2)))
                most_hits = max(most_hits, len(hits))
                hits = sorted(hits)[:points_per_pixel]  # by z, then index
                if not hits:
                    out[v, :, row, col] = bg
                    continue
                transmit = 1.0
                for _, i, alpha in hits:
                    out[v, :, row, col] += alpha * transmit * features[i].double().numpy()
                    transmit *= 1 - alpha
                coverage[v, row, col] = 1 - transmit
                depth[v, row, col] = hits[0][0]
                count[v, row, col] = len(hits)
    return out, coverage, depth, count, most_hits


def reference_voxel_downsample(points, features, voxel):
    """Open3D's VoxelDownSample with a dict: voxels start half a voxel below the minimum corner."""
    p, f = points.double().tolist(), features.double().tolist()
    start = [min(q[a] for q in p) - voxel / 2 for a in range(3)]
    cells = {}
    for q, g in zip(p, f):
        key = tuple(math.floor((q[a] - start[a]) / voxel) for a in range(3))
        cells.setdefault(key, []).append((q, g))
    keys = sorted(cells)
    mean_p = [[sum(q[a] for q, _ in cells[k]) / len(cells[k]) for a in range(3)] for k in keys]
    mean_f = [[sum(g[c] for _, g in cells[k]) / len(cells[k]) for c in range(features.shape[1])] for k in keys]
    return torch.tensor(mean_p, dtype=torch.float64), torch.tensor(mean_f, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- helpers
def pinhole(f, cx, cy):  # [1, 3, 3]
    return torch.tensor([[[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]])


def identity(views=1):  # [V, 4, 4]
    return torch.eye(4).expand(views, 4, 4).clone()


def assert_matches_reference(points, features, cam_from_world, K, image_size, radius, k, background):
    got = rasterize_points(points, features, cam_from_world, K, image_size, radius, k, background)
    out, coverage, depth, count, most_hits = reference_raster(
        points, features, cam_from_world, K, image_size, radius, k, background)  # fmt: skip
    np.testing.assert_allclose(got.features.numpy(), out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.coverage.numpy(), coverage, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got.depth.numpy(), depth.astype(np.float32))  # NaN where empty, both
    np.testing.assert_array_equal(got.count.numpy(), count)
    return got, most_hits


def random_scene(seed=0, n=40):
    """Points in front of (and some behind) two cameras looking at a 12 x 16 image."""
    g = torch.Generator().manual_seed(seed)
    cam = torch.stack([torch.rand(n, generator=g) * 2 - 1, torch.rand(n, generator=g) * 1.5 - 0.75,
                       torch.rand(n, generator=g) * 2 + 1], 1)  # fmt: skip  [n, 3] camera-0 points
    cam[:4, 2] *= -1  # behind the first camera
    cam[4:8] = cam[8:12] + torch.tensor([0.03, 0.02, 0.0])  # ties in z with overlapping discs
    features = torch.rand(n, 3, generator=g)  # [n, 3]
    second = identity()[0]
    angle = 0.1
    second[:3, :3] = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    second[:3, 3] = torch.tensor([0.2, -0.1, 0.3])
    cam_from_world = torch.stack([identity()[0], second])  # [2, 4, 4]
    K = torch.cat([pinhole(9.0, 8.0, 6.0), pinhole(10.0, 7.5, 6.5)])  # [2, 3, 3]
    return cam, features, cam_from_world, K


# ---------------------------------------------------------------------------------------- raster
@pytest.mark.parametrize("image_size", [(12, 16), (16, 12)])
def test_random_scene_matches_reference(image_size):
    points, features, cam_from_world, K = random_scene()
    got, most_hits = assert_matches_reference(points, features, cam_from_world, K, image_size, 0.3, 3, (0.2, 0.5, 0.9))
    assert most_hits > 3  # some pixel had more hits than K: the cut is exercised
    assert (got.count == 0).any() and (got.count == 3).any()
    assert (got.count[1] != got.count[0]).any()  # the two views differ


def test_chunks_merge_like_one_pass(monkeypatch):
    """Every point in its own chunk: the merge of kept lists gives exactly the one-pass result."""
    points, features, cam_from_world, K = random_scene(seed=1)
    whole = rasterize_points(points, features, cam_from_world, K, (12, 16), 0.3, 3, 0.5)
    monkeypatch.setattr(point_raster, "_SLOTS_PER_CHUNK", 1)
    chunked = rasterize_points(points, features, cam_from_world, K, (12, 16), 0.3, 3, 0.5)
    for name in ("features", "coverage", "depth", "count"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=0, equal_nan=True)
    single = rasterize_points(points, features, cam_from_world[1:], K[1:], (12, 16), 0.3, 3, 0.5)
    torch.testing.assert_close(single.features[0], whole.features[1], rtol=0, atol=0)  # views are independent


def test_disc_edge_and_non_square_radius():
    """8 x 16 pixels: one pixel is 2 / 8 NDC, so radius 0.5 NDC is 2 pixels on both axes. A point on
    the centre of pixel (8, 4) hits the 9 centres closer than 2 pixels, not those exactly 2 away."""
    point = torch.tensor([[0.0, 0.0, 2.0]])  # projects to (8.5, 4.5) exactly
    colour = torch.tensor([[1.0, 0.5, 0.25]])
    r = rasterize_points(point, colour, identity(), pinhole(4.0, 8.5, 4.5), (8, 16), radius=0.5, background=(0.2, 0.4, 0.6))
    expected = torch.zeros(8, 16, dtype=torch.long)
    expected[3:6, 7:10] = 1
    torch.testing.assert_close(r.count[0], expected)
    alpha = torch.zeros(8, 16)
    alpha[3:6, 7:10] = torch.tensor([[0.5, 0.75, 0.5], [0.75, 1.0, 0.75], [0.5, 0.75, 0.5]])  # 1 - d^2 / r^2
    torch.testing.assert_close(r.coverage[0], alpha, rtol=0, atol=1e-7)
    # covered pixels show alpha * colour, with no background mixed in; the others the background
    background = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    torch.testing.assert_close(r.features[0], torch.where(expected.bool(), alpha * colour[0, :, None, None], background))
    assert float(r.depth[0, 4, 8]) == 2.0 and r.depth[0][~expected.bool()].isnan().all()


def test_k_nearest_in_z_then_index():
    """Five points on pixel (2, 2)'s centre region; K = 2 keeps the two nearest in z, ties by index."""
    K = pinhole(4.0, 2.5, 2.5)
    offset = 0.5 / 4.0 * 2.0  # camera x giving half a pixel at z = 2
    points = torch.tensor([[0.0, 0.0, 4.0],  # far: cut
                           [offset, 0.0, 2.0],  # z tie, index 1: first; alpha 1 - (0.5 px)^2 / (1 px)^2 = 0.75
                           [0.0, 0.0, 3.0],  # cut
                           [0.0, 0.0, 2.0],  # z tie, index 3: second; alpha 1
                           [0.0, 0.0, 2.0]])  # z tie, index 4: cut by index  # fmt: skip
    colours = torch.eye(5)  # [5, 5] one channel per point
    r = rasterize_points(points, colours, identity(), K, (5, 5), radius=0.4, points_per_pixel=2)  # 1 px radius
    assert int(r.count[0, 2, 2]) == 2 and float(r.depth[0, 2, 2]) == 2.0
    torch.testing.assert_close(r.features[0, :, 2, 2], torch.tensor([0.0, 0.75, 0.0, 0.25, 0.0]))
    assert float(r.coverage[0, 2, 2]) == 1.0


def test_points_behind_or_on_the_camera_plane_are_skipped():
    points = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.0], [-1e-3, 0.0, -1e-2]])  # behind: project into the image
    r = rasterize_points(points, torch.ones(3, 1), identity(), pinhole(4.0, 2.5, 2.5), (5, 5), 0.4, background=0.3)
    assert int(r.count.sum()) == 0 and r.depth.isnan().all()
    torch.testing.assert_close(r.features, torch.full((1, 1, 5, 5), 0.3))
    torch.testing.assert_close(r.coverage, torch.zeros(1, 5, 5))


def test_empty_cloud_and_bad_input():
    r = rasterize_points(torch.zeros(0, 3), torch.zeros(0, 2), identity(2), pinhole(4, 2, 2).expand(2, 3, 3), (3, 4), 0.1)
    assert r.features.shape == (2, 2, 3, 4) and int(r.count.sum()) == 0 and float(r.features.abs().sum()) == 0
    good = dict(points=torch.zeros(2, 3), features=torch.zeros(2, 3), cam_from_world=identity(), K=pinhole(4, 2, 2),
                image_size=(3, 4))  # fmt: skip
    for change, message in [(dict(points=torch.zeros(2, 2)), "points"), (dict(features=torch.zeros(3, 3)), "features"),
                            (dict(K=pinhole(4, 2, 2).expand(2, 3, 3)), "K"), (dict(radius=0.0), "radius"),
                            (dict(points_per_pixel=0), "points_per_pixel"), (dict(background=(0.0, 1.0)), "background"),
                            (dict(image_size=(0, 4)), "image_size")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            rasterize_points(**{**good, **change})


# ---------------------------------------------------------------------------------------- voxels
def test_voxel_downsample_starts_half_a_voxel_below_the_minimum():
    """Voxel 0.5, minimum x = -1: voxels start at -1.25, so -0.75 opens the second voxel."""
    points = torch.tensor([[-1.0, 0.0, 0.0], [-0.75, 0.0, 0.0], [-0.8, 0.0, 0.0], [0.3, 0.0, 0.0]])
    features = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    p, f = voxel_downsample(points, features, 0.5)
    torch.testing.assert_close(p, torch.tensor([[-0.9, 0.0, 0.0], [-0.75, 0.0, 0.0], [0.3, 0.0, 0.0]]))
    torch.testing.assert_close(f, torch.tensor([[2.0], [2.0], [4.0]]))


def test_voxel_downsample_matches_reference():
    g = torch.Generator().manual_seed(0)
    grid = torch.randint(-8, 8, (300, 3), generator=g).float() * 0.25 - 0.25  # on the voxel boundaries (voxel 0.5)
    noisy = torch.rand(200, 3, generator=g) * 4 - 2.5  # negative and positive coordinates
    points = torch.cat([grid, noisy])  # [500, 3]
    features = torch.rand(500, 4, generator=g)
    for voxel in (0.5, 0.3):
        p, f = voxel_downsample(points, features, voxel)
        ref_p, ref_f = reference_voxel_downsample(points, features, voxel)
        assert p.dtype == points.dtype and f.dtype == features.dtype
        assert 30 < len(p) < len(points)  # voxels do merge points
        torch.testing.assert_close(p.double(), ref_p, rtol=0, atol=1e-6)
        torch.testing.assert_close(f.double(), ref_f, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="voxel"):
        voxel_downsample(points, features, 0.0)
