"""Tests for mirage.preview: the offline readout preview (videos at every frame, what the model
receives, masks, timings, cache growth), generation with a tiny random pipeline, result files."""

from __future__ import annotations

import json

import pytest
import torch

from mirage import preview, scene
from mirage.codecs import OfflineCodec
from mirage.frames import chunk_ranges
from mirage.chunks import start_memory
from mirage.images import from_uint8, to_uint8
from mirage.memory import LatentSpatialMemory, MemoryConfig, Observation, make_memory
from mirage.synthetic import default_camera, default_scene
from mirage.video import read_video

CODEC = OfflineCodec()


def _u8(video: torch.Tensor) -> torch.Tensor:  # [3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8, as a run stores its videos
    return to_uint8(video).permute(1, 2, 3, 0)


def _float(frames: torch.Tensor) -> torch.Tensor:  # [T, H, W, 3] uint8 -> [3, T, H, W] in [-1, 1]
    return from_uint8(frames).permute(3, 0, 1, 2)


@pytest.fixture()
def room_scene() -> scene.SceneState:
    """The synthetic room at 256x160 with its exact depth, fitted to 256x128 (latent grid 8x16)."""
    camera = default_camera(256, 160, 60.0)
    image, depth = default_scene().render(camera)  # [1, 3, H, W], [1, H, W]
    return scene.build_scene(scene.RawScene("room", image[0], depth[0], camera.K, "ground truth"), 256)


@pytest.mark.parametrize("T", [33, 65])
def test_readout_preview_videos_masks_timings_and_growth(room_scene, T):
    scene.preset_path(room_scene, "orbit_left", 15.0, T)
    runner = preview.PreviewRunner()
    comparison = preview.Comparison(runner.kind, 1, settings=runner.settings)
    events = list(preview.run_comparison(room_scene, runner, comparison))
    result = comparison.result()
    H, W = room_scene.size
    n_chunks = (T - 1) // 32
    # the memories alternate chunk by chunk, each chunk's progress before it is done
    done = [(e.kind, e.view.index) for e in events if isinstance(e, preview.ChunkDone)]
    assert done == [(m, i) for i in range(n_chunks) for m in preview.METHODS]
    for kind, index in done:
        stages = [e.stage for e in events if isinstance(e, preview.Progress) and (e.kind, e.chunk) == (kind, index)]
        assert stages[: 1 + (index == 0)] == (["start", "readout"] if index == 0 else ["readout"]) and "update" in stages
    assert result.kind == "readout preview" and result.ranges == chunk_ranges(T)
    for m, run in result.methods.items():
        assert run.video.shape == run.received.shape == (T, H, W, 3) and run.video.dtype == torch.uint8
        assert run.mask.shape == (T, H, W) and run.mask.dtype == torch.bool
        assert len(run.timings) == n_chunks and len(run.sizes) == len(run.counts) == n_chunks + 1
        # each memory is updated with what it read: it explains all of it, so nothing is added, and at every
        # frame it shows what the memory of the image alone shows there
        assert run.counts == [run.counts[0]] * (n_chunks + 1) and run.sizes == [run.memory.nbytes] * (n_chunks + 1)
        alone = make_memory(m, codec=CODEC)
        start_memory(alone, room_scene.camera, room_scene.image, room_scene.depth, CODEC.encode)
        assert torch.equal(run.mask, alone.render(room_scene.path).mask)
        assert run.hole_fraction == pytest.approx(1 - float(alone.render(room_scene.path).mask.float().mean()), abs=1e-7)
        assert run.memory.num_points == run.counts[-1] == len(run.colors)
        charted = [v for t in run.timings for v in t.values()]
        assert all(v > 0 for v in charted) and sum(charted) <= run.seconds  # every stage ran, within the method's time
    lat, rgb = result.methods["latent"], result.methods["rgb"]
    assert all(set(t) == {"project", "condition", "decode", "update", "display"} for t in lat.timings)  # no denoise, no depth offline
    assert all(set(t) == {"rasterize", "encode", "condition", "decode", "update", "display"} for t in rgb.timings)
    assert lat.counts[0] == room_scene.memory.num_points
    assert rgb.sizes[-1] > 10 * lat.sizes[-1]  # pixel cloud vs one token per cell
    assert room_scene.memory.num_points == lat.counts[0]  # the scene's own memory is untouched
    assert result.settings["codec"].startswith("offline codec")


