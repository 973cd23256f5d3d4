"""The Space's configuration: the README front matter and requirements.txt say what a ZeroGPU Space
supports, and ``preload_from_hub`` lists exactly what the loaders read. Checked by laying out a
Hugging Face cache holding only the preloaded files (tiny random weights under the released file
names, sharded as the released checkpoints are) and starting the app on it with nothing else set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import app_runtime as rt
from mirage import weights
from mirage.codecs import WAN22_MODEL_ID
from mirage.depth.depth_pro import DEPTH_PRO_ID, DEPTH_PRO_LAYOUT, DepthProBackend
from mirage.families import FAMILIES
from mirage.pipeline import WAN22_LAYOUT
from mirage.testing import save_tiny_branch, save_tiny_wan_checkpoint, shard_safetensors, tiny_depth_pro_config, write_hub_cache

ROOT = Path(__file__).resolve().parents[1]
ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}  # huggingface/hub-docs docs/hub/spaces-zerogpu.md
ZEROGPU_PYTHON = {"3.10.13", "3.12.12"}
SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")


def _front() -> dict:
    return yaml.safe_load((ROOT / "README.md").read_text(encoding="utf-8").split("---\n", 2)[1])


def _pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_front_matter_and_pins_are_what_zerogpu_runs():
    front, pins = _front(), _pins()
    assert pins["torch"] in ZEROGPU_TORCH
    assert str(front["python_version"]) in ZEROGPU_PYTHON
    assert front["sdk"] == "gradio" and front["sdk_version"] == pins["gradio"]
    assert "suggested_hardware" not in front  # ZeroGPU is chosen in the Space's settings; no front-matter value names it
    run_sh = (ROOT / "run.sh").read_text()
    assert "grep -v '^torch=='" in run_sh  # the local CPU wheel replaces the Space's pin, nothing else changes


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory) -> Path:
    """An HF cache holding exactly the files ``preload_from_hub`` lists, each made from a tiny
    random checkpoint (a listed file the tiny checkpoints cannot give fails here)."""
    tmp = tmp_path_factory.mktemp("space")
    wan = save_tiny_wan_checkpoint(tmp / "wan")
    (wan / "tokenizer" / "special_tokens_map.json").write_text("{}")  # the release has it; transformers 5 writes none
    DepthProBackend.from_config(tiny_depth_pro_config()).model.save_pretrained(tmp / "depth")
    spatia = save_tiny_branch(tmp / "spatia", "spatia")
    sources = {WAN22_MODEL_ID: wan, DEPTH_PRO_ID: tmp / "depth", FAMILIES["spatia"].weights_repo: spatia}
    cache = tmp / "hub"
    for repo, files in rt.preload_files():
        folder = sources[repo]
        shards: dict[Path, list[str]] = {}
        for rel in files:
            m = SHARD.match(Path(rel).name)
            if m:
                shards.setdefault(folder / Path(rel).parent / f"{m['stem']}.safetensors", []).append(Path(rel).name)
        for whole, names in shards.items():
            shard_safetensors(whole, sorted(names), f"{whole.name}.index.json")
        absent = [rel for rel in files if not (folder / rel).is_file()]
        assert not absent, f"{repo}: preload_from_hub lists files no loader writes: {absent}"
        write_hub_cache(cache, repo, folder, files)
    return cache


def test_preload_from_hub_holds_every_file_the_loaders_need(preloaded, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(preloaded))
    for var in ("MIRAGE_MODEL_PATH", "MIRAGE_OFFLINE", *[v for pair in rt.BRANCH_ENV.values() for v in pair]):
        monkeypatch.delenv(var, raising=False)
    folder, why = rt.find_model_weights(preloaded)
    assert folder is not None, why
    assert weights.find_local(DEPTH_PRO_ID, DEPTH_PRO_LAYOUT, preloaded) is not None
    branches, _ = rt.find_branches(preloaded)
    assert "spatia" in branches and branches["spatia"].lora is not None
    # and each weight shard is needed: without it the checkpoint is incomplete
    snapshot = Path(folder)
    for shard in sorted(snapshot.glob("*/*-0000*-of-*.safetensors")):
        target = shard.resolve()
        shard.rename(target.with_suffix(".gone"))
        try:
            assert weights.missing(snapshot, WAN22_LAYOUT), shard
        finally:
            target.with_suffix(".gone").rename(target)


def test_sharded_preload_loads_the_same_weights(preloaded, tmp_path):
    import torch

    from mirage.pipeline import MiragePipeline

    pipe = MiragePipeline.from_pretrained(WAN22_MODEL_ID, cache_dir=preloaded, local_files_only=True,
                                          torch_dtype=torch.float32)  # fmt: skip
    fresh = save_tiny_wan_checkpoint(tmp_path / "again")
    ref = MiragePipeline.from_pretrained(str(fresh), torch_dtype=torch.float32, depth_backend=None)
    for mine, theirs in ((pipe.transformer, ref.transformer), (pipe.text_encoder, ref.text_encoder)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(pipe.depth_backend).__name__ == "DepthProBackend"  # Depth Pro from the same cache


def test_app_generates_from_the_preloaded_cache_alone(preloaded, tmp_path):
    """What a Space built from this README gets: only the HF cache (no $MIRAGE_MODEL_PATH); the
    app finds the weights there and generates (on the CPU here: MIRAGE_DEVICE=cpu)."""
    from gradio_client import Client

    from test_app_http import free_port, launch_app, stop_app

    proc, url = launch_app(tmp_path, free_port(), flags=True, env={"MIRAGE_OFFLINE": "", "MIRAGE_DEVICE": "cpu",
                                                                  "HF_HUB_CACHE": str(preloaded)})  # fmt: skip
    try:
        client = Client(url, verbose=False)
        config = client.config
        banner = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "mode-banner")
        assert "Mode: generation" in banner and str(preloaded) in banner, banner
        client.predict("synthetic-room", "auto", 256, "pan_right", None, 33, "image", api_name="/load_example")
        out = client.predict(0, 2, 1.0, "", "", "replace", "latent", api_name="/run")
        assert "**Done**" in out[0] and Path(out[1]).is_file(), out[0]
    finally:
        stop_app(proc)
