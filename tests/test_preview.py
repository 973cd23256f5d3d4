"""Tests for mirage.preview: scenes from examples and uploads, the four path sources, the offline
readout preview (videos, masks, timings, cache growth), result files and figures, session folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mirage import camera_io, preview
from mirage.cameras import Cameras, look_at
from mirage.codecs import OfflineCodec
from mirage.depth import weights_available
from mirage.memory import LatentSpatialMemory
from mirage.synthetic import default_camera, default_scene
from mirage.video import read_video

CODEC = OfflineCodec()


@pytest.fixture(scope="module")
def room() -> preview.RawScene:
    """The synthetic room at 256x160 with its exact depth."""
    camera = default_camera(256, 160, 60.0)
    image, depth = default_scene().render(camera)  # [1, 3, H, W], [1, H, W]
    image, depth = image[0], depth[0]  # [3, H, W], [H, W]
    return preview.RawScene("room", image, depth, camera.K, "ground truth")


@pytest.fixture()
def scene(room) -> preview.SceneState:
    return preview.build_scene(room, 256)  # 128x256: latent grid 8x16


# ------------------------------------------------------------------------------------ scenes
def test_build_scene_fits_to_the_model_aspect_and_initializes_the_memory(scene, room):
    assert scene.size == (128, 256)  # 256 * 704/1280 = 140.8 -> 128 (multiple of 32)
    assert scene.latent.shape == (48, 1, 8, 16)
    torch.testing.assert_close(scene.latent, CODEC.encode(scene.image[None, :, None])[0])
    assert scene.memory.num_points == 8 * 16  # exact depth everywhere in the room
    assert scene.colors.shape == (scene.memory.num_points, 3) and scene.colors.dtype == torch.uint8
    assert scene.scene_depth == pytest.approx(float(scene.depth.nanmedian()))
    # the crop keeps the principal point at the centre: 160 -> 128 rows after a 1x resize
    torch.testing.assert_close(scene.camera.K[:2, 2], torch.tensor([128.0, 64.0]))
    with pytest.raises(ValueError, match="long side"):
        preview.build_scene(room, 300)


def test_image_colour_of_each_point_is_the_mean_of_its_cell(scene):
    """The 'image colour' toggle: point i's colour is the mean colour of the cell it was lifted from."""
    K = scene.camera.K.double() / 16
    K[2, 2] = 1.0
    uvw = scene.memory.points.double() @ K.T  # [N, 3] (source camera = world)
    cells = torch.floor(uvw[:, :2] / uvw[:, 2:]).long()  # [N, 2] (u, v) latent cell of each point
    for i in (0, 37, scene.memory.num_points - 1):
        u, v = cells[i].tolist()
        block = scene.image[:, 16 * v : 16 * v + 16, 16 * u : 16 * u + 16].reshape(3, -1).mean(1)  # [3]
        expected = ((block + 1) * 127.5).round()
        assert torch.equal(scene.colors[i].float(), expected), (i, scene.colors[i], expected)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    PIL.Image.fromarray(array, mode=mode).save(path)
    return path


