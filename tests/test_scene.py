"""Tests for mirage.scene: scenes from examples and uploads, the four path sources, figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mirage import camera_io
from mirage import scene as preview
from mirage.cameras import Cameras, look_at
from mirage.codecs import OfflineCodec
from mirage.depth import weights_available
from mirage.geometry import valid_depth
from mirage.synthetic import default_camera, default_scene

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


def test_the_gpu_working_sizes_are_the_models_and_each_familys_own(room):
    """704x1280 (Wan2.2-TI2V-5B) and Spatia's 704x1248 (its inference.py --height / --width), portrait
    inputs turned; a preview size keeps the model aspect."""
    from mirage.families import FAMILIES

    assert preview.GPU_SIZES == {1280: 704, 1248: 704} and FAMILIES["spatia"].defaults.size == (704, 1248)
    assert preview.build_scene(room, 1248).size == (704, 1248)
    portrait = preview.RawScene("tall", room.image.transpose(1, 2), room.depth.T, room.K[[1, 0, 2]][:, [1, 0, 2]], "gt")
    assert preview.build_scene(portrait, 1248).size == (1248, 704)


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
def test_preset_path_and_a_path_that_leaves_the_scene(scene):
    preview.preset_path(scene, "orbit_left", 15.0, 65)
    assert len(scene.path) == 65 and scene.path_label.startswith("preset orbit_left")
    torch.testing.assert_close(scene.path.cam_from_world[0], torch.eye(4))
    before, label, recipe = scene.path, scene.path_label, scene.recipe
    with pytest.raises(ValueError, match="through the scene"):
        preview.preset_path(scene, "dolly_in", 2.0, 33)
    with pytest.raises(ValueError, match="too many frames"):
        preview.preset_path(scene, "orbit_left", None, 165, max_frames=161)
    assert scene.path is before and (scene.path_label, scene.recipe) == (label, recipe)  # a bad input leaves the scene as it was
    with pytest.raises(ValueError, match="no scene yet"):
        preview.preset_path(None, "orbit_left", None, 33)


def _stroke_editor(H: int, W: int, start: tuple[int, int], end: tuple[int, int]) -> dict:
    layer = np.zeros((H, W, 4), np.uint8)  # [H, W, RGBA]
    for t in np.linspace(0, 1, 200):
        u, v = (1 - t) * np.array(start) + t * np.array(end)
        layer[int(v) - 2 : int(v) + 3, int(u) - 2 : int(u) + 3] = (255, 0, 0, 255)
    return {"background": np.zeros((H, W, 4), np.uint8), "layers": [layer], "composite": None}


def test_a_stroke_says_how_far_it_may_go_and_the_limit_is_the_last_fraction_that_works(scene):
    """A stroke straight into the room: 90% of the depth passes the 10% safety margin, so it is refused
    in words (no metres or pixels) with the largest fraction on the slider's grid that works; that
    fraction is accepted and recorded, the next one up is refused."""
    H, W = scene.size
    editor = _stroke_editor(H, W, (W // 2, H // 2), (W // 2 + 30, H // 2 + 10))
    with pytest.raises(ValueError, match=r"at 90% of the depth under this stroke the camera would pass through the scene; "
                                         r"it works up to (\d+)%\.$") as err:  # fmt: skip
        preview.stroke_path(scene, editor, 33, depth_fraction=0.9)
    assert " m " not in str(err.value) and "pixel" not in str(err.value)
    limit = int(re.search(r"up to (\d+)%", str(err.value)).group(1)) / 100
    assert limit in preview.STROKE_FRACTIONS and limit < 0.9
    preview.stroke_path(scene, editor, 33, depth_fraction=0.3)
    assert scene.recipe.depth_limit == limit  # recorded with the accepted stroke: the slider's top
    preview.stroke_path(scene, editor, 33, depth_fraction=limit)
    above = preview.STROKE_FRACTIONS[preview.STROKE_FRACTIONS.index(limit) + 1]
    with pytest.raises(ValueError, match="pass through the scene"):
        preview.stroke_path(scene, editor, 33, depth_fraction=above)
    assert scene.recipe.depth_fraction == limit  # the refusal changed nothing


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


def test_scene_figure_colours(scene):
    """The latent cells as quads in image colour (two faces each), the pixel memory's cloud hidden
    until picked, the view from the source camera."""
    fig = preview.scene_figure(scene, "image")
    cells, pixels = fig.data[0], fig.data[1]
    N = scene.memory.num_points
    assert cells.type == "mesh3d" and len(cells.x) == 4 * N and len(cells.i) == 2 * N
    first = "#%02x%02x%02x" % tuple(scene.colors[0].tolist())
    assert cells.facecolor[0] == cells.facecolor[1] == first
    M = int(valid_depth(scene.depth).sum())  # every pixel with depth, subsampled to 20,000 for the page
    assert pixels.visible == "legendonly" and len(pixels.x) == min(M, 20000) and f"of {M:,} points" in pixels.name
    assert fig.layout.scene.camera.up.y == -1 and fig.layout.scene.aspectmode == "manual"
    preview.preset_path(scene, "orbit_left", None, 33)
    fig = preview.scene_figure(scene, "latent")
    assert any("frusta (12 of 33 frames" in (t.name or "") for t in fig.data)
    with pytest.raises(ValueError, match="color_by"):
        preview.scene_figure(scene, "depth")


def test_rebuild_at_another_size_keeps_the_path_motion():
    raw = preview.raw_from_example("motorcycle")  # an off-centre principal point: the crop differs between sizes
    small = preview.build_scene(raw, 256)
    preview.preset_path(small, "orbit_left", 15.0, 33)
    big = preview.rebuild_at(small, 512)
    assert big.size == (288, 512) and len(big.path) == 33 and big.path_label == small.path_label
    assert torch.equal(big.path.K[0], big.camera.K)  # frame 0 is the new source camera
    torch.testing.assert_close(big.path.cam_from_world, small.path.cam_from_world, atol=1e-6, rtol=0)  # same motion
    zoom = big.path.K[:, 0, 0] / small.path.K[:, 0, 0]
    torch.testing.assert_close(zoom, torch.full_like(zoom, 2.0), atol=1e-4, rtol=0)


def test_the_active_path_is_made_again_from_its_recipe(scene):
    """A control's change (frames, a stroke's depth) re-makes whatever path is active; a refused
    change leaves the path, its label and its recipe as they were."""
    from mirage.scene import remake_path

    preview.preset_path(scene, "pan_right", 10.0, 33)
    remake_path(scene, 65)
    assert len(scene.path) == 65 and scene.recipe.kind == "preset" and scene.recipe.amount == 10.0
    again = preview.preset_path(scene, "pan_right", 10.0, 65).path
    assert torch.equal(scene.path.cam_from_world, again.cam_from_world)

    editor = {"background": None, "layers": [np.zeros((scene.size[0], scene.size[1], 4), np.uint8)], "composite": None}
    H, W = scene.size
    editor["layers"][0][H // 2, W // 2 : W // 2 + W // 4] = (255, 0, 0, 255)  # a horizontal stroke to the right
    preview.stroke_path(scene, editor, 33, 0.3)
    near = scene.path.centers[-1].clone()
    remake_path(scene, 33, depth_fraction=0.6)
    assert scene.recipe.kind == "stroke" and scene.recipe.depth_fraction == 0.6
    assert float(scene.path.centers[-1].norm()) > float(near.norm())  # farther along the same stroke

    path, label, recipe = scene.path, scene.path_label, scene.recipe
    with pytest.raises(ValueError, match="4N\\+1"):
        remake_path(scene, 64)
    with pytest.raises(ValueError, match="depth fraction"):
        remake_path(scene, 33, depth_fraction=1.5)
    assert (scene.path, scene.path_label, scene.recipe) == (path, label, recipe)


def test_a_source_view_without_usable_geometry_is_refused(room):
    """Depth outside 1 mm .. 100 km counts as invalid; a scene needs 10% of its view valid."""
    tiny = preview.RawScene("tiny.png", room.image, torch.full_like(room.depth, 1e-30), room.K, "uploaded depth map (tiny.npy)")
    with pytest.raises(ValueError, match=r"'tiny\.png' \(uploaded depth map \(tiny\.npy\)\) leaves the source view without "
                                         r"usable geometry: 0\.00% .* values span 1e-30 to 1e-30 m"):  # fmt: skip
        preview.build_scene(tiny, 256)
    one = torch.full_like(room.depth, float("nan"))
    one[80, 128] = 2.0
    with pytest.raises(ValueError, match="without usable geometry"):
        preview.build_scene(preview.RawScene("one.png", room.image, one, room.K, "file"), 256)
    # 15% of the view at plausible depth: built, with the implausible rest made invalid (no point from it)
    mixed = torch.full_like(room.depth, 1e9)
    mixed[:, : int(0.15 * mixed.shape[1]) + 8] = 3.0
    state = preview.build_scene(preview.RawScene("mixed.png", room.image, mixed, room.K, "file"), 256)
    assert torch.isnan(state.depth[:, -1]).all() and (state.depth[:, 0] == 3.0).all()
    assert float(state.memory.points[:, 2].max()) <= 3.0 + 1e-4


def test_compact_raw_keeps_only_what_the_largest_working_size_needs(room):
    big = preview.RawScene("big", torch.nn.functional.interpolate(room.image[None], scale_factor=4, mode="bilinear")[0],
                           torch.nn.functional.interpolate(room.depth[None, None], scale_factor=4)[0, 0], room.K * 4,
                           "ground truth")  # fmt: skip
    big.K[2, 2] = 1.0
    small = preview.compact_raw(big, 512)
    assert small.image.shape == (3, 288, 512) and small.depth.shape == (288, 512)  # the 512-px working size
    assert preview.compact_raw(small, 512) is small and preview.compact_raw(room, 512) is room  # nothing larger kept
    a, b = preview.build_scene(small, 256), preview.build_scene(big, 256)
    assert a.size == b.size
    torch.testing.assert_close(a.camera.K, b.camera.K, atol=1e-3, rtol=0)  # the same camera either way
    torch.testing.assert_close(a.image, b.image, atol=0.05, rtol=0)  # and the same picture, up to resampling


def test_another_working_size_keeps_the_path_and_how_it_was_made(scene, room):
    """A keyframe path survives a size change with its recipe (so a frame count still re-makes it);
    a stroke's pixels follow the new size."""
    preview.preset_path(scene, "pan_left", 10.0, 33)
    preview.keyframe_path(scene, preview.default_keyframe_rows(scene), 33)
    big = preview.rebuild_at(scene, 512)
    assert big.path_label == scene.path_label and big.recipe.kind == "keyframes"  # the controls' values: test_app_runtime
    from mirage.scene import remake_path

    remake_path(big, 65)
    assert len(big.path) == 65 and big.recipe.kind == "keyframes"

    H, W = scene.size
    editor = _stroke_editor(H, W, (W // 2, H // 2), (W - 20, H // 2))
    preview.stroke_path(scene, editor, 33, depth_fraction=0.4)
    big = preview.rebuild_at(scene, 512)
    # 256x160 input: cropped to 256x128 (16 rows off the top), and at 512 scaled by 2 to 512x320, cropped to
    # 512x288 (16 rows off the top): v' = 2 (v + 16) - 16, u' = 2 u
    expected = scene.recipe.stroke * 2 + torch.tensor([0.0, 16.0])
    torch.testing.assert_close(big.recipe.stroke, expected, atol=1e-4, rtol=0)
    assert big.recipe.depth_fraction == 0.4
