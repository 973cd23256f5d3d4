"""The app through its real HTTP interface: ``python app.py`` in a subprocess (offline mode, free port),
driven with ``gradio_client`` through the named endpoints."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from mirage.paths import KEYFRAME_COLUMNS  # noqa: E402
from mirage.video import read_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ("motorcycle", "auto", 256)  # name, depth source, working size (long side)
PATH_CTL = ("orbit_left", 20, 33, "latent")  # preset, amount, frames, colour


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(tmp: Path, port: int, *, flags: bool, generation: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """Start ``python app.py`` on ``port`` (``--host/--port`` flags, or gradio's environment variables
    ``GRADIO_SERVER_NAME/PORT``), offline, or in generation mode on the CPU with the checkpoint folder
    ``generation``; return (process, base url) once it serves its page."""
    args = ["--host", "127.0.0.1", "--port", str(port)] if flags else []
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MIRAGE_")},
        "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(tmp / "gradio"), "NO_PROXY": "127.0.0.1,localhost",
    }  # fmt: skip
    if generation is None:
        full_env["MIRAGE_OFFLINE"] = "1"
    else:
        full_env.update(MIRAGE_MODEL_PATH=str(generation), MIRAGE_DEVICE="cpu")
    if not flags:
        full_env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    full_env.update(env or {})
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{(tmp / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"app.py did not serve {url} within 120 s:\n{(tmp / 'app.log').read_text()}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_http")
    proc, url = launch_app(tmp, free_port(), flags=False)  # gradio's own environment variables, as on a Space
    yield url, tmp
    stop_app(proc)


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


def array(v) -> np.ndarray:
    """A plotly JSON array: a list, or numpy data as ``{"dtype", "bdata"}`` (base64)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def plot_json(value) -> dict:
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def test_page_and_named_endpoints(app, client):
    with urllib.request.urlopen(app[0], timeout=10) as r:
        html = r.read().decode()
    assert "Mirage" in html
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    expected = {"/load_example", "/load_image", "/preset_path", "/stroke_path", "/keyframe_path", "/import_path", "/export_path", "/run",
                "/resume", "/add_segment", "/undo", "/stop", "/share", "/shared_result"}
    assert expected == set(api)  # the page's own handlers are private and take no public name


def test_example_preset_run(client):
    editor, summary, plot, table, status = client.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")
    assert Path(editor["background"]).is_file() and "ground truth" in summary and status.startswith("Loaded")
    fig = plot_json(plot)
    assert fig["data"][0]["name"] == "latent cells (each cell's footprint)" and any("frusta (12 of 33 frames" in t.get("name", "") for t in fig["data"])
    assert table["headers"] == list(KEYFRAME_COLUMNS) and len(table["data"]) == 3

    summary, plot, status = client.predict("orbit_right", 15, 65, "image", api_name="/preset_path")
    assert "65 frames" in status and any("frusta (12 of 65 frames" in t.get("name", "") for t in plot_json(plot)["data"])

    job = client.submit(0, 20, 5.0, "", "", "replace", "latent", api_name="/run")
    progress = []
    while not job.done():
        progress += [p.desc for p in job.status().progress_data or [] if p.desc]
        time.sleep(0.05)
    progress += [out[0] for out in job.outputs()]  # the status line streamed with every update
    status, latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask, side, timing, sizes, growth, downloads, caption = job.result()
    assert status.startswith("**Done**"), status
    assert any(d.startswith("Chunk 2 of 2 · ") for d in progress), progress  # the long work reports its progress
    for path in (latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask):
        assert read_video(path).shape == (3, 65, 128, 256)
    assert read_video(side).shape[1:3] == (65, 128)
    stages = {t["name"] for t in plot_json(timing)["data"]}
    assert {"project", "rasterize", "encode", "decode", "update"} <= stages
    size_traces = plot_json(sizes)["data"]
    assert len(size_traces) == 2 and all(len(array(t["y"])) == 3 for t in size_traces)
    assert len(plot_json(growth)["layout"]["sliders"][0]["steps"]) == 3
    names = {Path(p).name for p in downloads}
    assert {"latent_cache.ply", "latent_cache.safetensors", "camera_path_re10k.txt", "camera_path_transforms.json",
            "camera_path_mirage.json", "side_by_side_render.mp4", "latent_model_input.mp4"} <= names  # fmt: skip
    assert "readout preview" in caption