def test_uploads_of_any_kind_and_their_errors(tmp_path):
    rng = np.random.default_rng(0)
    rgba = _png(tmp_path / "rgba.png", rng.integers(0, 256, (90, 160, 4), dtype=np.uint8))
    raw = preview.raw_from_upload(rgba, None, "planar-prior", 60.0)
    assert raw.image.shape == (3, 90, 160) and "planar prior" in raw.depth_source
    assert preview.build_scene(raw, 256).size == (128, 256)

    gray16 = tmp_path / "gray16.png"
    PIL.Image.fromarray(rng.integers(0, 65536, (200, 120), dtype=np.uint16)).save(gray16)  # portrait, 16-bit
    raw = preview.raw_from_upload(gray16, None, "auto", 50.0)
    assert preview.build_scene(raw, 256).size == (256, 128)  # portrait stays portrait
    expected = "Depth Pro" if weights_available("depth-pro") else "planar prior"
    assert expected in raw.depth_source

    depth = np.full((90, 160), 2.5, np.float32)
    np.save(tmp_path / "depth.npy", depth)
    raw = preview.raw_from_upload(rgba, tmp_path / "depth.npy", "auto", 70.0)
    assert raw.depth_source.startswith("uploaded depth map") and torch.allclose(raw.depth, torch.tensor(2.5))
    assert math.isclose(float(raw.K[0, 0]), 80.0 / math.tan(math.radians(35.0)), rel_tol=1e-5)

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"not an image file.*notes\.txt") as err:
        preview.raw_from_upload(tmp_path / "notes.txt")
    assert str(tmp_path) not in str(err.value)  # the server path is not shown, the file name is
    np.save(tmp_path / "wrong.npy", np.ones((40, 40), np.float32))
    with pytest.raises(ValueError, match="40x40"):
        preview.raw_from_upload(rgba, tmp_path / "wrong.npy", "upload")
    np.save(tmp_path / "nan.npy", np.full((90, 160), np.nan, np.float32))
    with pytest.raises(ValueError, match="no valid pixel"):
        preview.raw_from_upload(rgba, tmp_path / "nan.npy", "upload")
    with pytest.raises(ValueError, match="no depth file"):
        preview.raw_from_upload(rgba, None, "upload")
    with pytest.raises(ValueError, match="no ground-truth"):
        preview.raw_from_upload(rgba, None, "ground-truth")
    with pytest.raises(ValueError, match="no image uploaded"):
        preview.raw_from_upload(None)
    with pytest.raises(ValueError, match="unknown depth source"):
        preview.raw_from_upload(rgba, None, "lidar")


def test_examples_use_ground_truth_and_label_the_prior():
    raw = preview.raw_from_example("synthetic-room")
    assert raw.depth_source == "ground truth" and raw.credit
    raw = preview.raw_from_example("motorcycle", "planar-prior")
    assert "planar prior" in raw.depth_source and "not a depth estimate" in raw.depth_source
    with pytest.raises(ValueError, match="no ground-truth depth"):
        preview.raw_from_example("motorcycle-no-depth", "ground-truth")
    with pytest.raises(ValueError, match="unknown example"):
        preview.raw_from_example("nope")


# ------------------------------------------------------------------------------------- paths
def test_frame_count_checks():
    assert preview.check_frame_count("97") == 97 and preview.check_frame_count(33) == 33
    with pytest.raises(ValueError, match="too many frames: 401"):
        preview.check_frame_count(401)
    with pytest.raises(ValueError, match="4N\\+1"):
        preview.check_frame_count(34)
    with pytest.raises(ValueError, match="whole number"):
        preview.check_frame_count("many")


def test_preset_path_and_a_path_that_leaves_the_scene(scene):
    preview.preset_path(scene, "orbit_left", 15.0, 65)
    assert len(scene.path) == 65 and scene.path_label.startswith("preset orbit_left")
    torch.testing.assert_close(scene.path.cam_from_world[0], torch.eye(4))
    before, version = scene.path, scene.version
    with pytest.raises(ValueError, match="through the scene"):
        preview.preset_path(scene, "dolly_in", 2.0, 33)
    with pytest.raises(ValueError, match="too many frames"):
        preview.preset_path(scene, "orbit_left", None, 165)
    assert scene.path is before and scene.version == version  # a bad input leaves the session as it was
    with pytest.raises(ValueError, match="no scene yet"):
        preview.preset_path(None, "orbit_left", None, 33)


def _stroke_editor(H: int, W: int, start: tuple[int, int], end: tuple[int, int]) -> dict:
    layer = np.zeros((H, W, 4), np.uint8)  # [H, W, RGBA]
    for t in np.linspace(0, 1, 200):
        u, v = (1 - t) * np.array(start) + t * np.array(end)
        layer[int(v) - 2 : int(v) + 3, int(u) - 2 : int(u) + 3] = (255, 0, 0, 255)
    return {"background": np.zeros((H, W, 4), np.uint8), "layers": [layer], "composite": None}


