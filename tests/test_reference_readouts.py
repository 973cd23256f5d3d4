"""The readouts the trained branches were trained on (``MemoryConfig(readout=...)``, chosen by
``mirage.families``), against slow references written here from the reference code's arithmetic.

Mirage (microsoft/LatentSpatialMemory b2cd738, src/mirage/latent_point_cloud.py): depth resampled
bilinearly to the latent grid with holes as 0; intrinsics = the OpenCV ones (pixel centres at
integers) scaled by 1/16; every cell with depth > 0 back-projected at integer (u, v) and appended;
a read projects each point, rounds to a cell, drops it outside the grid or behind the camera, and the
closest point wins (ties: the lowest index here, where the reference's index_put is undefined)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mirage.cameras import Camera, Cameras
from mirage.chunks import ChunkParts, identity_denoise, readout_depth, run_chunks, start_memory
from mirage.codecs import OfflineCodec
from mirage.families import FAMILIES
from mirage.frames import Chunking
from mirage.memory import LatentSpatialMemory, MemoryConfig, Observation, make_memory
from mirage.paths import make_preset_path

W, H, S = 320, 192, 16
h, w = H // S, W // S
MIRAGE = MemoryConfig(**FAMILIES["mirage"].reference_memory["latent"])


def _lpc_points(depth, K, world_from_cam):  # depth [H, W] pixel metres (NaN holes), our K -> points [M, 3], cells [h, w]
    """The reference's from_geometry: bilinear depth (holes 0), OpenCV K / 16, integer cells."""
    d = torch.where(torch.isfinite(depth) & (depth > 0), depth, 0.0)
    d = F.interpolate(d[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]  # [h, w]
    K_cv = K.clone()
    K_cv[:2, 2] -= 0.5  # our pixel centres are at +1/2; the reference is given OpenCV's
    fx, fy, cx, cy = K_cv[0, 0] * w / W, K_cv[1, 1] * h / H, K_cv[0, 2] * w / W, K_cv[1, 2] * h / H
    pts, cells = [], torch.zeros(h, w, dtype=torch.bool)
    for v in range(h):
        for u in range(w):
            z = float(d[v, u])
            if z > 0:
                cam = torch.tensor([(u - cx) * z / fx, (v - cy) * z / fy, z, 1.0], dtype=torch.float64)
                pts.append((world_from_cam.double() @ cam)[:3])
                cells[v, u] = True
    return torch.stack(pts), cells


def _lpc_project(points, features, K, cam_from_world):  # -> latents [C, h, w], depth [h, w] (NaN empty)
    """The reference's project: round, bounds, z > 0, closest wins (lowest index on ties)."""
    K_cv = K.clone()
    K_cv[:2, 2] -= 0.5
    fx, fy, cx, cy = K_cv[0, 0] * w / W, K_cv[1, 1] * h / H, K_cv[0, 2] * w / W, K_cv[1, 2] * h / H
    out = torch.zeros(features.shape[1], h, w)
    zbuf = torch.full((h, w), float("inf"))
    for i, p in enumerate(points):
        X, Y, Z = (cam_from_world.double() @ torch.cat([p.double(), p.new_ones(1).double()]))[:3].tolist()
        if Z <= 0:
            continue
        u, v = round(X * float(fx) / Z + float(cx)), round(Y * float(fy) / Z + float(cy))  # Python round: half to even
        if 0 <= u < w and 0 <= v < h and Z < zbuf[v, u]:
            zbuf[v, u], out[:, v, u] = Z, features[i].float()
    return out, torch.where(torch.isinf(zbuf), torch.nan, zbuf)


def _scene(seed):
    g = torch.Generator().manual_seed(seed)
    depth = 2 + 3 * torch.rand(H, W, generator=g)  # a rough surface: many points land in one cell when seen moved
    depth[:30] = float("nan")  # holes, blended into their neighbours by the reference's bilinear resampling
    depth[100:130, 40:90] = 0.0
    return torch.randn(48, h, w, generator=g), depth


def _moved(dx, yaw):
    a = torch.tensor(yaw).deg2rad()
    T = torch.eye(4)
    T[:3, :3] = torch.tensor([[a.cos(), 0, a.sin()], [0, 1, 0], [-a.sin(), 0, a.cos()]])
    T[0, 3] = dx
    return T


def test_mirage_reference_readout_is_the_latent_point_cloud():
    src = Camera.from_fov(W, H, 60.0)
    mem = make_memory("latent", MIRAGE)
    latent, depth = _scene(0)
    update = mem.initialize(Observation.single(src, depth, latent))
    ref_pts, ref_cells = _lpc_points(depth, src.K, torch.eye(4))
    assert update.added == mem.num_points == len(ref_pts)  # every valid cell, nothing merged
    assert torch.equal(update.cells[0], ref_cells)
    assert torch.allclose(mem.points.double(), ref_pts, atol=1e-5)
    assert mem.values.dtype == torch.float32  # the reference's float32 features

    # a second frame appended as is (no fusion): a seen cell again is a second point
    latent2, depth2 = _scene(1)
    T2 = _moved(0.3, 8.0)
    cam2 = Cameras(src.K[None], T2[None], W, H)
    mem.update(Observation(cam2, depth2[None], latent2[:, None]))
    pts2, _ = _lpc_points(depth2, src.K, torch.linalg.inv(T2))
    points = torch.cat([ref_pts, pts2])
    features = torch.cat([latent.permute(1, 2, 0)[ref_cells], latent2.permute(1, 2, 0)[_lpc_points(depth2, src.K, torch.eye(4))[1]]])
    assert mem.num_points == len(points)

    views = [torch.eye(4), T2, _moved(-0.4, -12.0), _moved(0.1, 25.0)]
    out = mem.read_views(Cameras(src.K[None].expand(4, 3, 3), torch.stack(views), W, H))
    for i, T in enumerate(views):
        want, zbuf = _lpc_project(points, features, src.K, T)
        seen = ~torch.isnan(zbuf)
        assert torch.equal(out.mask[i], seen), i
        assert torch.equal(out.latents[:, i], want), i
        assert torch.allclose(out.depth[i][seen], zbuf[seen], rtol=1e-5), i


def test_mirage_reference_differs_from_ours_where_the_reference_does():
    """The reference's cells are lifted near their corner (integer u, v) and its hole edges blended with
    0 depth: the same memory reads differently from a moved camera, so a test of the reference cannot
    pass on ours."""
    src = Camera.from_fov(W, H, 60.0)
    latent, depth = _scene(0)
    ours = LatentSpatialMemory(MemoryConfig(surface_tolerance=0.0))
    ours.initialize(Observation.single(src, depth, latent))
    ref = make_memory("latent", MIRAGE)
    ref.initialize(Observation.single(src, depth, latent))
    assert ref.num_points == ours.num_points  # the same cells (each has some valid depth under it)...
    assert (ref.points - ours.points).norm(dim=1).min() > 1e-3  # ...lifted through another point of the cell
    moved = Cameras(src.K[None], _moved(0.2, 5.0)[None], W, H)
    assert not torch.equal(ref.read_views(moved).latents, ours.read_views(moved).latents)


def test_black_empty_cells_are_the_codec_latent_of_black():
    codec = OfflineCodec()
    src = Camera.from_fov(W, H, 60.0)
    latent, depth = _scene(2)
    mem = LatentSpatialMemory(MemoryConfig(empty_latent="black"), codec=codec)
    mem.initialize(Observation.single(src, depth, latent))
    T = torch.eye(4).repeat(9, 1, 1)
    T[:, 0, 3] = torch.linspace(0, 0.6, 9)
    out = mem.read(Cameras(src.K[None], T, W, H))
    black = codec.encode(-torch.ones(1, 3, 9, H, W))[0].to(torch.bfloat16)  # [C, 3, h, w] in the tokens' dtype
    assert (~out.mask).any() and out.mask.any()
    assert torch.equal(out.latents.permute(1, 2, 3, 0)[~out.mask], black.permute(1, 2, 3, 0)[~out.mask])
    assert not torch.equal(black, torch.zeros_like(black))  # black is not the zero token
    zero = LatentSpatialMemory(MemoryConfig(), codec=codec)
    zero.initialize(Observation.single(src, depth, latent))
    same = zero.read(Cameras(src.K[None], T, W, H))
    assert torch.equal(same.latents[:, out.mask], out.latents[:, out.mask])  # seen cells as before


def test_the_first_chunk_stores_latent_zero_again_when_the_reference_does():
    codec = OfflineCodec()
    src = Camera.from_fov(W, H, 60.0)
    image = torch.rand(3, H, W) * 2 - 1
    depth = torch.full((H, W), 3.0)
    path = make_preset_path("pan_left", src, num_frames=17, amount=10.0, scene_depth=3.0)
    parts = ChunkParts(codec, lambda chunk: None, identity_denoise, readout_depth)
    added = {}
    for restore in (False, True):
        mem = make_memory("latent", MIRAGE, codec=codec)
        first, init = start_memory(mem, src, image, depth, codec.encode)
        results = run_chunks(mem, path, first, parts, Chunking(9, 9, 1), continuation="latent", restore_first=restore)
        added[restore] = [init.added] + [r.added for r in results]
        assert [r.updated_from for r in results] == [0 if restore else 1, 1]
        assert results[0].new_frames(4).shape[1] == (3 if restore else 2)
    assert added[True][1] == added[False][1] + init.added  # latent 0 again, every valid cell of it
    assert added[True][2] == added[False][2]


def test_a_branch_reads_what_it_was_trained_on_by_default():
    from diffusers import UniPCMultistepScheduler

    from mirage.codecs import WanVAECodec
    from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline
    from mirage.testing import TINY_VAE_CONFIG, tiny_transformer

    vae = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=0).vae
    pipe = MiragePipeline(tiny_transformer(), vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG))
    pipe.branch_kind = "mirage"
    cfg, far, restore, used = pipe.readout_settings("latent", None, "branch", 100.0, None)
    assert cfg == MIRAGE and far is None and restore and used == "reference"
    assert pipe.readout_settings("rgb", None, "branch", 100.0, None) == (None, 100.0, False, "ours")  # no reference
    assert pipe.readout_settings("latent", None, "branch", 100.0, "ours") == (None, 100.0, False, "ours")
    mine = MemoryConfig(voxel_size=0.02)
    assert pipe.readout_settings("latent", mine, "branch", 100.0, None)[0] is mine  # as given
    pipe.branch_kind = "spatia"
    cfg, far, restore, used = pipe.readout_settings("rgb", None, "branch", 100.0, None)
    assert cfg.readout == "spatia-reference" and cfg.hole_value == -1.0 and far is None and not restore
    assert pipe.readout_settings("latent", None, "branch", 100.0, None)[0].empty_latent == "black"
    assert pipe.readout_settings("latent", None, "replace", 100.0, None) == (None, 100.0, False, "ours")
    with pytest.raises(ValueError, match="trained branch"):
        pipe.readout_settings("latent", None, "replace", 100.0, "reference")
    with pytest.raises(ValueError, match="append"):
        MemoryConfig(readout="mirage-reference")  # the reference appends: fusion would not be the reference


