"""The app in generation mode, through its real HTTP interface: ``python app.py`` with a tiny
random-weight Wan2.2-TI2V-shaped diffusers folder (``mirage.testing.save_tiny_wan_checkpoint``) in
``$MIRAGE_MODEL_PATH`` and ``MIRAGE_DEVICE=cpu``: the weight lookup, the pipeline loading, both
memories' generation, the charts, the downloads and the progress updates all run as they would with
the real weights on a GPU."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from mirage.testing import save_tiny_wan_checkpoint
from mirage.video import read_video
from test_app_http import free_port, launch_app, plot_json, stop_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402


@pytest.fixture(scope="module")
def gen_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_generation")
    folder = save_tiny_wan_checkpoint(tmp / "tiny-wan")
    proc, url = launch_app(tmp, free_port(), flags=True, generation=folder)
    yield url, tmp, folder
    stop_app(proc)


def test_banner_names_the_weights_and_the_device(gen_app):
    url, _, folder = gen_app
    with urllib.request.urlopen(url + "config", timeout=10) as r:
        text = json.dumps(json.loads(r.read()))
    assert "Mode: generation" in text and str(folder) in text and "**cpu**" in text
    assert "Negative prompt" in text and "Guidance scale" in text and "Sampling steps" in text


def test_generate_both_memories_with_progress_videos_charts_and_downloads(gen_app):
    url, _, folder = gen_app
    client = Client(url, verbose=False)
    client.predict("synthetic-room", "auto", 256, "orbit_left", 10, 33, "latent", api_name="/load_example")
    job = client.submit(7, 4, 3.0, "a red room", "low quality", "latent", api_name="/run")
    progress = []
    while not job.done():
        status = job.status()
        if status.progress_data:
            progress.extend(p.desc for p in status.progress_data if p.desc)
        time.sleep(0.05)
    latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask, side, timing, sizes, growth, downloads, caption = job.result()
    for path in (latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask):
        assert read_video(path).shape == (3, 33, 128, 256)
    assert read_video(side).shape[1:3] == (33, 128)
    stages = {t["name"] for t in plot_json(timing)["data"]}
    assert {"project", "rasterize", "encode", "denoise", "decode", "depth", "update"} <= stages
    assert "generation" in plot_json(timing)["layout"]["title"]["text"]
    assert len(plot_json(sizes)["data"]) == 2
    names = {Path(p).name for p in downloads}
    assert {"latent_generated.mp4", "rgb_generated.mp4", "latent_model_input.mp4", "rgb_model_input.mp4",
            "side_by_side_generated.mp4", "latent_cache.ply", "latent_cache.safetensors"} <= names  # fmt: skip
    assert "Generated with" in caption and str(folder) in caption and "cpu" in caption and "seed = 7" in caption
    assert any("Latent memory" in d for d in progress) and any("Pixel point cloud" in d for d in progress), progress
    assert any("step 4/4" in d for d in progress) or any("step 3/4" in d for d in progress), progress