def test_stroke_path_moves_the_camera_along_the_stroke(scene):
    H, W = scene.size
    editor = _stroke_editor(H, W, (W // 2, H // 2), (W - 20, H // 2))  # centre -> right, horizontal
    preview.stroke_path(scene, editor, 33, depth_fraction=0.5)
    c = scene.path.centers  # [33, 3]
    torch.testing.assert_close(c[0], torch.zeros(3))
    assert c[-1, 0] > 0.1 * scene.scene_depth  # travelled right ...
    assert c[-1, 2] > 0.1 * scene.scene_depth  # ... and into the scene, towards half the depth under the stroke
    assert (c[-1, 2] < 0.5 * scene.depth.max()).item()
    with pytest.raises(ValueError, match="no stroke"):
        preview.stroke_path(scene, {"background": None, "layers": [np.zeros((H, W, 4), np.uint8)]}, 33)
    with pytest.raises(ValueError, match="no stroke drawn"):
        preview.stroke_path(scene, None, 33)


def test_keyframe_path_from_the_default_table(scene):
    rows = preview.default_keyframe_rows(scene)
    preview.keyframe_path(scene, rows, 33)
    assert len(scene.path) == 33
    torch.testing.assert_close(scene.path.centers[0], torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(scene.path.centers[-1], torch.tensor(rows[-1][:3]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least 2 keyframes"):
        preview.keyframe_path(scene, rows[:1], 33)
    with pytest.raises(ValueError, match="row 2, column 'yaw'"):
        preview.keyframe_path(scene, [rows[0], [0, 0, 1, "left", 0, 0, 60]], 33)


def test_export_then_import_round_trips_in_all_three_formats(scene, tmp_path):
    preview.preset_path(scene, "truck_right", None, 33)
    original = scene.path
    files = preview.export_path(scene, tmp_path)
    assert [f.name for f in files] == ["camera_path_re10k.txt", "camera_path_transforms.json", "camera_path_mirage.json"]
    for f in files:
        preview.imported_path(scene, f, 33)
        torch.testing.assert_close(scene.path.cam_from_world, original.cam_from_world, atol=1e-5, rtol=0)
        torch.testing.assert_close(scene.path.K, original.K, atol=1e-3, rtol=0)
    preview.imported_path(scene, files[2], 65)  # resampled to another frame count
    assert len(scene.path) == 65
    torch.testing.assert_close(scene.path.cam_from_world[-1], original.cam_from_world[-1], atol=1e-5, rtol=0)


def test_import_makes_poses_relative_to_the_first_camera(scene, tmp_path):
    """A path stored in another world frame is re-anchored so that its first camera is the source."""
    eyes = torch.tensor([[1.0, -0.5, 2.0], [1.2, -0.5, 2.1], [1.4, -0.4, 2.2]])  # [3, 3]
    cfw = look_at(eyes, eyes + torch.tensor([0.3, 0.1, 1.0]))  # [3, 4, 4]
    H, W = scene.size
    cams = Cameras(scene.camera.K[None].expand(3, 3, 3), cfw, W, H)
    camera_io.save_path_json(tmp_path / "p.json", cams)
    preview.imported_path(scene, tmp_path / "p.json", 9)
    torch.testing.assert_close(scene.path.cam_from_world[0], torch.eye(4), atol=1e-5, rtol=0)
    relative = cfw[2].double() @ torch.linalg.inv(cfw[0].double())  # camera 2 seen from camera 0
    torch.testing.assert_close(scene.path.cam_from_world[-1].double(), relative, atol=1e-5, rtol=0)


def test_import_errors_name_the_file(scene, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("https://example.com\n1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2") as err:
        preview.imported_path(scene, bad, 33)
    assert str(tmp_path) not in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        preview.imported_path(scene, tmp_path / "bad.json", 33)
    with pytest.raises(ValueError, match="no path file"):
        preview.imported_path(scene, None, 33)


# ----------------------------------------------------------------------------------- preview
@pytest.mark.parametrize("T", [33, 65])
def test_readout_preview_videos_masks_timings_and_growth(scene, T):
    preview.preset_path(scene, "orbit_left", 15.0, T)
    steps = []
    result = preview.run_readout_preview(scene, progress=lambda f, desc="": steps.append(f))
    H, W = scene.size
    n_chunks = (T - 1) // 32
    assert result.kind == "readout preview" and result.ranges == preview.chunk_ranges(T)
    for m in ("latent", "rgb"):
        assert result.videos[m].shape == (3, T, H, W)
        assert result.masks[m].shape == (T, H, W) and result.masks[m].dtype == torch.bool
        assert len(result.timings[m]) == n_chunks
        assert len(result.sizes[m]) == n_chunks + 1
        assert all(b > a for a, b in zip(result.sizes[m], result.sizes[m][1:])), result.sizes[m]  # grows every chunk
        assert 0.0 <= result.hole_fraction(m) < 1.0
    assert all(set(t) == {"project", "decode", "update"} for t in result.timings["latent"])
    assert all(set(t) == {"rasterize", "encode", "decode", "update"} for t in result.timings["rgb"])
    assert all(v >= 0 for t in result.timings["rgb"] + result.timings["latent"] for v in t.values())
    assert result.counts[0] == scene.memory.num_points and len(result.counts) == n_chunks + 1
    assert result.memory.num_points == result.counts[-1] == len(result.memory_colors)
    assert result.sizes["latent"][-1] == result.memory.nbytes
    assert result.sizes["rgb"][-1] > 10 * result.sizes["latent"][-1]  # pixel cloud vs one token per cell
    assert steps == sorted(steps) and steps[-1] == 1.0
    assert scene.memory.num_points == result.counts[0]  # the scene's own memory is untouched


def test_source_frame_readout_is_the_codec_reconstruction_on_visible_cells(scene):
    preview.preset_path(scene, "pan_left", 10.0, 33)
    result = preview.run_readout_preview(scene)
    recon = CODEC.decode(CODEC.encode(scene.image[None, :, None]))[0, :, 0]  # [3, H, W]
    frame0 = result.videos["latent"][:, 0]  # [3, H, W]
    seen = result.masks["latent"][0]  # [H, W]
    assert seen.all()  # the room has depth everywhere: frame 0 sees every cell
    torch.testing.assert_close(frame0, recon, atol=1e-5, rtol=0)
    # RGB baseline at the source: the image (stored as uint8) rasterized, encoded and decoded
    assert (result.videos["rgb"][:, 0] - recon).abs().mean() < 0.01
    # later frames: hidden cells decode to exactly 0 (zero latent), visible ones do not all
    k = result.masks["latent"].shape[0] - 1
    hidden = ~result.masks["latent"][k]
    if hidden.any():
        assert result.videos["latent"][:, k][:, hidden].abs().max() < 1e-6


def test_readout_preview_needs_a_path(scene):
    with pytest.raises(ValueError, match="no camera path"):
        preview.run_readout_preview(scene)


def test_generation_result_with_a_tiny_random_pipeline(scene):
    """The GPU code path, on CPU with the real diffusers classes at tiny sizes and random weights."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    from mirage.codecs import WanVAECodec
    from mirage.depth import PlanarPriorBackend
    from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=48, out_channels=48,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip
    codec = WanVAECodec.from_config({"base_dim": 16, "decoder_base_dim": 16, "num_res_blocks": 1}, seed=0)
    pipe = MiragePipeline(transformer, codec.vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), depth_backend=PlanarPriorBackend())
    preview.preset_path(scene, "orbit_left", 10.0, 33)
    result = preview.run_generation(scene, pipe, seed=3, steps=2, prompt=None, prompt_embeds=torch.zeros(1, 4, 16))
    assert result.kind == "generation" and result.ranges == [(0, 33)]
    for m in ("latent", "rgb"):
        assert result.videos[m].shape == result.readouts[m].shape == (3, 33, 128, 256)
        assert result.masks[m].shape == (33, 128, 256)
        assert len(result.sizes[m]) == 2 and result.sizes[m][1] >= result.sizes[m][0]
        assert {"denoise", "decode", "depth", "update"} <= set(result.timings[m][0]) <= set(preview.plotting.STAGE_ORDER)
    assert "project" in result.timings["latent"][0] and {"rasterize", "encode"} <= set(result.timings["rgb"][0])
    assert result.counts[-1] == result.memory.num_points == len(result.memory_colors)
    # the readout's first frame is the image's own latent decoded (every cell of the room is seen)
    recon = codec.decode(codec.encode(scene.image[None, :, None]))[0, :, 0]  # [3, H, W]
    torch.testing.assert_close(result.readouts["latent"][:, 0], recon.float(), atol=1e-4, rtol=0)


def test_result_files_and_figures(scene, tmp_path):
    preview.preset_path(scene, "orbit_right", 15.0, 65)
    result = preview.run_readout_preview(scene)
    n_points = result.memory.num_points
    out = preview.finish_run(scene, result, tmp_path, "image")
    files = out.files
    for m in ("latent", "rgb"):
        assert read_video(files.videos[m]).shape == (3, 65, 128, 256)
        holes = read_video(files.masks[m])  # white = seen, dark red = hole
        assert holes.shape == (3, 65, 128, 256)
    assert read_video(files.side_by_side).shape == (3, 65, 128, 2 * 256 + 8)
    header = files.cache_ply.read_bytes()[:2000].split(b"end_header")[0].decode()
    assert f"element vertex {n_points}" in header and "property float latent_47" in header
    loaded = LatentSpatialMemory.load(files.cache_safetensors)
    torch.testing.assert_close(loaded.points, result.memory.points)
    assert [p.suffix for p in files.path_files] == [".txt", ".json", ".json"]
    assert len(files.downloads()) == 10  # 5 videos, 2 cache files, 3 path files
    timing, sizes, growth = out.figures
    assert {t.name for t in timing.data} >= {"project", "rasterize", "encode", "decode", "update"}
    assert [t.name for t in sizes.data] == [preview.METHOD_LABELS["latent"], preview.METHOD_LABELS["rgb"]]
    assert len(sizes.data[0].y) == 3
    assert len(growth.layout.sliders[0].steps) == 3  # init + 2 chunks
    json.loads(growth.to_json())
    assert "readout preview" in out.caption and scene.result is result and result.videos == {}


def test_scene_figure_colours(scene):
    fig = preview.scene_figure(scene, "image")
    assert fig.data[0].name == "points" and len(fig.data[0].x) == scene.memory.num_points
    first = "#%02x%02x%02x" % tuple(scene.colors[0].tolist())
    assert fig.data[0].marker.color[0] == first
    preview.preset_path(scene, "orbit_left", None, 33)
    fig = preview.scene_figure(scene, "latent")
    assert any("frusta (33)" in (t.name or "") for t in fig.data)
    with pytest.raises(ValueError, match="color_by"):
        preview.scene_figure(scene, "depth")


# -------------------------------------------------------------------------------- mode, dirs
def test_offline_mode_is_chosen_without_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(preview.MODEL_PATH_ENV, raising=False)
    monkeypatch.delenv(preview.OFFLINE_ENV, raising=False)
    mode = preview.detect_mode(cache_dir=tmp_path / "empty-cache")
    assert not mode.generation and mode.model_path is None
    assert "offline readout preview" in mode.banner() and mode.name == "offline readout preview"

    fake = tmp_path / "wan"
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        (fake / sub).mkdir(parents=True)
    monkeypatch.setenv(preview.MODEL_PATH_ENV, str(fake))
    assert preview.find_model_weights()[0] == str(fake)
    mode = preview.detect_mode()
    assert mode.generation == mode.cuda  # weights found: generation exactly when there is a GPU
    monkeypatch.setenv(preview.OFFLINE_ENV, "1")
    assert not preview.detect_mode().generation
    monkeypatch.setenv(preview.MODEL_PATH_ENV, str(tmp_path))  # no subfolders
    folder, why = preview.find_model_weights()
    assert folder is None and "lacks" in why


def test_gpu_duration_grows_with_frames_and_steps():
    assert preview.gpu_duration(65, 20) > preview.gpu_duration(33, 20)
    assert preview.gpu_duration(33, 40) > preview.gpu_duration(33, 20)
    assert preview.gpu_duration(33, 20) == int(60 + 2 * 1 * (0.25 * 20 + 6))


def test_session_dirs_are_created_lazily_and_removed(tmp_path):
    dirs = preview.SessionDirs(tmp_path / "root")
    assert list(dirs.root.iterdir()) == []
    a = dirs.get("abc123")
    (a / "x.mp4").write_bytes(b"0")
    b = dirs.get("def456")
    assert a.is_dir() and b.is_dir()
    assert dirs.remove("abc123") and not a.exists() and b.is_dir()  # one session's end leaves the other
    assert not dirs.remove("abc123") and not dirs.remove(None)
    with pytest.raises(ValueError, match="plain name"):
        dirs.get("../etc")
    (dirs.root / "not-ours").mkdir()
    dirs.remove_all()
    assert dirs.root.is_dir() and [p.name for p in dirs.root.iterdir()] == ["not-ours"]  # a given root is kept

    own = preview.SessionDirs()
    own.get("s1")
    own.remove_all()
    assert not own.root.exists()  # a root made here goes at exit
