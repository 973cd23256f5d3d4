"""Hostile and absurd inputs through the launched app's HTTP API (``gradio_client``): every one is
refused with a message that names the problem (and the file, by its name only: no server path),
logged as one line without a traceback; nothing is executed, nothing changes for the session, and
the app keeps serving."""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from test_app_http import EXAMPLE, PATH_CTL, free_port, launch_app, stop_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from mirage.paths import KEYFRAME_COLUMNS  # noqa: E402

IMAGE_HW = (90, 160)  # the good upload every depth map goes with


class _Touch:
    """Unpickling this runs ``os.mkdir(marker)``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _npy_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy whose header claims ``shape`` with only a few bytes of data behind it."""
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64)
    return path


def _re10k_line(i: int, tx: float = 0.0) -> str:
    return f"{i} 0.5 0.9 0.5 0.5 0 0 1 0 0 {tx:g} 0 1 0 0 0 0 1 0\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    proc, url = launch_app(tmp, free_port(), flags=True)
    yield url, tmp
    stop_app(proc)


@pytest.fixture(scope="module")
def files(served):
    """The hostile files, made once."""
    d = served[1] / "inputs"
    d.mkdir()
    f = {}
    rng = np.random.default_rng(0)
    H, W = IMAGE_HW
    f["photo"] = d / "photo.png"
    PIL.Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(f["photo"])
    f["fake"] = d / "fake.png"
    f["fake"].write_text("text with an image extension")
    f["bomb"] = _png_claiming(d / "bomb.png", 100_000, 100_000)
    np.savez(d / "arrays.npz", depth=np.ones((H, W), np.float32))
    f["npz"] = d / "renamed.npy"
    (d / "arrays.npz").rename(f["npz"])
    f["huge_npy"] = _npy_claiming(d / "huge.npy", (200_000, 200_000))
    f["marker"] = d / "pickle-ran"
    f["pickle"] = d / "evil.npy"
    np.save(f["pickle"], np.array([_Touch(f["marker"])], dtype=object), allow_pickle=True)
    for name, value in (("tiny", np.full((H, W), 1e-30, np.float32)), ("zeros", np.zeros((H, W), np.float32)),
                        ("inf", np.full((H, W), np.inf, np.float32)), ("cube", np.ones((H, W, 3), np.float32))):  # fmt: skip
        f[name] = d / f"{name}.npy"
        np.save(f[name], value)
    one = np.full((H, W), np.nan, np.float32)
    one[H // 2, W // 2] = 2.0
    f["one_pixel"] = d / "one_pixel.npy"
    np.save(f["one_pixel"], one)
    f["nested"] = d / "nested.json"
    f["nested"].write_text("[" * 100_000 + "]" * 100_000)
    f["binary"] = d / "binary.txt"
    f["binary"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f["big_path"] = d / "big_re10k.txt"
    with open(f["big_path"], "w") as out:
        out.write("https://example.com\n")
        out.writelines(_re10k_line(i) for i in range(60_000))  # ~2.9 MB
    f["absurd"] = d / "absurd_re10k.txt"
    f["absurd"].write_text("https://example.com\n" + _re10k_line(0) + _re10k_line(1, 1e30))
    f["far"] = d / "far_re10k.txt"
    f["far"].write_text("https://example.com\n" + _re10k_line(0) + _re10k_line(1, 1000.0))
    return f


def _refused(call, pattern: str, served) -> str:
    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert re.search(pattern, message), (pattern, message)
    assert str(served[1]) not in message and "/tmp/" not in message, message  # no server path
    return message


def test_hostile_inputs_are_refused_by_name(served, files):
    url, tmp = served
    c = Client(url, verbose=False)
    c.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")

    def upload(image, depth=None, choice="auto"):
        return lambda: c.predict(handle_file(image), None if depth is None else handle_file(depth), choice, 60, 256,
                                 *PATH_CTL, api_name="/load_image")  # fmt: skip

    photo = files["photo"]
    table = [  # (what, call, the message expected)
        ("text named .png", upload(files["fake"]), r"not an image file.*fake\.png"),
        ("PNG header claiming 100000x100000", upload(files["bomb"]), r"bomb\.png.*too large"),
        (".npz renamed .npy", upload(photo, files["npz"], "upload"), r"renamed\.npy.*\.npz"),
        (".npy header claiming 200000x200000", upload(photo, files["huge_npy"], "upload"), r"huge\.npy.*200000x200000.*too large"),
        ("pickled object .npy", upload(photo, files["pickle"], "upload"), r"evil\.npy.*dtype"),
        ("depth of 1e-30 m everywhere", upload(photo, files["tiny"], "upload"), r"tiny\.npy.*without usable geometry"),
        ("depth with one valid pixel", upload(photo, files["one_pixel"], "upload"), r"one_pixel\.npy.*without usable geometry"),
        ("depth of zeros", upload(photo, files["zeros"], "upload"), r"zeros\.npy.*no valid pixel"),
        ("depth of inf", upload(photo, files["inf"], "upload"), r"inf\.npy.*no valid pixel"),
        ("3-D depth", upload(photo, files["cube"], "upload"), r"cube\.npy.*2-D"),
        ("JSON nested 100000 deep", lambda: c.predict(handle_file(files["nested"]), 33, "latent", api_name="/import_path"),
         r"nested\.json.*nested too deeply"),
        ("binary path file", lambda: c.predict(handle_file(files["binary"]), 33, "latent", api_name="/import_path"),
         r"binary\.txt.*not a text file"),
        ("2.9 MB path file", lambda: c.predict(handle_file(files["big_path"]), 33, "latent", api_name="/import_path"),
         r"big_re10k\.txt: the file is \d+ bytes, more than the limit of 2097152 bytes"),
        ("translation of 1e30 m", lambda: c.predict(handle_file(files["absurd"]), 33, "latent", api_name="/import_path"),
         r"absurd_re10k\.txt"),
        ("translation of 1000 m", lambda: c.predict(handle_file(files["far"]), 33, "latent", api_name="/import_path"),
         r"the path leaves the scene"),
        ("pan of 1e9 degrees", lambda: c.predict("pan_left", 1e9, 33, "latent", api_name="/preset_path"),
         r"'pan_left' must be finite and in \[0, 360\]"),
        ("dolly out of 1e9", lambda: c.predict("dolly_out", 1e9, 33, "latent", api_name="/preset_path"),
         r"'dolly_out' must be finite and in \[0, 10\]"),
        ("dolly in 0.85", lambda: c.predict("dolly_in", 0.85, 33, "latent", api_name="/preset_path"),
         r"the camera would go through the scene"),
        ("dolly in 0.88", lambda: c.predict("dolly_in", 0.88, 33, "latent", api_name="/preset_path"),
         r"the camera would go through the scene"),
        ("10**12 frames", lambda: c.predict("orbit_left", 20, 10**12, "latent", api_name="/preset_path"), r"too many frames"),
        ("-5 frames", lambda: c.predict("orbit_left", 20, -5, "latent", api_name="/preset_path"), r"-5"),
        ("6-column keyframes", lambda: c.predict({"headers": list(KEYFRAME_COLUMNS[:6]), "data": [[0] * 6, [0.1] * 6]}, 33,
                                                 "latent", api_name="/keyframe_path"), r"row 1 has 6 values, expected 7"),
        ("8-column keyframes", lambda: c.predict({"headers": [*KEYFRAME_COLUMNS, "extra"], "data": [[0] * 7 + [1], [0] * 7 + [1]]},
                                                 33, "latent", api_name="/keyframe_path"), r"row 1 has 8 values, expected 7"),
    ]  # fmt: skip
    t0 = time.time()
    for what, call, pattern in table:
        start = time.time()
        message = _refused(call, pattern, served)
        print(f"{what:38s} {time.time() - start:5.2f} s  {message[:110]}")
    print(f"{len(table)} refusals in {time.time() - t0:.1f} s")
    assert not files["marker"].exists()  # the pickle was never loaded

    # nothing changed for the session: its scene and path are the example's, and it still runs
    summary, _, status = c.predict("orbit_right", 10, 33, "latent", api_name="/preset_path")
    assert "motorcycle" in summary and status.startswith("Path set: preset orbit_right")
    assert c.predict(0, 20, 5.0, "", "", "replace", "latent", api_name="/run")[1].endswith(".mp4")
    log = (tmp / "app.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("refused") >= len(table) - 1, log[-3000:]  # one line each (the -5 frames may fail in the client)


def test_odd_images_are_accepted(served, tmp_path):
    """Modes a camera, an editor or a scanner writes load, each with the planar prior."""
    c = Client(served[0], verbose=False)
    rng = np.random.default_rng(1)
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8))
    images = {
        "cmyk.jpg": rgb.convert("CMYK"), "gray_alpha.png": rgb.convert("LA"), "palette.png": rgb.convert("P"),
        "bilevel.png": rgb.convert("1"), "deep.png": PIL.Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257),
    }  # fmt: skip
    for name, image in images.items():
        image.save(tmp_path / name)
        _, summary, *_ = c.predict(handle_file(tmp_path / name), None, "planar-prior", 60, 256, *PATH_CTL, api_name="/load_image")
        assert name in summary and "planar prior" in summary, summary
    json.dumps(summary)