def _stroke_layer(path: Path, H: int, W: int) -> Path:
    layer = np.zeros((H, W, 4), np.uint8)  # [H, W, RGBA]
    v = H // 2
    layer[v - 3 : v + 3, W // 2 : W - 30] = (255, 45, 45, 255)  # centre -> right
    PIL.Image.fromarray(layer).save(path)
    return path


def test_stroke_keyframes_export_import(client, tmp_path):
    editor, *_ = client.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")
    W, H = PIL.Image.open(editor["background"]).size
    layer = _stroke_layer(tmp_path / "layer.png", H, W)
    value = {"background": handle_file(editor["background"]), "layers": [handle_file(layer)], "composite": None, "id": None}
    _, plot, status = client.predict(value, 33, 0.5, "source", "latent", api_name="/stroke_path")
    assert status.startswith("Path set: stroke")
    traj = next(t for t in plot_json(plot)["data"] if t.get("name") == "trajectory")
    assert array(traj["x"])[-1] > 0.05  # the camera travels right along the stroke

    rows = [[0, 0, 0, 0, 0, 0, 40], [0.2, 0, 0.2, 5, 0, 0, 40]]
    _, _, status = client.predict({"headers": list(KEYFRAME_COLUMNS), "data": rows}, 33, "latent", api_name="/keyframe_path")
    assert "2 keyframes" in status

    files = client.predict(api_name="/export_path")
    assert sorted(Path(f).suffix for f in files) == [".json", ".json", ".txt"]
    mirage_json = next(f for f in files if f.endswith("_mirage.json"))
    _, _, status = client.predict(handle_file(mirage_json), 33, "latent", api_name="/import_path")
    assert "imported" in status and "33 frames" in status


def test_bad_inputs_return_errors_and_the_app_keeps_serving(app, tmp_path):
    a, b = Client(app[0], verbose=False), Client(app[0], verbose=False)  # two sessions
    with pytest.raises(AppError, match="no scene yet"):
        a.predict(*PATH_CTL, api_name="/preset_path")
    b.predict(*EXAMPLE, "truck_right", None, 33, "latent", api_name="/load_example")

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    image = tmp_path / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(image)
    np.save(tmp_path / "square.npy", np.ones((40, 40), np.float32))
    np.save(tmp_path / "nan.npy", np.full((90, 160), np.nan, np.float32))
    bad_path = tmp_path / "path.txt"
    bad_path.write_text("https://example.com\n0 0.5 0.9 0.5 0.5 0 0 1 0 0\n")

    def upload(img, depth, choice="auto"):
        return a.predict(handle_file(img), None if depth is None else handle_file(depth), choice, 60, 256, *PATH_CTL,
                         api_name="/load_image")  # fmt: skip

    fake = tmp_path / "fake.png"
    fake.write_text("text with an image extension")
    with pytest.raises(AppError, match=r"not an image file.*fake\.png"):
        upload(fake, None)
    with pytest.raises(AppError, match="Invalid file type"):  # gradio's own check of the extension
        upload(notes, None)
    with pytest.raises(AppError, match=r"depth map is 40x40 \(WxH\) but the image is 160x90"):
        upload(image, tmp_path / "square.npy", "upload")
    with pytest.raises(AppError, match="no valid pixel"):
        upload(image, tmp_path / "nan.npy", "upload")
    _, summary, *_ = upload(image, None, "planar-prior")  # a good upload in session a
    assert "planar prior" in summary
    with pytest.raises(AppError, match=r"path\.txt: line 2"):
        a.predict(handle_file(bad_path), 33, "latent", api_name="/import_path")
    with pytest.raises(AppError, match="the camera would go through the scene"):
        a.predict("dolly_in", 3.0, 33, "latent", api_name="/preset_path")
    with pytest.raises(AppError, match="too many frames: 401"):
        a.predict("orbit_left", 20, 401, "latent", api_name="/preset_path")

    # session a still has its last good path; session b was never disturbed
    _, _, status = a.predict("pan_left", 10, 33, "latent", api_name="/preset_path")
    assert status.startswith("Path set: preset pan_left")
    summary, _, status = b.predict("orbit_left", 10, 33, "latent", api_name="/preset_path")
    assert "motorcycle" in summary and "ground truth" in summary
    out = b.predict(0, 20, 5.0, "", "", "replace", "latent", api_name="/run")
    assert read_video(out[1]).shape == (3, 33, 128, 256)


def test_readme_app_command_serves_the_full_ui(tmp_path):
    """The README's app command, as written, on this machine (no weights, no GPU, no network): it must
    choose offline mode by itself and serve every part of the UI."""
    readme = (ROOT / "README.md").read_text()
    command = next(line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("bash run.sh app"))
    venv_ready = any((ROOT / ".venv").glob(".installed-*"))
    if not venv_ready:
        if os.environ.get("CI"):
            pytest.fail("bash run.sh test should have created .venv before running the tests")
        pytest.skip("no .venv here (the tests run outside run.sh); CI runs this through `bash run.sh test`")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MIRAGE_OFFLINE", "MIRAGE_MODEL_PATH")},
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "NO_PROXY": "127.0.0.1,localhost",
    }  # fmt: skip
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen(command.split(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        config = None
        while time.time() < deadline and config is None:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    config = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert config is not None, (tmp_path / "app.log").read_text()
        text = json.dumps(config)
        for part in ("offline readout preview", "Generate (readout preview)", "Latent cache: each cell's patch, seen from the source camera",
                     "Use stroke as path", "Keyframes", "Import path", "Time per stage", "Cache size after the image",
                     "Active path", "Preset (applies at once)"):
            assert part in text, part
        assert {d.get("api_name") for d in config["dependencies"]} >= {"load_example", "preset_path", "run", "export_path"}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def test_readme_api_example_runs_as_written(app, capsys):
    """The README's ``gradio_client`` example, against this app (only its URL replaced)."""
    readme = (ROOT / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```python\n")[1:] if "from gradio_client import Client" in b)
    exec(compile(block.replace("http://127.0.0.1:7860/", app[0]), "README.md", "exec"), {})
    assert "\n**Done**: preset orbit_right (15 degrees), 2 chunk(s), 65 frames" in capsys.readouterr().out


def test_two_runs_on_two_scenes_give_two_runs_files(client):
    """Generate, load another scene, Generate: every result is the second run's, at new URLs (a browser
    keeps what it fetched from a URL it has seen)."""
    outs = []
    for example in ("motorcycle", "synthetic-room"):
        client.predict(example, "auto", 256, "orbit_left", 10, 33, "latent", api_name="/load_example")
        outs.append(client.predict(0, 20, 5.0, "", "", "replace", "latent", api_name="/run"))
    (status1, latent1, *_, caption1), (status2, latent2, *_, caption2) = outs
    assert status1.startswith("**Done**") and status2.startswith("**Done**")
    assert Path(latent1).parent != Path(latent2).parent  # a folder of its own: no URL reused
    assert read_video(latent1).shape != read_video(latent2).shape or not np.array_equal(read_video(latent1), read_video(latent2))
    assert "synthetic-room" in caption2 and "motorcycle" not in caption2, caption2


def test_revisit_numbers_on_the_rooms_detour(client):
    """The synthetic room's detour comes back to the start pose (frames 62-64 of 65): each memory's
    caption line says how close those frames are to frame 0. At the exact start pose (frame 64) both
    readouts equal frame 0's (exact depth, fusion: nothing new lands there), so the scores are high."""
    client.predict("synthetic-room", "auto", 256, "detour_revisit", 60, 65, "image", api_name="/load_example")
    status, *_, caption = client.predict(0, 20, 5.0, "", "", "replace", "image", api_name="/run")
    assert status.startswith("**Done**"), status
    found = re.findall(r"revisit PSNR (∞ \(identical\)|[\d.]+ dB), SSIM ([\d.]+) over (\d+) frame\(s\) back at an earlier "
                       r"camera \(frame 62 ↔ 0 … 64 ↔ 0\)", caption)  # fmt: skip
    assert len(found) == 2, caption  # one per memory
    for psnr, ssim, frames in found:
        assert frames == "3" and float(ssim) > 0.9 and (psnr.startswith("∞") or float(psnr.split()[0]) > 25), caption


def test_a_run_on_the_planar_prior_says_so_in_caption_labels_and_files(client):
    """Without Depth Pro weights the example without depth stands on the planar prior: the caption, the
    burned-in labels' text and every video file's name say it is placeholder geometry."""
    from mirage.depth import weights_available

    if weights_available("depth-pro"):
        pytest.skip("Depth Pro weights are here: the example gets a depth estimate, not the planar prior")
    client.predict("motorcycle-no-depth", "auto", 256, "orbit_left", 10, 33, "image", api_name="/load_example")
    status, latent, rgb, *_, side, _timing, _sizes, _growth, downloads, caption = client.predict(
        0, 20, 5.0, "", "", "replace", "image", api_name="/run")
    assert status.startswith("**Done**"), status
    assert "**Placeholder geometry**" in caption and "planar prior" in caption
    for f in (latent, rgb, side):
        assert Path(f).name.endswith("_planar_prior.mp4"), f


def test_a_shared_result_outlives_its_session_and_opens_by_its_link(app, client, tmp_path):
    """Share: the side-by-side video and caption are kept apart from the session; the link's id gives
    them back (through the API and through the page's ``?result=`` link), an unknown id is refused."""
    with pytest.raises(AppError, match="nothing to share yet"):
        Client(app[0], verbose=False).predict(api_name="/share")  # a fresh session has no result
    client.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")
    *_, side, _timing, _sizes, _growth, _downloads, caption = client.predict(0, 20, 5.0, "", "", "replace", "latent",
                                                                          api_name="/run")  # fmt: skip
    link = client.predict(api_name="/share")
    key = re.search(r"\?result=([0-9a-f]{12})", link).group(1)
    assert client.predict(api_name="/share") == link  # one result, one link
    video_path, shared_caption = Client(app[0], verbose=False).predict(key, api_name="/shared_result")  # another visitor
    assert Path(video_path).read_bytes() == Path(side).read_bytes() and Path(video_path).name == Path(side).name
    assert shared_caption.startswith(f"**Shared result** `{key}`") and caption in shared_caption
    with pytest.raises(AppError, match="no shared result"):
        client.predict("0123456789ab", api_name="/shared_result")
    with urllib.request.urlopen(f"{app[0]}?result={key}", timeout=10) as r:  # the link itself serves the page
        assert r.status == 200
