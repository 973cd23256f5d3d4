"""Camera path I/O: bitwise round trips, analytic format checks, and every malformed-file error."""

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mirage.camera_io import (
    MAX_PATH_CAMERAS,
    MAX_PATH_FILE_BYTES,
    MAX_TRANSLATION,
    export_path_files,
    load_nerfstudio,
    load_path_file,
    load_path_json,
    load_re10k,
    save_nerfstudio,
    save_path_json,
    save_re10k,
)
from mirage.cameras import Camera, Cameras, look_at
from mirage.paths import make_preset_path

W, H = 96, 64


def random_cameras(n: int = 20, seed: int = 0, shared_K: bool = False) -> Cameras:
    """Generic float32 cameras: random rotations, translations and per-frame intrinsics."""
    rng = np.random.default_rng(seed)
    R = Rotation.random(n, random_state=seed).as_matrix()  # [n, 3, 3]
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3], T[:, :3, 3] = R, rng.normal(size=(n, 3)) * 3
    K = np.tile(np.eye(3), (n, 1, 1))
    K[:, 0, 0], K[:, 1, 1] = rng.uniform(40, 120, n), rng.uniform(40, 120, n)
    K[:, 0, 2], K[:, 1, 2] = rng.uniform(30, 60, n), rng.uniform(20, 40, n)
    if shared_K:
        K[:] = K[0]
    return Cameras(torch.from_numpy(K).float(), torch.from_numpy(T).float(), W, H)


def preset_cameras() -> Cameras:
    src = Camera.from_fov(W, H, 60.0, look_at(torch.tensor([0.3, -0.2, -1.0]), torch.tensor([0.5, 0.1, 1.0])))
    return Cameras.cat([make_preset_path(p, src, 9) for p in ("orbit_left", "zoom_in", "detour_revisit", "pan_up")])


def assert_bitwise(a: Cameras, b: Cameras) -> None:
    assert (a.width, a.height) == (b.width, b.height)
    assert a.K.dtype == b.K.dtype == torch.float32
    assert torch.equal(a.K, b.K)
    assert torch.equal(a.cam_from_world, b.cam_from_world)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("make", [random_cameras, preset_cameras])
def test_round_trips_are_bitwise(tmp_path, make):
    cams = make()
    assert_bitwise(load_path_json(save_path_json(tmp_path / "p.json", cams)), cams)
    assert_bitwise(load_nerfstudio(save_nerfstudio(tmp_path / "transforms.json", cams)), cams)
    stamps = [1000 * i + 7 for i in range(len(cams))]
    back, back_stamps = load_re10k(save_re10k(tmp_path / "p.txt", cams, stamps, url="https://x/y"), W, H)
    assert_bitwise(back, cams)
    assert back_stamps == stamps and all(type(s) is int for s in back_stamps)


def test_nerfstudio_tiny_translation_components_within_float64_rounding(tmp_path):
    """The documented limit: a centre stored in float64 cannot encode an exact 0 next to a 1."""
    n = 50
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3], T[:, :3, 3] = Rotation.random(n, random_state=1).as_matrix(), [1.0, 0.0, 0.0]
    cams = Cameras(torch.tensor([[50.0, 0, 48], [0, 50, 32], [0, 0, 1]]), torch.from_numpy(T).float(), W, H)
    back = load_nerfstudio(save_nerfstudio(tmp_path / "t.json", cams))
    assert torch.equal(back.cam_from_world[:, :3, :3], cams.cam_from_world[:, :3, :3])
    assert torch.equal(back.cam_from_world[:, :3, 3][:, 0], cams.cam_from_world[:, :3, 3][:, 0])
    assert float((back.cam_from_world - cams.cam_from_world).abs().max()) < 1e-15


