"""The app in generation mode, through its real HTTP interface: ``python app.py`` with a tiny
random-weight Wan2.2-TI2V-shaped diffusers folder (``mirage.testing.save_tiny_wan_checkpoint``) in
``$MIRAGE_MODEL_PATH``, a tiny Spatia-layout branch + LoRA in ``$MIRAGE_SPATIA_BRANCH``
(``mirage.testing.save_tiny_branch``) and ``MIRAGE_DEVICE=cpu``: the weight lookup, the pipeline and
branch loading, both memories' generation under one conditioning, the charts, the downloads and the
progress updates all run as they would with the real weights on a GPU."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from mirage.testing import save_tiny_branch, save_tiny_wan_checkpoint
from mirage.video import read_video
from test_app_http import free_port, launch_app, plot_json, stop_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402


@pytest.fixture(scope="module")
def gen_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_generation")
    folder = save_tiny_wan_checkpoint(tmp / "tiny-wan")
    branch = save_tiny_branch(tmp / "spatia", "spatia")
    proc, url = launch_app(tmp, free_port(), flags=True, generation=folder, env={"MIRAGE_SPATIA_BRANCH": str(branch)})
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
    job = client.submit(7, 4, 3.0, "a red room", "low quality", "replace", "latent", api_name="/run")
    progress = []
    while not job.done():
        status = job.status()
        if status.progress_data:
            progress.extend(p.desc for p in status.progress_data if p.desc)
        time.sleep(0.05)
    progress += [out[0] for out in job.outputs()]  # the status line streamed with every update
    status, latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask, side, timing, sizes, growth, downloads, caption = job.result()
    assert status.startswith("**Done**"), status
    for path in (latent, rgb, latent_input, rgb_input, latent_mask, rgb_mask):
        assert read_video(path).shape == (3, 33, 128, 256)
    assert read_video(side).shape[1:3] == (33, 128)
    stages = {t["name"] for t in plot_json(timing)["data"]}
    assert {"project", "rasterize", "encode", "denoise", "decode", "depth", "update"} <= stages
    assert plot_json(timing)["layout"]["title"]["subtitle"]["text"] == "generation"  # what the run was, under the title
    assert len(plot_json(sizes)["data"]) == 2
    names = {Path(p).name for p in downloads}
    # no Depth Pro weights here: every chunk after the first stands on the planar prior, and the files say so
    assert {"latent_generated_planar_prior.mp4", "rgb_generated_planar_prior.mp4", "latent_model_input.mp4",
            "rgb_model_input.mp4", "side_by_side_generated_planar_prior.mp4", "latent_cache.ply",
            "latent_cache.safetensors"} <= names  # fmt: skip
    assert "**Placeholder geometry**" in caption and "geometry = planar prior" in caption
    assert "Generated with" in caption and str(folder) in caption and "cpu" in caption and "seed = 7" in caption
    assert "conditioning = training-free replace" in caption
    assert any("Latent memory" in d for d in progress) and any("Pixel point cloud" in d for d in progress), progress
    assert any("step 4/4" in d for d in progress) or any("step 3/4" in d for d in progress), progress


def test_the_trained_branch_is_offered_and_both_memories_run_under_it(gen_app):
    url, tmp, _ = gen_app
    with urllib.request.urlopen(url + "config", timeout=10) as r:
        text = json.dumps(json.loads(r.read()))
    assert "Trained conditioning offered" in text and "Trained branch: Spatia" in text
    client = Client(url, verbose=False)
    client.predict("synthetic-room", "auto", 256, "orbit_left", 10, 33, "latent", api_name="/load_example")
    out = client.predict(3, 2, 3.5, "a red room", "low quality", "spatia", "latent", api_name="/run")
    status, latent, rgb, *_, caption = out
    assert read_video(latent).shape == read_video(rgb).shape == (3, 33, 128, 256)
    assert "conditioning = Spatia branch + LoRA" in caption and str(tmp / "spatia") in caption and "seed = 3" in caption
    assert "Latent memory (Mirage): generated, Spatia branch + LoRA" in caption
    with pytest.raises(Exception, match="'vace' .* is not in the list of choices"):  # gradio checks the choice
        client.predict(3, 2, 1.0, "", "", "vace", "latent", api_name="/run")