def test_mirage_candidates_are_each_latent_once_with_what_it_saw_when_made():
    """Mirage's reference candidates (mirage_pipeline.py): every generated latent once (a later chunk's
    pinned latent is the previous chunk's last), each with the voxels it saw right after the update of
    its chunk, not what the grown memory would show now; an undone chunk's record goes with it."""
    from mirage.chunks import ChunkRun, DepthResult, step
    from mirage.conditioning import MirageConditioner, _reference_grid, seen_voxels

    codec, src = OfflineCodec(), Camera.from_fov(W, H, 60.0)
    g = torch.Generator().manual_seed(3)
    image, depth = torch.rand(3, H, W, generator=g) * 2 - 1, 2 + torch.rand(H, W, generator=g)
    path = make_preset_path("orbit_left", src, num_frames=25, amount=20.0, scene_depth=2.5)
    mem = make_memory("latent", MIRAGE, codec=codec)
    first, _ = start_memory(mem, src, image, depth, codec.encode)
    cache: dict = {}
    far = lambda chunk, frames, scale: DepthResult(torch.full((frames.shape[1], H, W), 9.0), 1.0, True)  # noqa: E731
    parts = ChunkParts(codec, MirageConditioner(mem, path, codec.encode, cache=cache), identity_denoise, far)
    run = ChunkRun(mem, path, first, Chunking(9, 9, 1), "latent", restore_first=True)
    grid = lambda cams: _reference_grid(cams.rescaled(w, h), S)  # noqa: E731
    step(run, parts)  # chunk 1: no candidates yet
    assert "visible" not in cache
    when_made = seen_voxels(mem.points, grid(path[0:9][::4]), h, w)  # chunk 1's 3 latents, right after its update
    step(run, parts)
    assert len(cache["visible"]) == 3 and all(torch.equal(a, b) for a, b in zip(cache["visible"], when_made))
    after_two = seen_voxels(mem.points, grid(path[8:17][::4][1:]), h, w)  # chunk 2's own 2 latents
    step(run, parts)
    assert len(cache["visible"]) == 5  # 3 + 2: chunk 2's pinned latent is chunk 1's last, not a second candidate
    assert all(torch.equal(a, b) for a, b in zip(cache["visible"], when_made + after_two))
    now = seen_voxels(mem.points, grid(path[0:9][::4]), h, w)
    assert any(not torch.equal(a, b) for a, b in zip(now, when_made))  # the grown memory would say otherwise
    run.undo()
    run.undo()
    step(run, parts)
    assert len(cache["visible"]) == 3  # chunk 2's sets went with it