def test_re10k_layout_is_analytic(tmp_path):
    cam_from_world = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    K = torch.tensor([[48.0, 0, 48], [0, 32, 32], [0, 0, 1]])  # centred principal point
    cams = Cameras(K, cam_from_world, W, H)
    path = save_re10k(tmp_path / "c.txt", cams, url="https://www.youtube.com/watch?v=abc", fps=20.0)
    lines = path.read_text().splitlines()
    assert lines[0] == "https://www.youtube.com/watch?v=abc"
    assert [float(v) for v in lines[1].split()] == [0, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, -1, 0, 1, 1, 0, 0, 2, 0, 0, 1, 3]
    # Normalized intrinsics are resolution free: read at twice the size, pixels double, cx stays centred.
    big, stamps = load_re10k(path, 2 * W, 2 * H)
    assert torch.equal(big.K[0], torch.tensor([[96.0, 0, 96], [0, 64, 64], [0, 0, 1]]))
    assert stamps == [0]
    two = save_re10k(tmp_path / "d.txt", Cameras.cat([cams, cams]), fps=16.0)
    assert load_re10k(two, W, H)[1] == [0, 62500]
    floats = save_re10k(tmp_path / "e.txt", cams, timestamps=[0.25])
    assert load_re10k(floats, W, H)[1] == [0.25]


def test_nerfstudio_layout_is_analytic(tmp_path):
    centre = torch.tensor([1.0, 2.0, 3.0])
    cam_from_world = torch.eye(4)
    cam_from_world[:3, 3] = -centre  # identity rotation, camera at (1, 2, 3)
    cams = Cameras(torch.tensor([[50.0, 0, 48.5], [0, 55, 32.25], [0, 0, 1]]), cam_from_world, W, H)
    meta = json.loads(save_nerfstudio(tmp_path / "transforms.json", cams).read_text())
    expected = [[1, 0, 0, 1], [0, -1, 0, 2], [0, 0, -1, 3], [0, 0, 0, 1]]  # OpenGL: y up, z backward
    assert meta["frames"][0]["transform_matrix"] == expected
    # Same pixel convention (centres at u + 1/2): cx, cy are copied unchanged; intrinsics shared -> global.
    assert (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["w"], meta["h"]) == (50, 55, 48.5, 32.25, W, H)
    assert "fl_x" not in meta["frames"][0]
    zoom = preset_cameras()  # per-frame intrinsics
    meta = json.loads(save_nerfstudio(tmp_path / "z.json", zoom).read_text())
    assert "fl_x" not in meta and all("fl_x" in f for f in meta["frames"])
    # A hand-written file with per-frame overrides of global intrinsics.
    hand = {"w": W, "h": H, "fl_x": 50, "fl_y": 50, "cx": 48, "cy": 32,
            "frames": [{"transform_matrix": expected}, {"transform_matrix": expected, "fl_x": 70, "fl_y": 70}]}  # fmt: skip
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    loaded = load_nerfstudio(tmp_path / "hand.json")
    assert loaded.K[:, 0, 0].tolist() == [50, 70]
    assert torch.allclose(loaded.centers, centre.expand(2, 3))
    assert torch.equal(loaded.cam_from_world[0], cam_from_world)


