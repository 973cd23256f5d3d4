"""The latent memory and the RGB baseline: exact readback, analytic shifts, updates, files, errors."""

import struct

import pytest
import torch

from mirage.cameras import Camera, Cameras
from mirage.codecs import OfflineCodec
from mirage.memory import LatentSpatialMemory, MemoryConfig, Observation, RGBPointCloudMemory, voxel_keys

W, H, S = 320, 192, 16
h, w = H // S, W // S


def _source():
    return Camera.from_fov(W, H, 60.0)


def _started(memory, observation):  # -> memory, initialized from observation
    memory.initialize(observation)
    return memory


def _latent_and_depth(seed=0, holes=True):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(48, h, w, generator=g).to(torch.bfloat16)
    depth = 2 + torch.rand(H, W, generator=g)
    if holes:
        depth[:40] = float("nan")  # sky
        depth[100:120, 200:260] = 0.0  # invalid patch
    return latent, depth


def test_read_back_source_returns_source_tokens_exactly():
    latent, depth = _latent_and_depth()
    mem = _started(LatentSpatialMemory(), Observation.single(_source(), depth, latent))
    out = mem.read_views(_source().batch())
    seen = out.mask[0]
    # every cell with any valid depth under its bilinear footprint is stored and read back bit-exactly
    assert int(seen.sum()) == mem.num_points > 0.5 * h * w
    assert torch.equal(out.latents[:, 0][:, seen], latent[:, seen])
    assert torch.equal(out.latents[:, 0][:, ~seen], torch.zeros_like(latent[:, ~seen]))
    assert not seen[:2].any()  # the top 40 pixel rows are sky: no cell of the first two latent rows


def test_known_translation_shifts_by_expected_cells():
    latent, _ = _latent_and_depth()
    src = _source()
    mem = _started(LatentSpatialMemory(MemoryConfig(surface_tolerance=0.0)), Observation.single(src, torch.full((H, W), 2.0), latent))
    f_lat = float(src.K[0, 0]) / S  # focal length in latent cells
    for cells in (1, 3):
        moved = torch.eye(4)
        moved[0, 3] = -cells * 2.0 / f_lat  # camera moves right by cells * depth / f: the scene shifts left
        out = mem.read_views(Cameras(src.K[None], moved[None], W, H))
        assert torch.equal(out.latents[:, 0, :, : w - cells], latent[:, :, cells:])
        assert not out.mask[0, :, w - cells :].any()
        assert torch.allclose(out.depth[0, :, : w - cells], torch.tensor(2.0))


def test_read_chunk_uses_latent_aligned_cameras():
    latent, depth = _latent_and_depth(holes=False)
    src = _source()
    mem = _started(LatentSpatialMemory(MemoryConfig(surface_tolerance=0.0)), Observation.single(src, torch.full((H, W), 2.0), latent))
    f_lat = float(src.K[0, 0]) / S
    T = torch.eye(4).repeat(9, 1, 1)
    T[:, 0, 3] = -torch.arange(9.0) * 2.0 / f_lat / 4  # 1/4 cell per pixel frame -> one cell per latent frame
    out = mem.read(Cameras(src.K[None], T, W, H))
    assert out.latents.shape == (48, 3, h, w) and out.mask.shape == (3, h, w)
    for k in range(3):  # latent frame k uses pixel frame 4k: shifted by k cells
        assert torch.equal(out.latents[:, k, :, : w - k], latent[:, :, k:])
    with pytest.raises(ValueError, match="4N\\+1|N\\+1"):
        mem.read(Cameras(src.K[None], T[:8], W, H))