# ----------------------------------------------------------------------------- Spatia's render of the pixel memory
SPATIA = MemoryConfig(**FAMILIES["spatia"].reference_memory["rgb"])


def test_spatia_intrinsics_project_as_pytorch3d_ndc_does_with_spatias_conversion():
    """Spatia (render_point_torch3d.py:95-103) gives PyTorch3D focal 2f/(s-1) and principal point
    2(c - (S-1)/2)/(s-1) in NDC, from OpenCV K; PyTorch3D's NDC has +x left, +y up, the shorter side
    spanning [-1, 1] and pixel i's centre at S/s - (2i+1)/s. Written out here, against our pinhole."""
    from mirage.point_raster import spatia_intrinsics

    g = torch.Generator().manual_seed(0)
    for Hh, Ww in ((704, 1248), (96, 64)):
        K = torch.tensor([[500.0, 0, 0.31 * Ww], [0, 480.0, 0.62 * Hh], [0, 0, 1]])  # ours: off-centre on purpose
        pts = torch.randn(50, 3, generator=g) * torch.tensor([1.0, 1.0, 0.5]) + torch.tensor([0, 0, 4.0])  # camera space
        s = min(Hh, Ww)
        K_cv = K.clone()
        K_cv[:2, 2] -= 0.5
        fx, fy = 2 * K_cv[0, 0] / (s - 1), 2 * K_cv[1, 1] / (s - 1)
        px, py = 2 * (K_cv[0, 2] - (Ww - 1) / 2) / (s - 1), 2 * (K_cv[1, 2] - (Hh - 1) / 2) / (s - 1)
        X, Y, Z = -pts[:, 0], -pts[:, 1], pts[:, 2]  # OpenCV -> PyTorch3D camera axes (x, y flipped)
        x_ndc, y_ndc = fx * X / Z + px, fy * Y / Z + py
        u, v = (Ww - s * x_ndc) / 2, (Hh - s * y_ndc) / 2  # continuous pixel coordinates, centres at i + 1/2
        Ks = spatia_intrinsics(K, Hh, Ww)
        proj = pts @ Ks.T
        torch.testing.assert_close(proj[:, 0] / proj[:, 2], u, rtol=0, atol=1e-3)
        torch.testing.assert_close(proj[:, 1] / proj[:, 2], v, rtol=0, atol=1e-3)
        assert not torch.allclose(Ks, K)  # off-centre: the conversion moves it
    centred = torch.tensor([[300.0, 0, 624], [0, 300.0, 352], [0, 0, 1]])
    assert spatia_intrinsics(centred, 704, 1248)[:2, 2].tolist() == [624.0, 352.0]


