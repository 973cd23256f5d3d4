"""Generation on a ZeroGPU Space, through the app's HTTP API: ``python app.py`` with the tiny
random-weight checkpoint on the CPU and ``tests/zerogpu/spaces`` standing in for the platform's
``spaces`` package (every ``@spaces.GPU`` call in a forked worker, arguments and results pickled,
killed past the duration it asked for, each call recorded; faults injected on demand).

What a visitor gets must not depend on how the platform cut the run into calls: every finished run
is compared, latent for latent, with the same run in one process (``preview.run_generation``)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mirage.testing import save_tiny_wan_checkpoint
from mirage.video import read_video
from test_app_http import KEYFRAME_COLUMNS, free_port, launch_app, stop_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

NO_TABLE = {"headers": list(KEYFRAME_COLUMNS), "data": [[0, 0, 0, 0, 0, 0, 0]]}  # the keyframe table (unused by a preset)
STANDIN = Path(__file__).parent / "zerogpu"
SCENE = ("synthetic-room", "auto", 256)  # example, depth source, working size
CAP = 120  # $MIRAGE_ZEROGPU_MAX_SECONDS (the default)
OUT = ("status", "latent", "rgb", "latent_input", "rgb_input", "latent_mask", "rgb_mask", "side", "timing", "sizes",
       "growth", "downloads", "caption")  # the /run, /resume, /add_segment and /undo outputs  # fmt: skip


@pytest.fixture(scope="module")
def zgpu(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_zerogpu")
    folder = save_tiny_wan_checkpoint(tmp / "tiny-wan")
    env = {"SPACES_ZERO_GPU": "1", "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
           "ZEROGPU_STANDIN_LOG": str(tmp / "calls.jsonl"), "ZEROGPU_STANDIN_FAULTS": str(tmp / "faults.json"),
           "MIRAGE_RELEASE_AFTER": "2"}  # fmt: skip
    proc, url = launch_app(tmp, free_port(), flags=True, generation=folder, env=env)
    yield url, tmp, folder
    stop_app(proc)


def _faults(tmp: Path, **faults) -> None:
    (tmp / "faults.json").write_text(json.dumps(faults))


def _calls(tmp: Path) -> list[dict]:
    path = tmp / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _out(values) -> dict:
    return dict(zip(OUT, values))


def _cache(out: dict) -> tuple[dict, dict]:
    """(metadata, tensors) of the run's latent cache download."""
    from safetensors import safe_open

    with safe_open(next(p for p in out["downloads"] if p.endswith("latent_cache.safetensors")), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _frames(path) -> int:
    return read_video(path).shape[1]


def _latents(out: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(p for p in out["downloads"] if Path(p).name == "latents.safetensors"))


_REFERENCES: dict = {}


def _reference(folder: Path, frames: int, seed: int, steps: int, preset=("orbit_left", 10.0)) -> dict[str, torch.Tensor]:
    """The same run in this process, in one go (one CPU thread, as in a worker): every chunk's latents."""
    key = (frames, seed, steps, preset)
    if key not in _REFERENCES:
        import app_runtime as rt
        from mirage import preview, scene

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pipe = rt.load_pipeline(str(folder), "cpu")
            raw = scene.raw_from_example(SCENE[0], SCENE[1])
            state = scene.build_scene(scene.compact_raw(raw, scene.FULL_LONG_SIDE), SCENE[2])  # as the app builds it
            scene.preset_path(state, *preset, frames)
            result = preview.run_generation(state, pipe, seed=seed, **rt.pipe_settings("replace", "", steps, 1.0, ""))
        finally:
            torch.set_num_threads(threads)
        _REFERENCES[key] = {f"{m}/chunk_{k:03d}": t for m, r in result.methods.items() for k, t in enumerate(r.latents)}
    return _REFERENCES[key]


def _assert_same_latents(out: dict, reference: dict) -> None:
    got = _latents(out)
    assert sorted(got) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(got[key], tensor), key  # bit for bit


def _run(client: Client, frames: int, seed: int, steps: int = 2, api: str = "/run", args=None, on_update=None):
    """Submit a run and follow it: (every update, the final outputs)."""
    if api == "/run":
        client.predict(*SCENE, "orbit_left", 10, frames, "latent", api_name="/load_example")
        args = (seed, steps, 1.0, "", "", "replace", "latent")
    job = client.submit(*args, api_name=api)
    seen = 0
    while not job.done():
        updates = job.outputs()
        for values in updates[seen:]:
            if on_update is not None:
                on_update(_out(values))
        seen = len(updates)
        time.sleep(0.05)
    return [_out(v) for v in job.outputs()], _out(job.result())


def _chunk_updates(updates: list[dict], kind: str) -> list[str]:
    """The distinct videos of ``kind`` the client was shown, in order (one per chunk)."""
    return list(dict.fromkeys(u[kind] for u in updates if u[kind]))


def test_every_chunk_is_one_gpu_call_and_the_split_run_equals_one_process(zgpu):
    url, tmp, folder = zgpu
    _faults(tmp)
    before = len(_calls(tmp))
    updates, out = _run(Client(url, verbose=False), 97, seed=7)
    assert out["status"].startswith("**Done**") and "3 chunk(s)" in out["status"], out["status"]
    calls = _calls(tmp)[before:]
    assert [c["args"][-1] for c in calls] == ["'latent'", "'rgb'"] * 3  # latent chunk 1, pixel chunk 1, latent chunk 2, ...
    for c in calls:  # one chunk per call: progress, then the chunk, nothing else
        assert c["outcome"] == "ok" and c["yields"][-1] == "ChunkDone" and c["yields"].count("ChunkDone") == 1, c
        assert set(c["yields"][:-1]) == {"Progress"}
        assert 0 < c["duration"] <= CAP and c["wall"] < c["duration"], c
    assert calls[0]["duration"] == CAP  # an unknown GPU's first call asks for the cap; later ones what it measured
    assert all(c["duration"] < CAP for c in calls[1:])
    # the client saw each memory's video after every chunk of it, growing
    for kind in ("latent", "rgb"):
        assert [_frames(v) for v in _chunk_updates(updates, kind)] == [33, 65, 97], kind
    assert [_frames(v) for v in _chunk_updates(updates, "side")] == [33, 65, 97]
    _assert_same_latents(out, _reference(folder, 97, 7, 2))


def test_stop_undo_and_continue_keep_the_run_exact(zgpu):
    """Stop after chunk 2 keeps two chunks and their downloads; Continue goes on; Undo takes a chunk
    back to exactly the files before it; a run stopped, continued, undone and continued is the run."""
    url, tmp, folder = zgpu
    client = Client(url, verbose=False)
    _faults(tmp, delay_s=1.0)  # each call waits a second first: Stop lands within chunk 2
    stopped = []

    def stop_in_chunk_two(update):
        if not stopped and update["latent"] and _frames(update["latent"]) == 65:
            stopped.append(client.predict(api_name="/stop"))

    _, out = _run(client, 161, seed=3, on_update=stop_in_chunk_two)
    _faults(tmp)
    assert stopped and "Stopping" in stopped[0]
    assert out["status"].startswith("**Stopped** after chunk 2"), out["status"]
    for kind in ("latent", "rgb", "latent_input", "rgb_input", "latent_mask", "rgb_mask", "side"):
        assert _frames(out[kind]) == 65, kind
    assert sorted(_latents(out)) == [f"{m}/chunk_{k:03d}" for m in ("latent", "rgb") for k in range(2)]
    after_two = out
    cache_two = _cache(out)

    _, out = _run(client, 0, 0, api="/resume", args=("latent",), on_update=None)
    assert out["status"].startswith("**Done**") and "5 chunk(s)" in out["status"], out["status"]
    out = _out(client.predict("latent", api_name="/undo"))
    out = _out(client.predict("latent", api_name="/undo"))
    out = _out(client.predict("latent", api_name="/undo"))
    assert "Chunk 3 taken back" in out["status"], out["status"]
    for kind in ("latent", "rgb", "latent_input", "rgb_input", "latent_mask", "rgb_mask", "side"):
        assert torch.equal(read_video(out[kind]), read_video(after_two[kind])), kind  # the videos exactly as after chunk 2
    undone = _cache(out)
    assert undone[0] == cache_two[0] and undone[1].keys() == cache_two[1].keys()  # the cache file: metadata and tensors
    assert all(torch.equal(undone[1][k], cache_two[1][k]) for k in undone[1])
    assert out["sizes"] == after_two["sizes"]  # the cache sizes chart too
    assert "Chunk 2 taken back" in client.predict("latent", api_name="/undo")[0]
    with pytest.raises(Exception, match="nothing to undo past the first chunk"):
        client.predict("latent", api_name="/undo")

    _, out = _run(client, 0, 0, api="/resume", args=("latent",))
    assert "5 chunk(s)" in out["status"], out["status"]
    _assert_same_latents(out, _reference(folder, 161, 3, 2))


def test_an_aborted_call_leaves_the_run_as_it_was_and_continue_finishes_it(zgpu):
    url, tmp, folder = zgpu
    client = Client(url, verbose=False)
    _faults(tmp, abort_calls=[len(_calls(tmp)) + 3])  # the third call: the latent memory's chunk 2, mid-chunk
    _, out = _run(client, 97, seed=5)
    _faults(tmp)
    assert "Chunk 2 of the latent memory" in out["status"] and "did not finish" in out["status"], out["status"]
    assert "the platform aborted the GPU call" in out["status"] and "press **Continue**" in out["status"]
    assert _calls(tmp)[-1]["outcome"] == "aborted: fault injected"
    for kind in ("latent", "rgb", "side"):  # chunk 1 of both memories, and its downloads, as they were
        assert _frames(out[kind]) == 33, kind
    assert sorted(_latents(out)) == ["latent/chunk_000", "rgb/chunk_000"]
    assert all(Path(p).is_file() for p in out["downloads"])

    _, out = _run(client, 0, 0, api="/resume", args=("latent",))
    assert out["status"].startswith("**Done**") and "3 chunk(s)" in out["status"], out["status"]
    _assert_same_latents(out, _reference(folder, 97, 5, 2))  # as if the abort never happened


def test_a_321_frame_exploration_as_one_run_and_as_run_plus_segments(zgpu):
    url, tmp, folder = zgpu
    _faults(tmp)
    before = len(_calls(tmp))
    _, out = _run(Client(url, verbose=False), 321, seed=1, steps=1)
    assert out["status"].startswith("**Done**") and "10 chunk(s), 321 frames" in out["status"], out["status"]
    assert _frames(out["latent"]) == _frames(out["rgb"]) == 321
    calls = _calls(tmp)[before:]
    assert len(calls) == 20 and all(c["outcome"] == "ok" and c["duration"] <= CAP for c in calls)

    client = Client(url, verbose=False)
    _run(client, 161, seed=1, steps=1)
    _, out = _run(client, 0, 0, api="/add_segment",
                  args=("preset", "pan_right", 10, 161, None, 0.5, "source", NO_TABLE, "latent"))  # fmt: skip
    assert out["status"].startswith("**Done**") and "10 chunk(s), 321 frames" in out["status"], out["status"]
    assert _frames(out["latent"]) == _frames(out["side"]) == 321
    got = _latents(out)
    assert len(got) == 20
    first = _reference(folder, 161, 1, 1)
    for key, tensor in first.items():  # the first five chunks are the 161-frame run's
        assert torch.equal(got[key], tensor), key


def _close_tab(url: str, session_hash: str) -> None:
    """What a browser tab does when it closes: its heartbeat connection ends (Gradio then runs the
    page's unload event)."""
    r = urllib.request.urlopen(f"{url}gradio_api/heartbeat/{session_hash}", timeout=10)
    r.readline()
    r.close()


def test_two_visitors_at_once_and_a_tab_closed_mid_run(zgpu):
    """Visitor A closes the tab during a run: A's run ends after its chunk and A's files go; visitor B,
    running at the same time, gets the exact run and nothing of A's."""
    import threading

    url, tmp, folder = zgpu
    _faults(tmp, delay_s=0.5)
    # A's tab is closed: its files go, so A's client must not fetch them (a closed tab fetches nothing)
    a, b = Client(url, verbose=False, download_files=False), Client(url, verbose=False)
    before = len(_calls(tmp))
    done = {}
    thread_b = threading.Thread(target=lambda: done.setdefault("b", _run(b, 97, seed=9)))
    closed = []

    def close_in_chunk_two(update):
        if not closed and (update["status"] or "").startswith("Chunk 2 of"):
            _close_tab(url, a.session_hash)
            closed.append(time.time())

    thread_b.start()
    _, out_a = _run(a, 161, seed=11, on_update=close_in_chunk_two)
    thread_b.join(timeout=300)
    _faults(tmp)
    assert closed, "A's run never reached chunk 2"
    calls_a = [c for c in _calls(tmp)[before:] if "seed=11" in c["args"][0]]
    assert 3 <= len(calls_a) < 10, len(calls_a)  # A stopped after the chunk it was on
    assert not out_a["status"].startswith("**Done**"), out_a["status"]
    assert "the page was closed" in out_a["status"], out_a["status"]
    sessions = tmp / "gradio" / "mirage-sessions"
    assert not (sessions / a.session_hash).exists()  # A's files went with A's page, none made after
    _, out_b = done["b"]
    assert out_b["status"].startswith("**Done**"), out_b["status"]
    assert (sessions / b.session_hash).is_dir()
    _assert_same_latents(out_b, _reference(folder, 97, 9, 2))  # B's run, exactly, and nothing of A's
    with pytest.raises(Exception, match="this page was closed"):  # A's session refuses anything more
        a.predict(*SCENE, "orbit_left", 10, 33, "latent", api_name="/load_example")


def test_a_block_compiled_ahead_of_time_at_start_up_runs_in_the_gpu_calls(tmp_path_factory):
    """``MIRAGE_AOT=on``: start-up compiles the transformer's block for the room's working size in one long
    GPU call, loads it in a child process, and says so in the banner; each chunk's call (a worker forked
    later) loads the package itself and runs it: the latents are the eager run's to float tolerance,
    but not bit for bit (eager would be)."""
    from mirage import scene

    tmp = tmp_path_factory.mktemp("app_zerogpu_aot")
    folder = save_tiny_wan_checkpoint(tmp / "tiny-wan")
    state = scene.build_scene(scene.compact_raw(scene.raw_from_example(SCENE[0], SCENE[1]), scene.FULL_LONG_SIDE), SCENE[2])
    height, width = state.image.shape[-2:]
    env = {"SPACES_ZERO_GPU": "1", "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
           "ZEROGPU_STANDIN_LOG": str(tmp / "calls.jsonl"), "MIRAGE_AOT": "on", "MIRAGE_AOT_SIZES": f"{height}x{width}",
           "MIRAGE_AOT_CACHE": str(tmp / "aot")}  # fmt: skip
    proc, url = launch_app(tmp, free_port(), flags=True, generation=folder, env=env)
    try:
        start = _calls(tmp)
        assert [(c["function"], c["outcome"], c["duration"]) for c in start] == [("gpu_prepare_aot", "ok", 1500)]
        assert len(list((tmp / "aot").glob("block-*.pt2"))) == 1
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            page = r.read().decode()
        assert (f"Speed setting: the transformer's block compiled ahead of time (AOTInductor) for {height}x{width}, "
                "33-frame chunks (compiled at start-up in") in page
        _, out = _run(Client(url, verbose=False), 33, seed=7)
        assert out["status"].startswith("**Done**"), out["status"]
        got, reference = _latents(out), _reference(folder, 33, 7, 2)
        assert sorted(got) == sorted(reference)
        for key, tensor in reference.items():
            torch.testing.assert_close(got[key], tensor, rtol=0, atol=1e-4)
        assert not all(torch.equal(got[k], t) for k, t in reference.items())  # the package ran, not the eager blocks
    finally:
        stop_app(proc)