def test_update_drops_invalid_far_and_excluded_cells():
    latent, depth = _latent_and_depth(holes=False)
    src = _source()
    mem = _started(LatentSpatialMemory(MemoryConfig(max_depth=10.0, update_policy="append")), Observation.single(src, depth, latent))
    n0 = mem.num_points
    assert n0 == h * w
    d = depth.clone()[None]
    d[0, :, :160] = 50.0  # far / sky: beyond max_depth
    d[0, :16, 160:] = float("nan")  # invalid
    exclude = torch.zeros(1, H, W, dtype=torch.bool)
    exclude[0, 176:, 300] = True  # one pixel marks its whole cell (dynamic object)
    update = mem.update(Observation(src.batch(), d, latent[:, None], exclude=exclude))
    added = update.added
    expected = (w // 2) * h - (w // 2) - 1  # right half, minus the invalid top row, minus one excluded cell
    assert added == expected and mem.num_points == n0 + expected
    assert int(update.cells.sum()) == added and not update.cells[0, :, : w // 2].any()  # the cells, in point order
    assert update.cells[0, 0].sum() == 0 and not update.cells[0, h - 1, 300 // S]
    assert [e["num_points"] for e in mem.size_history] == [n0, n0 + expected]
    assert (update.num_points, update.nbytes) == (mem.num_points, mem.nbytes)
    assert not hasattr(mem, "last_added")  # what the update did is returned, not left behind


def test_voxel_dedup_keeps_revisits_from_growing_the_cache():
    latent, depth = _latent_and_depth(holes=False)
    src = _source()
    plain = _started(LatentSpatialMemory(MemoryConfig(update_policy="append")), Observation.single(src, depth, latent))
    plain.update(Observation(src.batch(), depth[None], latent[:, None]))
    assert plain.num_points == 2 * h * w  # no dedup: the paper's growing cache
    dedup = _started(LatentSpatialMemory(MemoryConfig(voxel_size=0.05, update_policy="append")), Observation.single(src, depth, latent))
    n0 = dedup.num_points
    update = dedup.update(Observation(src.batch(), depth[None] * 1.001, latent[:, None]))
    added = update.added
    assert added <= 0.05 * n0 and int(update.cells.sum()) == added  # dedup is reflected in the update's cells
    keys = voxel_keys(dedup.points, 0.05)
    assert keys.unique().numel() == keys.numel()  # one point per voxel


def test_nbytes_counts_xyz_frame_ids_and_tokens():
    latent, depth = _latent_and_depth(holes=False)
    mem = _started(LatentSpatialMemory(), Observation.single(_source(), depth, latent))
    assert mem.nbytes == mem.num_points * (3 * 4 + 4 + 6 * 2 + 48 * 2)  # xyz float32, frame id int32, footprint 6 float16, 48 bf16


def test_save_load_round_trip(tmp_path):
    latent, depth = _latent_and_depth()
    mem = _started(LatentSpatialMemory(MemoryConfig(voxel_size=0.1, max_depth=9.0)), Observation.single(_source(), depth, latent))
    path = mem.save(tmp_path / "cache.safetensors")
    back = LatentSpatialMemory.load(path)
    assert torch.equal(back.points, mem.points) and torch.equal(back.features, mem.features)
    assert back.grid == mem.grid and back.config.voxel_size == 0.1 and back.config.max_depth == 9.0
    assert back.config == mem.config
    assert back.size_history == mem.size_history
    a, b = mem.read_views(_source().batch()), back.read_views(_source().batch())
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(FileNotFoundError):
        LatentSpatialMemory.load(tmp_path / "missing.safetensors")


def test_ply_export(tmp_path):
    latent, depth = _latent_and_depth()
    mem = _started(LatentSpatialMemory(), Observation.single(_source(), depth, latent))
    colors = torch.full((mem.num_points, 3), 7, dtype=torch.uint8)
    path = mem.to_ply(tmp_path / "cache.ply", colors=colors)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert f"element vertex {mem.num_points}".encode() in header
    assert header.count(b"property") == 6 + 48
    rec = 3 * 4 + 3 + 48 * 4
    assert len(body) == mem.num_points * rec
    x, y, z = struct.unpack("<3f", body[:12])
    assert torch.allclose(torch.tensor([x, y, z]), mem.points[0])
    assert body[12:15] == bytes([7, 7, 7])


def test_latent_memory_errors_name_the_value():
    latent, depth = _latent_and_depth()
    src = _source()
    with pytest.raises(ValueError, match="no valid"):
        LatentSpatialMemory().initialize(Observation.single(src, torch.full((H, W), float("nan")), latent))
    with pytest.raises(ValueError, match=r"latents must be \[C, F=1, 12, 20\], got \(12, 20\)"):
        LatentSpatialMemory().initialize(Observation.single(src, depth, latent[0]))
    mem = _started(LatentSpatialMemory(), Observation.single(src, depth, latent))
    with pytest.raises(ValueError, match="640x384"):
        mem.read_views(Camera.from_fov(640, 384, 60.0).batch())
    with pytest.raises(ValueError, match=r"latents must be \[C, F=2, 12, 20\], got \(48, 1, 12, 20\)"):  # 2 cameras, 1 frame
        mem.update(Observation(Cameras.cat([src.batch(), src.batch()]), depth[None], latent[:, None]))
    with pytest.raises(ValueError, match="not a whole multiple"):
        mem.update(Observation(src.batch(), depth[None, :100], latent[:, None]))
    with pytest.raises(RuntimeError, match="initialize"):
        LatentSpatialMemory().read_views(src.batch())
    with pytest.raises(ValueError, match="surface_tolerance"):
        LatentSpatialMemory(MemoryConfig(surface_tolerance=-1))


class _PatchMeanCodec:
    """Not a mock of a model: a tiny exact codec for RGB-memory unit tests (16x16 means, frames 4k)."""

    latent_channels, spatial_stride, temporal_stride = 3, 16, 4

    def encode(self, video):  # [B, 3, T, H, W] -> [B, 3, F, h, w]
        return torch.nn.functional.avg_pool3d(video[:, :, ::4], (1, 16, 16))


def test_rgb_memory_renders_source_exactly_and_reads_chunks():
    g = torch.Generator().manual_seed(3)
    image = (torch.randint(0, 256, (3, H, W), generator=g).float() / 127.5 - 1)  # exactly representable in uint8
    depth = 2 + torch.rand(H, W, generator=g)
    depth[:20] = float("nan")
    src = _source()
    mem = _started(RGBPointCloudMemory(codec=_PatchMeanCodec()), Observation.single(src, depth, image=image))
    assert mem.num_points == int(torch.isfinite(depth).sum())
    assert mem.nbytes == mem.num_points * (12 + 4 + 12 + 3)  # xyz float32, frame id int32, footprint 6 float16, RGB uint8
    r = mem.render(src.batch())
    rgb, mask = r.frames, r.mask
    assert torch.equal(mask[0], torch.isfinite(depth))
    assert torch.allclose(rgb[:, 0][:, mask[0]], image[:, mask[0]], atol=1e-6)
    out = mem.read(Cameras(src.K[None], torch.eye(4).repeat(5, 1, 1), W, H))
    assert out.latents.shape == (3, 2, h, w) and out.pixel_mask.shape == out.pixel_depth.shape == (5, H, W)
    assert out.mask.shape == (2, h, w) and not out.mask[:, 0].any() and out.mask[:, 2:].all()
    assert set(out.timings) == {"rasterize", "encode"}
    assert torch.isnan(out.depth[:, 0]).all()  # the top cells are sky in both latent frames
    from mirage.geometry import downsample_depth

    expected = downsample_depth(depth, 16)  # the source view's depth on the latent grid
    assert torch.allclose(out.depth[:, out.mask[0]], expected[out.mask[0]].expand(2, -1))
    with pytest.raises(ValueError, match=r"needs depth at pixel resolution 192x320, got \(1, 192, 100\)"):
        RGBPointCloudMemory(codec=_PatchMeanCodec()).initialize(Observation.single(src, depth[:, :100], image=image))


def test_dedup_radius_guarantees():
    g = torch.Generator().manual_seed(5)
    mem = LatentSpatialMemory(MemoryConfig(voxel_size=0.1))
    mem.points = torch.rand(500, 3, generator=g) * 4  # stored points
    near = mem.points + (torch.rand(500, 3, generator=g) - 0.5) * 0.0999  # within half a voxel per axis
    far = mem.points + torch.sign(torch.rand(500, 3, generator=g) - 0.5) * 0.21  # beyond two voxels on every axis
    assert not mem._dedup(near).any()
    assert mem._dedup(far[:, None, :].expand(500, 1, 3).reshape(-1, 3)).sum() > 0.9 * 500


# ----------------------------------------------------------------------------- one protocol, both memories
def _both_memories():
    """Each memory initialized from the same observation (latents and pixels of one frame)."""
    from mirage.codecs import OfflineCodec

    g = torch.Generator().manual_seed(7)
    codec = OfflineCodec()
    image = (torch.randint(0, 256, (3, H, W), generator=g).float() / 127.5 - 1)
    depth = 2 + torch.rand(H, W, generator=g)
    depth[:20] = float("nan")
    obs = Observation.single(_source(), depth, codec.encode(image[None, :, None])[0], image)
    return obs, {m.kind: _started(m, obs) for m in (LatentSpatialMemory(codec=codec), RGBPointCloudMemory(codec=codec))}


def test_both_memories_implement_the_whole_protocol():
    import inspect

    from mirage.memory import SpatialMemory

    members = {n for n, _ in inspect.getmembers(SpatialMemory) if not n.startswith("_")} | set(SpatialMemory.__annotations__)
    assert {"initialize", "update", "read", "read_views", "render", "save", "to_ply", "nbytes", "num_points", "grid",
            "image_size", "to", "config"} <= members
    _, memories = _both_memories()
    for kind, mem in memories.items():
        assert isinstance(mem, SpatialMemory) and mem.kind == kind
        missing = [n for n in members if not hasattr(mem, n)]
        assert not missing, (kind, missing)


def test_render_returns_its_depth_and_keeps_no_state_for_read(tmp_path):
    obs, memories = _both_memories()
    cams = Cameras(_source().K[None], torch.eye(4).repeat(5, 1, 1), W, H)
    for kind, mem in memories.items():
        before = dict(vars(mem))
        r = mem.render(cams)
        assert r.frames.shape == (3, 5, H, W) and r.mask.shape == r.depth.shape == (5, H, W)
        assert set(vars(mem)) == set(before)  # render leaves nothing behind for read to pick up
        seen = r.mask[0]
        assert seen.any() and torch.isnan(r.depth[0][~seen]).all()
        torch.testing.assert_close(r.depth[0][seen & torch.isfinite(obs.depths[0])].mean(),
                                   obs.depths[0][seen & torch.isfinite(obs.depths[0])].mean(), rtol=0.02, atol=0)  # fmt: skip
        out = mem.read(cams)
        assert out.latents.shape == (48, 2, h, w) and out.mask.shape == out.depth.shape == (2, h, w)
        assert out.frame_depths().shape[0] == 1  # the depth of latent frame 1 (pixel frame 4)


def test_both_memories_save_load_ply_and_what_initialize_stored(tmp_path):
    from mirage.codecs import OfflineCodec
    from mirage.memory import load_memory

    obs, memories = _both_memories()
    for kind, mem in memories.items():
        stored = type(mem)(codec=OfflineCodec()).initialize(obs)
        assert int(stored.cells.sum()) == stored.added == mem.num_points and stored.step == "initialize"
        back = load_memory(mem.save(tmp_path / f"{kind}.safetensors"), codec=OfflineCodec())
        assert type(back) is type(mem) and torch.equal(back.points, mem.points) and torch.equal(back.values, mem.values)
        assert torch.equal(back.frame_ids, mem.frame_ids) and back.size_history == mem.size_history
        torch.testing.assert_close(back.render(obs.cameras).frames, mem.render(obs.cameras).frames)
        header = mem.to_ply(tmp_path / f"{kind}.ply").read_bytes().split(b"end_header")[0]
        assert f"element vertex {mem.num_points}".encode() in header
    with pytest.raises(ValueError, match="not a mirage rgb memory"):
        RGBPointCloudMemory.load(tmp_path / "latent.safetensors")
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(ValueError, match="junk.safetensors is not a safetensors file"):
        load_memory(tmp_path / "junk.safetensors")


def test_an_update_gives_each_memory_what_it_stores():
    obs, memories = _both_memories()
    nearer = obs.depths * 0.5  # a surface in front of the stored one: not explained by the memory, so stored
    latent_only = Observation(obs.cameras, nearer, latents=obs.latents)
    pixels_only = Observation(obs.cameras, nearer, frames=obs.frames)
    assert memories["latent"].update(latent_only).added > 0 and memories["rgb"].update(pixels_only).added > 0
    with pytest.raises(ValueError, match="the latent memory stores latents: the observation has none"):
        memories["latent"].update(pixels_only)
    with pytest.raises(ValueError, match="the pixel memory stores colours: the observation has no frames"):
        memories["rgb"].update(latent_only)
    for mem in memories.values():
        assert mem.frame_ids.max() == 1 and mem.frames_stored == 2  # the update was observation 1


def test_both_memories_fill_every_readout_field_for_reads_and_views():
    """read: latent-grid fields at the F latent frames and pixel fields at every pixel frame; read_views:
    one latent frame per camera. The latent memory's pixel fields are its grid upsampled (cell blocks,
    latent frame k over pixel frames 4k-3..4k); the pixel memory's are what it rasterized."""
    obs, memories = _both_memories()
    K = _source().K
    T = torch.eye(4).repeat(5, 1, 1)
    T[:, 0, 3] = -torch.arange(5.0) * 0.05  # a truck right: each pixel frame another view
    cams = Cameras(K[None], T, W, H)
    for kind, mem in memories.items():
        out = mem.read(cams)
        assert out.latents.shape == (48, 2, h, w) and out.mask.shape == out.depth.shape == (2, h, w)
        assert out.pixel_mask.shape == out.pixel_depth.shape == (5, H, W) and out.pixel_mask.dtype == torch.bool
        views = mem.read_views(cams)
        assert views.latents.shape == (48, 5, h, w) and views.pixel_mask.shape == (5, H, W)
        assert torch.equal(torch.isnan(out.pixel_depth), ~out.pixel_mask) and torch.isnan(out.depth[~out.mask]).all()
    lat = memories["latent"].read(cams)
    up = lambda x, k: x[k].repeat_interleave(S, 0).repeat_interleave(S, 1)  # noqa: E731  [h, w] -> [H, W]
    for t, k in enumerate([0, 1, 1, 1, 1]):  # pixel frame t shows latent frame k (the causal map)
        assert torch.equal(lat.pixel_mask[t], up(lat.mask, k))
        torch.testing.assert_close(lat.pixel_depth[t], up(lat.depth, k), equal_nan=True, rtol=0, atol=0)
    rgb, rgb_views = memories["rgb"].read(cams), memories["rgb"].read_views(cams)
    assert torch.equal(rgb.pixel_mask, rgb_views.pixel_mask)  # the pixel memory rasterized every frame for both
    render = memories["rgb"].render(cams[2:3]).frames  # [3, 1, H, W]: view 2 encoded alone is the latent of its render
    torch.testing.assert_close(rgb_views.latents[:, 2], OfflineCodec().encode(render[None])[0, :, 0], rtol=0, atol=1e-6)
    for mem in memories.values():
        with pytest.raises(ValueError, match="no cameras to read"):
            mem.read_views(cams[:0])


def test_memory_config_refuses_bad_settings_by_name():
    for kwargs, message in [({"surface_tolerance": -1}, "surface_tolerance must be a number >= 0, got -1"),
                            ({"voxel_size": 0.0}, "voxel_size must be a number > 0"), ({"max_depth": float("nan")}, "max_depth"),
                            ({"update_policy": "merge"}, "update_policy must be one of .* got 'merge'"),
                            ({"spatial_stride": -16}, "spatial_stride must be an int >= 1, got -16"),
                            ({"token_dtype": "int8"}, "token_dtype"), ({"visible_fraction": 0.0}, "visible_fraction")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            MemoryConfig(**kwargs)
    with pytest.raises(TypeError, match="config must be a mirage.memory.MemoryConfig"):
        LatentSpatialMemory({"surface_tolerance": 0.0})


def _resave(path, out, tensors=None, meta=None):
    """A copy of the memory file at ``path`` with some tensors and metadata replaced (None values drop them)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        old_meta, old = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    new = {k: v for k, v in {**old, **(tensors or {})}.items() if v is not None}
    save_file(new, str(out), metadata={k: v for k, v in {**old_meta, **(meta or {})}.items() if v is not None})
    return out


def test_load_checks_the_whole_file_before_returning_a_memory(tmp_path):
    import json

    from mirage.memory import load_memory

    latent, depth = _latent_and_depth()
    mem = _started(LatentSpatialMemory(), Observation.single(_source(), depth, latent))
    good = mem.save(tmp_path / "good.safetensors")
    meta = json.loads(__import__("safetensors").safe_open(str(good), framework="pt").metadata()["config"])
    n = mem.num_points
    nan_points = mem.points.clone()
    nan_points[3, 1] = float("nan")
    cases = [
        ({"config": "{not json"}, None, "its config is not JSON"),
        ({"config": json.dumps({k: v for k, v in meta.items() if k != "voxel_size"})}, None, "missing voxel_size"),
        ({"config": json.dumps({**meta, "colour": "red"})}, None, "unexpected colour"),
        ({"config": json.dumps({**meta, "spatial_stride": -16})}, None, "spatial_stride must be an int >= 1, got -16"),
        ({"config": json.dumps({**meta, "grid": [12]})}, None, "grid must be \\[rows, cols\\]"),
        ({"config": None}, None, "no config"),
        (None, {"values": None}, "tensors missing: \\['values'\\]"),
        (None, {"extra": torch.zeros(1)}, "unexpected: \\['extra'\\]"),
        (None, {"points": mem.points[:, :2].contiguous()}, "points must be \\[N, 3\\] float32"),
        (None, {"values": mem.values[:-1].contiguous()}, f"values must be \\[{n}, 48\\] bfloat16 for {n} points, got \\[{n - 1}, 48\\]"),
        (None, {"frame_ids": mem.frame_ids[:-1].contiguous()}, f"frame_ids must be \\[{n}\\] int32"),
        (None, {"points": nan_points}, f"1 of {n} points are not finite \\(first at index 3\\)"),
        (None, {"frame_ids": mem.frame_ids + 5}, "frame_ids must be in \\[0, frames_stored=1\\), got 5..5"),
        ({"size_history": "[1, 2]"}, None, "size_history must be a JSON list of records"),
        ({"size_history": json.dumps([{"num_points": n + 1}])}, None, f"its size history ends at {n + 1} points, the file holds {n}"),
        ({"config": json.dumps({**meta, "grid": [1, 1]})}, None, f"{n} points cannot come from 1 frames of a 1x1 grid"),
        ({"version": "9"}, None, "unknown memory file version '9'"),
    ]
    for i, (meta_changes, tensor_changes, message) in enumerate(cases, start=1):
        bad = _resave(good, tmp_path / f"bad{i}.safetensors", tensor_changes, meta_changes)
        with pytest.raises(ValueError, match=f"^bad{i}.safetensors: .*{message}"):
            load_memory(bad)
    back = load_memory(good)  # the good file still loads, and reads like the memory it came from
    assert torch.equal(back.read_views(_source().batch()).latents, mem.read_views(_source().batch()).latents)


def test_version_3_files_still_load(tmp_path):
    """Files written before MemoryConfig: each memory's own settings and the speed switches it had (the
    latent memory saved compact_footprints and compile_reads, the pixel memory compact_footprints)."""
    import json

    obs, memories = _both_memories()
    common = {"surface_tolerance": 0.05, "voxel_size": None, "max_depth": None, "update_policy": "fuse",
              "max_footprint_cells": 4, "compact_footprints": False, "frames_stored": 1}  # fmt: skip
    v3 = {"latent": {**common, "spatial_stride": 16, "temporal_stride": 4, "compile_reads": False, "token_dtype": "bfloat16",
                     "grid": [h, w]},
          "rgb": {**common, "hole_value": 0.0, "visible_fraction": 0.5, "compact_footprints": True, "grid": [H, W]}}  # fmt: skip
    from mirage.memory import load_memory

    for kind, mem in memories.items():
        old = _resave(mem.save(tmp_path / f"{kind}.safetensors"), tmp_path / f"old_{kind}.safetensors", None,
                      {"version": "3", "config": json.dumps(v3[kind])})  # fmt: skip
        back = load_memory(old, codec=OfflineCodec())
        assert back.kind == kind and back.config == mem.config and torch.equal(back.points, mem.points)


def test_version_4_files_load_with_the_reference_readout_settings_at_their_defaults(tmp_path):
    """Version 4 (before the reference readouts) saved every setting but the six added in 5."""
    import json

    from mirage.memory import load_memory
    from mirage.memory_files import _ADDED_IN_5

    obs, memories = _both_memories()
    for kind, mem in memories.items():
        path = mem.save(tmp_path / f"{kind}.safetensors")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            config = json.loads(f.metadata()["config"])
        old = _resave(path, tmp_path / f"v4_{kind}.safetensors", None,
                      {"version": "4", "config": json.dumps({k: v for k, v in config.items() if k not in _ADDED_IN_5})})  # fmt: skip
        back = load_memory(old, codec=OfflineCodec())
        assert back.config == mem.config and torch.equal(back.points, mem.points)
        with pytest.raises(ValueError, match="missing empty_latent"):  # a version 5 file must have them
            load_memory(_resave(path, tmp_path / f"bad_{kind}.safetensors", None,
                                {"config": json.dumps({k: v for k, v in config.items() if k != "empty_latent"})}))  # fmt: skip


def test_settings_that_would_be_ignored_are_refused():
    with pytest.raises(ValueError, match=r"strides 8/4 \(spatial/temporal\) are not the codec's 16/4 \(offline-dct\)"):
        LatentSpatialMemory(MemoryConfig(spatial_stride=8), codec=OfflineCodec())


def test_the_memory_moves_between_devices_whole():
    obs, memories = _both_memories()
    for mem in memories.values():
        before = mem.read_views(obs.cameras).latents
        assert mem.to("cpu") is mem and mem.device == torch.device("cpu") and mem.points.device.type == "cpu"
        assert torch.equal(mem.read_views(obs.cameras).latents, before)