def test_load_path_file_detects_formats_and_rescales(tmp_path):
    cams = random_cameras(5, seed=3)
    files = export_path_files(cams, tmp_path / "out", "orbit", fps=20.0)
    assert set(files) == {"re10k", "nerfstudio", "mirage"}
    assert files["re10k"].name == "orbit_re10k.txt" and files["mirage"].name == "orbit_mirage.json"
    for fmt, path in files.items():
        assert path.is_file()
        assert_bitwise(load_path_file(path, W, H), cams)
    assert json.loads(files["mirage"].read_text())["fps"] == 20.0
    half = load_path_file(files["mirage"], W // 2, H // 2)  # same aspect ratio: rescaled
    assert torch.equal(half.K, cams.rescaled(W // 2, H // 2).K)
    with pytest.raises(ValueError, match="aspect ratio"):
        load_path_file(files["nerfstudio"], W, W)
    other = tmp_path / "path.csv"
    other.write_text("1,2,3")
    with pytest.raises(ValueError, match="'.csv'"):
        load_path_file(other, W, H)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_path_file(tmp_path / "nope.json", W, H)
    neither = tmp_path / "neither.json"
    neither.write_text(json.dumps({"frames": [{"pose": 1}]}))
    with pytest.raises(ValueError, match="neither"):
        load_path_file(neither, W, H)


# ----------------------------------------------------------------------------- malformed files
def good_re10k_line(ts: int = 0) -> str:
    return f"{ts} 0.5 0.75 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty file"),
        ("   \n\n", "empty file"),
        ("https://x\n", "no camera lines"),
        ("https://x\n" + good_re10k_line() + "\n0 0.5 0.75 0.5 0.5 0 0 1 0 0\n", r"line 3: expected 19 columns.*got 10"),
        ("https://x\n" + good_re10k_line().replace(" 0.75 ", " abc "), r"line 2, column 3: 'abc' is not a finite"),
        ("https://x\n" + good_re10k_line().replace(" 0.75 ", " nan "), r"line 2, column 3: 'nan'"),
        ("https://x\n\n" + good_re10k_line().replace(" 1 0 0 0 0 1", " 2 0 0 0 0 1", 1), r"line 3 \(frame 0\).*not a rigid"),
        (good_re10k_line() + "\n", "line 1 looks like a camera line"),
        ("https://x\n" + good_re10k_line().replace("0.5 0.75", "-0.5 0.75", 1), r"line 2 \(frame 0\).*positive focal"),
    ],
)
def test_re10k_malformed(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_re10k(path, W, H)
    assert "bad.txt" in str(info.value)
    assert str(tmp_path) not in str(info.value)  # the file's name only, never its folder


def ns_meta(**override) -> dict:
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}
    meta = {"camera_model": "OPENCV", "w": W, "h": H, "fl_x": 50.0, "fl_y": 50.0, "cx": 48.0, "cy": 32.0,
            "frames": [dict(frame), dict(frame)]}  # fmt: skip
    meta.update(override)
    return meta