def test_preview_runs_at_the_full_frame_rate_and_model_input_at_the_latent_rate(room_scene):
    """Each memory is shown at every pixel frame's own camera; what the model receives through the
    offline codec (one image per latent frame) is constant over each latent frame's four pixel frames."""
    scene.preset_path(room_scene, "orbit_left", 15.0, 33)
    result = preview.run_readout_preview(room_scene)
    lat, rgb = result.methods["latent"], result.methods["rgb"]
    for run in (lat, rgb):
        received = _float(run.received)[:, 1:].reshape(3, 8, 4, *run.received.shape[1:3])  # latent frames 1..8 x 4 pixel frames
        assert torch.equal(received, received[:, :, :1].expand_as(received))
    # the pixel baseline: its raw render moves at every frame of the orbit (the ease-in makes the first ones nearly still)
    video = _float(rgb.video)
    step = (video[:, 1:] - video[:, :-1]).abs().flatten(2).amax(-1).amax(0)  # [T-1] biggest change per frame
    assert (step[4:28] > 0.05).all(), step
    # the latent memory: frame t is its readout at camera t decoded as one image (one chunk: the initial memory)
    mem = LatentSpatialMemory(codec=CODEC)
    mem.initialize(Observation.single(room_scene.camera, room_scene.depth, CODEC.encode(room_scene.image[None, :, None])[0],
                                      room_scene.image))  # fmt: skip
    reads = mem.read_views(room_scene.path)  # [C, 33, h, w]: every pixel frame's camera
    expected = CODEC.decode(reads.latents.permute(1, 0, 2, 3)[:, :, None])[:, :, 0].permute(1, 0, 2, 3).float()  # [3, 33, H, W]
    hole = torch.tensor(preview.HOLE_COLOR, dtype=torch.uint8)  # what the memory does not hold, in its display colour
    assert torch.equal(lat.video, torch.where(lat.mask[..., None], _u8(expected), hole))
    assert (~lat.mask).any() and (lat.video[~lat.mask] == hole).all()
    between = [t for t in range(1, 33) if t % 4 and not torch.equal(lat.video[t], lat.video[4 * ((t + 3) // 4)])]
    assert between, "the latent render should differ from the latent-aligned frame somewhere inside a group"


def test_source_frame_is_the_codec_reconstruction_on_visible_cells(room_scene):
    scene.preset_path(room_scene, "pan_left", 10.0, 33)
    result = preview.run_readout_preview(room_scene)
    recon = CODEC.decode(CODEC.encode(room_scene.image[None, :, None]))[0, :, 0]  # [3, H, W]
    lat, rgb = result.methods["latent"], result.methods["rgb"]
    assert lat.mask[0].all()  # the room has depth everywhere: frame 0 sees every cell
    torch.testing.assert_close(_float(lat.video[:1])[:, 0], recon, atol=1e-2, rtol=0)  # tokens cached in bf16
    assert (lat.received[0].int() - _u8(recon[:, None])[0].int()).abs().max() <= 1  # frame 0 pinned: the image's latent
    # the pixel baseline's render at the source is the image itself (stored as uint8)
    assert torch.equal(rgb.video[0], _u8(room_scene.image[:, None])[0])
    # later frames: hidden pixels of both renders are shown in the hole colour (display only), and what the model
    # receives there is the zero latent decoded (no colour painted into the model input)
    k = lat.mask.shape[0] - 1
    hidden = ~lat.mask[k]
    assert hidden.any()  # a 10 degree pan left uncovers the left edge
    assert (lat.video[k][hidden] == torch.tensor(preview.HOLE_COLOR, dtype=torch.uint8)).all()
    assert (rgb.video[k][~rgb.mask[k]] == torch.tensor(preview.HOLE_COLOR, dtype=torch.uint8)).all()
    assert not (lat.received == torch.tensor(preview.HOLE_COLOR, dtype=torch.uint8)).all(-1).any()


def test_the_preview_stores_each_frame_at_the_exact_depth_of_its_own_camera(room_scene):
    """Appending every cell the preview reads, along a dolly into the room: each stored point lies at the
    room's exact depth (ray cast at its own camera, at the cell it came from) within 1% for most points;
    the rest sit on occluding edges, where a cell reads a neighbour's surface. Handing a frame the depth
    of the next latent frame (4 pixel frames on, 6% nearer) would leave only 10-20% of them within 1%."""
    from mirage.geometry import project_points

    scene.preset_path(room_scene, "dolly_in", 0.5, 33)
    result = preview.run_readout_preview(room_scene, config=MemoryConfig(update_policy="append"))
    for m, least in (("latent", 0.6), ("rgb", 0.95)):
        mem = result.methods[m].memory
        rows, cols = mem.grid
        errors = []
        for f in range(1, mem.frames_stored):  # stored frame f is latent frame f: pixel frame 4f of the one chunk
            cam = room_scene.path[4 * f : 4 * f + 1].rescaled(cols, rows)  # [1] on the memory's grid
            _, exact = default_scene().render(cam)  # [1, rows, cols] ray-cast depth at every cell centre
            uv, z = project_points(mem.points[mem.frame_ids == f], cam.K, cam.cam_from_world)  # [1, n, 2], [1, n]
            u, v = uv[0, :, 0].floor().long(), uv[0, :, 1].floor().long()  # the cell each point came from
            errors.append((z[0] - exact[0, v, u]).abs() / exact[0, v, u])
        errors = torch.cat(errors)
        assert mem.frames_stored == 9 and errors.numel() > 8 * 0.5 * rows * cols, (m, errors.numel())
        assert float((errors < 0.01).float().mean()) >= least, (m, float((errors < 0.01).float().mean()))


def test_readout_preview_needs_a_path(room_scene):
    with pytest.raises(ValueError, match="no camera path"):
        preview.run_readout_preview(room_scene)


def test_generation_result_with_a_tiny_random_pipeline(room_scene):
    """The GPU code path, on CPU with the real diffusers classes at tiny sizes and random weights."""
    from diffusers import UniPCMultistepScheduler

    from mirage.codecs import WanVAECodec
    from mirage.depth import PlanarPriorBackend
    from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline
    from mirage.testing import TINY_VAE_CONFIG, tiny_transformer

    codec = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=0)
    pipe = MiragePipeline(tiny_transformer(text_dim=16), codec.vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG),
                          depth_backend=PlanarPriorBackend())  # fmt: skip
    scene.preset_path(room_scene, "orbit_left", 10.0, 33)
    result = preview.run_generation(room_scene, pipe, seed=3, num_inference_steps=2, guidance_scale=1.0,
                                    prompt_embeds=torch.zeros(1, 4, 16))  # fmt: skip
    assert result.kind == "generation" and result.ranges == [(0, 33)] and result.settings["seed"] == 3
    for m, run in result.methods.items():
        assert run.video.shape == run.received.shape == (33, 128, 256, 3)
        assert run.mask.shape == (33, 128, 256)
        per_point = run.memory.nbytes // run.memory.num_points  # 124 bytes (latent) or 31 (pixel), xyz + id + footprint + value
        assert len(run.sizes) == 2 and run.sizes == [n * per_point for n in run.counts]
        assert run.counts[1] - run.counts[0] == int((run.memory.frame_ids >= 1).sum()) > 0  # what the chunk stored
        assert {"denoise", "decode", "depth", "update"} <= set(run.timings[0]) <= set(preview.plotting.STAGE_ORDER)
        assert run.counts[-1] == run.memory.num_points == len(run.colors)
    assert "project" in result.methods["latent"].timings[0] and {"rasterize", "encode"} <= set(result.methods["rgb"].timings[0])
    # what the model received first is the image's own latent decoded (every cell of the room is seen)
    recon = codec.decode(codec.encode(room_scene.image[None, :, None]))[0, :, 0]  # [3, H, W]
    torch.testing.assert_close(_float(result.methods["latent"].received[:1])[:, 0], recon.float(), atol=2e-2, rtol=0)
    # generated points get the colours of the generated frames they came from
    lat = result.methods["latent"]
    assert torch.equal(lat.colors[: lat.counts[0]], room_scene.colors)


def test_result_files_and_figures(room_scene, tmp_path):
    scene.preset_path(room_scene, "orbit_right", 15.0, 65)
    result = preview.run_readout_preview(room_scene)
    n_points = result.memory.num_points
    files = preview.write_result_files(room_scene, result, tmp_path, fps=16)
    for m in preview.METHODS:
        for name in ("videos", "received"):  # the frames as run, through H.264 (crf 18, 4:2:0): close, not exact
            written = read_video(getattr(files, name)[m])  # [3, 65, H, W]
            assert written.shape == (3, 65, 128, 256)
            assert (written - _float(getattr(result.methods[m], "video" if name == "videos" else name))).abs().mean() < 0.05
        assert read_video(files.masks[m]).shape == (3, 65, 128, 256)  # white = seen, dark red = hole
    assert read_video(files.side_by_side).shape == (3, 65, 128, 2 * 256 + 8)
    header = files.cache_ply.read_bytes()[:2000].split(b"end_header")[0].decode()
    assert f"element vertex {n_points}" in header and "property float latent_47" in header
    loaded = LatentSpatialMemory.load(files.cache_safetensors)
    torch.testing.assert_close(loaded.points, result.memory.points)
    assert [p.suffix for p in files.path_files] == [".txt", ".json", ".json"]
    assert len(files.downloads()) == 13  # 7 videos, 2 cache files, the latents, 3 path files
    from safetensors.torch import load_file

    latents = load_file(files.latents)
    assert sorted(latents) == [f"{m}/chunk_{k:03d}" for m in sorted(preview.METHODS) for k in range(2)]
    for m in preview.METHODS:
        for k, t in enumerate(result.methods[m].latents):
            assert torch.equal(latents[f"{m}/chunk_{k:03d}"], t) and t.shape == (48, 9, 8, 16)
    timing, sizes, growth = preview.result_figures(room_scene, result, "image")
    assert {t.name for t in timing.data} >= {"project", "rasterize", "encode", "decode", "update"}
    assert [t.name for t in sizes.data] == [preview.METHOD_LABELS["latent"], preview.METHOD_LABELS["rgb"]]
    assert len(sizes.data[0].y) == 3
    last = [r.sizes[-1] for r in result.methods.values()]
    assert (sizes.layout.yaxis.type == "log") == (max(last) / min(last) >= 10) and max(last) / min(last) >= 10
    assert "offline codec" in timing.layout.title.subtitle.text  # the preview's encode is not the VAE's
    assert len(growth.layout.sliders[0].steps) == 3  # init + 2 chunks
    json.loads(growth.to_json())
    assert "readout preview" in preview.result_caption(result)


def test_a_run_on_the_planar_prior_is_labelled_placeholder_geometry(room_scene, tmp_path):
    scene.preset_path(room_scene, "orbit_right", 15.0, 33)
    result = preview.run_readout_preview(room_scene)
    assert not preview.placeholder_geometry(result) and "PLACEHOLDER" not in " ".join(preview.video_labels(result).values())
    result.settings["geometry"] = preview.PLACEHOLDER_GEOMETRY
    labels = preview.video_labels(result)
    assert all("PLACEHOLDER GEOMETRY (planar prior)" in labels[m] for m in preview.METHODS)
    assert "**Placeholder geometry**" in preview.result_caption(result)
    files = preview.write_result_files(room_scene, result, tmp_path, fps=16)
    assert files.side_by_side.name == "side_by_side_render_planar_prior.mp4"
    assert all(files.videos[m].name == f"{m}_render_planar_prior.mp4" for m in preview.METHODS)
    assert preview.video_names("latent", "generation", True)["video"] == "latent_generated_planar_prior.mp4"