def test_spatia_render_is_the_voxel_averaged_cloud_as_pytorch3d_draws_it_on_black(monkeypatch):
    import mirage.point_raster as pr

    codec = OfflineCodec()
    src = Camera.from_fov(W, H, 60.0)
    g = torch.Generator().manual_seed(4)
    image, depth = torch.rand(3, H, W, generator=g) * 2 - 1, 2 + torch.rand(H, W, generator=g)
    depth[:, :60] = float("nan")  # a hole: black there
    mem = make_memory("rgb", SPATIA, codec=codec)
    mem.initialize(Observation.single(src, depth, None, image))
    voxels = []
    real = pr.voxel_downsample
    monkeypatch.setattr(pr, "voxel_downsample", lambda p, f, v: voxels.append(v) or real(p, f, v))
    view = Cameras(src.K[None], _moved(0.1, 4.0)[None], W, H)
    out = mem.render(view)
    pts, cols = real(mem.points, mem.colors.float() / 255, 0.01)
    ref = pr.rasterize_points(pts, cols, view.cam_from_world, pr.spatia_intrinsics(view.K, H, W), (H, W), 0.01, 5)
    torch.testing.assert_close(out.frames[:, 0], ref.features[0] * 2 - 1, rtol=0, atol=1e-6)
    assert torch.equal(out.mask[0], ref.count[0] > 0) and torch.equal(out.coverage[0], ref.coverage[0])
    assert (out.frames[:, 0][:, ~out.mask[0]] == -1).all() and (~out.mask[0]).any()  # black holes, not grey
    edge = out.mask[0] & (out.coverage[0] < 0.99)
    assert edge.any()  # soft coverage at the discs' edges (the score is 1 - coverage)
    mem.update(Observation(view, depth[None], None, image[:, None]))
    mem.render(view)
    assert voxels == [0.01, 0.015]  # 1 cm, then + 0.5 cm per round (update) as Spatia's render voxel grows
    read = mem.read(Cameras(src.K[None].expand(5, 3, 3), _moved(0.1, 4.0)[None].expand(5, 4, 4), W, H))
    assert read.coverage is not None and torch.equal(read.pixel_coverage, read.coverage)