def scaled_pose() -> list:
    m = np.eye(4)
    m[0, 0] = 1.5
    return m.tolist()


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "empty file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object at the top level"),
        (ns_meta(frames=[]), "missing or empty 'frames'"),
        (ns_meta(frames=[{"file_path": "a.png"}]), r"frames\[0\]: missing 'transform_matrix'"),
        ({k: v for k, v in ns_meta().items() if k != "fl_x"}, r"frames\[0\]: missing 'fl_x'"),
        (ns_meta(frames=[{"transform_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]), r"frames\[0\] transform_matrix: expected a 4x4"),
        (ns_meta(frames=[{"transform_matrix": np.eye(4).tolist()}, {"transform_matrix": scaled_pose()}]), r"frames\[1\]: .*not a rigid"),
        (ns_meta(frames=[{"transform_matrix": [[1, 0, 0, "x"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]), r"transform_matrix\[0\]\[3\]: 'x' is not a number"),
        (ns_meta(k1=0.1), r"distortion k1=0.1"),
        (ns_meta(camera_model="OPENCV_FISHEYE"), "'OPENCV_FISHEYE' is not supported"),
        (ns_meta(frames=[{"transform_matrix": np.eye(4).tolist(), "w": 10}, {"transform_matrix": np.eye(4).tolist()}]), "different image sizes"),
    ],
)  # fmt: skip
def test_nerfstudio_malformed(tmp_path, content, message):
    path = tmp_path / "transforms.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as info:
        load_nerfstudio(path)
    assert "transforms.json" in str(info.value)
    assert str(tmp_path) not in str(info.value)  # the file's name only, never its folder


def mirage_meta(**override) -> dict:
    frame = {"K": [[50.0, 0, 48], [0, 50, 32], [0, 0, 1]], "cam_from_world": np.eye(4).tolist()}
    meta = {"format": "mirage-path", "version": 1, "width": W, "height": H, "fps": 16, "frames": [frame]}
    meta.update(override)
    return meta


@pytest.mark.parametrize(
    "meta,message",
    [
        (mirage_meta(format="other"), "'format' must be 'mirage-path', got 'other'"),
        (mirage_meta(version=2), "unsupported version 2"),
        ({k: v for k, v in mirage_meta().items() if k != "height"}, "missing 'height'"),
        (mirage_meta(width=0), "width=0"),
        (mirage_meta(fps=-1), "'fps' must be positive"),
        (mirage_meta(frames=[{"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]), r"frames\[0\]: missing 'cam_from_world'"),
        (mirage_meta(frames=[{"K": [[1, 0, 0], [0, 1, 0], [0, 0, True]], "cam_from_world": np.eye(4).tolist()}]), r"frames\[0\] K\[2\]\[2\]: True is not a number"),
        (mirage_meta(frames=[mirage_meta()["frames"][0], {"K": [[50.0, 0, 48], [0, 50, 32], [0, 0, 1]], "cam_from_world": scaled_pose()}]), r"frames\[1\]: cam_from_world\[0\] is not a rigid"),
    ],
)  # fmt: skip
def test_mirage_json_malformed(tmp_path, meta, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as info:
        load_path_json(path)
    assert "mine.json" in str(info.value)
    assert str(tmp_path) not in str(info.value)  # the file's name only, never its folder


def test_save_argument_errors(tmp_path):
    skewed = Cameras(torch.tensor([[50.0, 1.0, 48], [0, 50, 32], [0, 0, 1]]), torch.eye(4), W, H)
    with pytest.raises(ValueError, match="skew"):
        save_re10k(tmp_path / "a.txt", skewed)
    with pytest.raises(ValueError, match="skew"):
        save_nerfstudio(tmp_path / "a.json", skewed)
    cams = random_cameras(3)
    with pytest.raises(ValueError, match="2 timestamps for 3 cameras"):
        save_re10k(tmp_path / "b.txt", cams, timestamps=[0, 1])
    with pytest.raises(ValueError, match="one line"):
        save_re10k(tmp_path / "c.txt", cams, url="a\nb")
    with pytest.raises(ValueError, match="stem"):
        export_path_files(cams, tmp_path, "a/b")


# ----------------------------------------------------------------------------- hostile files


def refused(load, path, match) -> str:
    """``load(path)`` raises ValueError matching ``match``, naming the file but not its folder."""
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    message = str(info.value)
    assert path.name in message and str(path.parent) not in message
    return message


def upload_folder(tmp_path):  # a folder like the server's upload temp folders
    folder = tmp_path / "gradio" / "abc123"
    folder.mkdir(parents=True)
    return folder


def test_limits_are_the_documented_ones():
    assert MAX_PATH_FILE_BYTES == 2 * 1024 * 1024 and MAX_PATH_CAMERAS == 10_000 and MAX_TRANSLATION == 1e6


@pytest.mark.parametrize("name", ["big.txt", "big.json"])
def test_file_over_the_size_limit_refused_before_reading(tmp_path, name):
    path = upload_folder(tmp_path) / name
    with open(path, "wb") as f:
        f.truncate(2**30)  # a sparse 1 GiB file: reading it would take seconds and a GiB of memory
    refused(lambda p: load_path_file(p, W, H), path,
            rf"^{name}: the file is 1073741824 bytes, more than the limit of 2097152 bytes \(2 MiB\) for a camera path")  # fmt: skip
    path.write_bytes(b"#" * (MAX_PATH_FILE_BYTES + 1))  # one byte over
    refused(lambda p: load_path_file(p, W, H), path, rf"^{name}: the file is 2097153 bytes, more than the limit")


def test_file_at_the_size_limit_is_read(tmp_path):
    path = save_re10k(tmp_path / "p.txt", random_cameras(3), url="https://x")
    text = path.read_text()
    path.write_text(text + " " * (MAX_PATH_FILE_BYTES - len(text)))  # exactly the limit, padded with blanks
    assert path.stat().st_size == MAX_PATH_FILE_BYTES
    assert_bitwise(load_path_file(path, W, H), random_cameras(3))


@pytest.mark.parametrize("name", ["bin.txt", "bin.json", "transforms.json"])
def test_binary_files_refused(tmp_path, name):
    folder = upload_folder(tmp_path)
    (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    refused(lambda p: load_path_file(p, W, H), folder / name, rf"^{name} is not a text file \(UTF-8\): byte 0 is b'\\x89'")
    (folder / name).write_bytes(b'{"frames": []}\x00\x00')  # valid UTF-8 but NUL bytes
    refused(lambda p: load_path_file(p, W, H), folder / name, rf"^{name} is not a text file \(UTF-8\): it contains NUL")


@pytest.mark.parametrize("load", [lambda p: load_path_file(p, W, H), load_nerfstudio, load_path_json])
def test_json_nested_too_deeply_refused(tmp_path, load):
    path = upload_folder(tmp_path) / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    refused(load, path, r"^deep\.json: JSON nested too deeply")
    path.write_text('{"frames": [' + "[" * 100000 + "]" * 100000 + "]}")
    refused(load, path, r"^deep\.json: JSON nested too deeply")
    path.write_text('{"w": ' + "1" * 5000 + "}")  # an integer over Python's 4300-digit limit
    refused(load, path, r"^deep\.json: not valid JSON: Exceeds the limit")


def test_nested_values_in_messages_are_bounded(tmp_path):
    deep = 1
    for _ in range(900):  # parses (json's limit is ~1000 levels), but a full repr would be 1800 characters
        deep = [deep]
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(ns_meta(frames=[{"transform_matrix": deep}])))
    message = refused(load_nerfstudio, path, r"frames\[0\] transform_matrix: expected a 4x4 list of lists, got \[\[\[\[\.\.\.\]\]\]\]$")
    assert len(message) < 200
    path.write_text(json.dumps(ns_meta(frames=[{"transform_matrix": [list(range(10000))] * 4}])))
    message = refused(load_nerfstudio, path, r"expected a 4x4 list of lists, got \[\[0, 1, 2, 3, 4, 5, \.\.\.\], ")
    assert len(message) < 300


def test_too_many_cameras_refused(tmp_path):
    folder = upload_folder(tmp_path)
    lines = "\n".join(good_re10k_line(i) for i in range(MAX_PATH_CAMERAS + 1))
    (folder / "many.txt").write_text("https://x\n" + lines + "\n")
    refused(lambda p: load_re10k(p, W, H), folder / "many.txt", r"^many\.txt: line 10002: more than the limit of 10000 cameras$")
    frame = {"transform_matrix": np.eye(4).tolist()}
    (folder / "many.json").write_text(json.dumps(ns_meta(frames=[frame] * (MAX_PATH_CAMERAS + 1))))
    refused(load_nerfstudio, folder / "many.json", r"^many\.json: 10001 frames, more than the limit of 10000 cameras$")
    (folder / "many.json").write_text(json.dumps(mirage_meta(frames=[{}] * (MAX_PATH_CAMERAS + 1))))
    refused(load_path_json, folder / "many.json", r"^many\.json: 10001 frames, more than the limit")


def test_the_camera_limit_is_inclusive(tmp_path):
    lines = "\n".join(good_re10k_line(i) for i in range(MAX_PATH_CAMERAS))
    (tmp_path / "limit.txt").write_text("https://x\n" + lines + "\n")
    cams, stamps = load_re10k(tmp_path / "limit.txt", W, H)
    assert len(cams) == MAX_PATH_CAMERAS and stamps[-1] == MAX_PATH_CAMERAS - 1


def translated(t: float) -> list:  # a 4x4 identity rotation with translation (t, 0, 0)
    m = np.eye(4)
    m[0, 3] = t
    return m.tolist()


def test_absurd_translations_refused(tmp_path):
    folder = upload_folder(tmp_path)
    line = good_re10k_line().split()
    line[10] = "2e6"  # t_x of the 3x4 matrix (columns 8..19 hold it row-major)
    (folder / "far.txt").write_text("https://x\n" + good_re10k_line() + "\n" + " ".join(line) + "\n")
    refused(lambda p: load_re10k(p, W, H), folder / "far.txt",
            r"^far\.txt: line 3 \(frame 1\): camera translation \|t\| = 2e\+06 m is absurd \(more than 1e\+06 m\)")  # fmt: skip
    frame = {"K": [[50.0, 0, 48], [0, 50, 32], [0, 0, 1]], "cam_from_world": translated(-3e7)}
    (folder / "far.json").write_text(json.dumps(mirage_meta(frames=[frame])))
    refused(load_path_json, folder / "far.json", r"^far\.json: frames\[0\]: camera translation \|t\| = 3e\+07 m is absurd")
    (folder / "transforms.json").write_text(json.dumps(ns_meta(frames=[{"transform_matrix": translated(1.5e6)}])))
    refused(load_nerfstudio, folder / "transforms.json", r"^transforms\.json: frames\[0\]: camera translation \|t\| = 1\.5e\+06 m")
    (folder / "transforms.json").write_text(json.dumps(ns_meta(frames=[{"transform_matrix": translated(1e308)}])))
    refused(load_nerfstudio, folder / "transforms.json", r"frames\[0\]: camera translation \|t\| = 1e\+308 m is absurd")
    (folder / "inf.json").write_text(json.dumps(ns_meta(frames=[{"transform_matrix": translated(1e300)}])).replace("1e+300", "1e999"))
    refused(load_nerfstudio, folder / "inf.json", r"^inf\.json: frames\[0\] transform_matrix\[0\]\[3\]: inf is not finite")


def test_large_but_plausible_translations_load(tmp_path):
    frames = [{"K": [[50.0, 0, 48], [0, 50, 32], [0, 0, 1]], "cam_from_world": translated(t)} for t in (0.0, 1e6, -1e6)]
    (tmp_path / "edge.json").write_text(json.dumps(mirage_meta(frames=frames)))
    cams = load_path_json(tmp_path / "edge.json")
    assert cams.cam_from_world[:, 0, 3].tolist() == [0.0, 1e6, -1e6]


def test_every_path_file_message_names_the_file_not_its_folder(tmp_path):
    folder = upload_folder(tmp_path)
    (folder / "bad.txt").write_text("https://x\n0 0.5 0.75\n")
    refused(lambda p: load_path_file(p, W, H), folder / "bad.txt", r"^bad\.txt: line 2: expected 19 columns")
    (folder / "bad.json").write_text(json.dumps({"frames": [{"pose": 1}]}))
    refused(lambda p: load_path_file(p, W, H), folder / "bad.json", r"^bad\.json: JSON is neither")
    (folder / "bad.json").write_text(json.dumps(mirage_meta(version=2)))
    refused(lambda p: load_path_file(p, W, H), folder / "bad.json", r"^bad\.json: unsupported version 2")
    (folder / "p.csv").write_text("1,2")
    refused(lambda p: load_path_file(p, W, H), folder / "p.csv", r"^p\.csv: unknown camera path format '\.csv'")
    save_path_json(folder / "square.json", random_cameras(2))
    refused(lambda p: load_path_file(p, W, W), folder / "square.json", r"^square\.json: stored for 96x64, which has another aspect")
    with pytest.raises(FileNotFoundError, match=r"^camera path file not found: nope\.json$"):
        load_path_file(folder / "nope.json", W, H)
    with pytest.raises(FileNotFoundError, match=r"^camera path file not found: nope\.txt$"):
        load_re10k(folder / "nope.txt", W, H)
