"""Tests for app_runtime: mode detection (weights, device), session folders, UI formats."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import app_runtime as rt


def test_frame_count_checks():
    assert rt.check_frame_count("97") == 97 and rt.check_frame_count(33) == 33
    with pytest.raises(ValueError, match="too many frames: 401"):
        rt.check_frame_count(401)
    with pytest.raises(ValueError, match="4N\\+1"):
        rt.check_frame_count(34)
    with pytest.raises(ValueError, match="whole number"):
        rt.check_frame_count("many")


def test_offline_mode_is_chosen_without_weights(tmp_path, monkeypatch):
    for name in (rt.MODEL_PATH_ENV, rt.OFFLINE_ENV, rt.DEVICE_ENV, "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    mode = rt.detect_mode(cache_dir=tmp_path / "empty-cache")
    assert not mode.generation and mode.model_path is None
    assert "offline readout preview" in mode.banner() and mode.name == "offline readout preview"

    # folders named like a checkpoint but without weights are not weights
    fake = tmp_path / "wan"
    for sub in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        (fake / sub).mkdir(parents=True)
    monkeypatch.setenv(rt.MODEL_PATH_ENV, str(fake))
    folder, why = rt.find_model_weights()
    assert folder is None and "lacks transformer (config.json + weights)" in why
    assert not rt.detect_mode().generation


def test_generation_mode_with_a_checkpoint_on_the_chosen_device(tmp_path, monkeypatch):
    import torch

    from mirage.testing import save_tiny_wan_checkpoint

    for name in (rt.OFFLINE_ENV, rt.DEVICE_ENV, "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    folder = save_tiny_wan_checkpoint(tmp_path / "wan")
    monkeypatch.setenv(rt.MODEL_PATH_ENV, str(folder))
    assert rt.find_model_weights()[0] == str(folder)
    mode = rt.detect_mode()
    assert mode.generation == torch.cuda.is_available() and mode.model_path == str(folder)
    monkeypatch.setenv(rt.DEVICE_ENV, "cpu")
    mode = rt.detect_mode()
    assert mode.generation and mode.device == "cpu" and not mode.zero_gpu
    assert str(folder) in mode.banner() and "**cpu**" in mode.banner() and mode.name == "generation (Wan2.2, cpu)"
    monkeypatch.setenv(rt.OFFLINE_ENV, "1")
    assert not rt.detect_mode().generation and "MIRAGE_OFFLINE" in rt.detect_mode().why
    monkeypatch.setenv(rt.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="MIRAGE_DEVICE must be 'cuda' or 'cpu', got 'tpu'"):
        rt.detect_mode()
    if not torch.cuda.is_available():
        monkeypatch.setenv(rt.DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            rt.detect_mode()


def _clear_branch_env(monkeypatch):
    for names in rt.BRANCH_ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)


def test_trained_branches_are_found_in_settings_and_the_hf_cache(tmp_path, monkeypatch):
    _clear_branch_env(monkeypatch)
    found, missing = rt.find_branches(cache_dir=tmp_path / "empty")
    assert found == {} and any("spatia: no step-8500.safetensors" in m for m in missing)
    assert any("MIRAGE_MIRAGE_BRANCH is unset" in m for m in missing)

    # Spatia's public files in the HF cache layout
    snap = tmp_path / "hub" / "models--Jinjing713--Spatia" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    (snap / "step-8500.safetensors").write_bytes(b"x")
    found, missing = rt.find_branches(cache_dir=tmp_path / "hub")
    assert found == {} and any("no lora_weights_10000.safetensors" in m for m in missing)  # the branch alone is not enough
    (snap / "lora_weights_10000.safetensors").write_bytes(b"x")
    found, _ = rt.find_branches(cache_dir=tmp_path / "hub")
    assert found["spatia"].branch == str(snap / "step-8500.safetensors") and "HF cache" in found["spatia"].where

    # a Mirage branch trained by the user, named by a setting; its LoRA beside it is picked up
    mine = tmp_path / "outputs"
    mine.mkdir()
    (mine / "vace.safetensors").write_bytes(b"x")
    monkeypatch.setenv("MIRAGE_MIRAGE_BRANCH", str(mine / "vace.safetensors"))
    found, _ = rt.find_branches(cache_dir=tmp_path / "hub")
    assert found["mirage"].lora is None  # a branch trained without a LoRA is allowed
    (mine / "lora.safetensors").write_bytes(b"x")
    found, _ = rt.find_branches(cache_dir=tmp_path / "hub")
    assert found["mirage"] == rt.BranchFiles("mirage", str(mine / "vace.safetensors"), str(mine / "lora.safetensors"), "$MIRAGE_MIRAGE_BRANCH")
    mode = rt.AppMode(True, "w", "cpu", False, False, "", found)
    assert [v for _, v in rt.conditioning_choices(mode)] == ["replace", "context", "spatia", "mirage"]
    assert "Trained conditioning offered" in mode.banner()


def test_conditioning_settings():
    assert rt.generation_defaults("spatia")["steps"] == 40 and rt.generation_defaults("spatia")["guidance"] == 3.5
    assert rt.generation_defaults("mirage")["fps"] == 16 and rt.generation_defaults("context")["steps"] == 50
    assert rt.pipe_settings("spatia", "", 40, 3.5, "neg")["memory_mode"] == "branch"
    assert rt.pipe_settings("context", "a room", 5, 1.0, "")["memory_mode"] == "context"
    with pytest.raises(ValueError, match="unknown conditioning 'vace'"):
        rt.pipe_settings("vace", "", 5, 1.0, "")


def test_session_dirs_are_created_lazily_and_removed(tmp_path):
    dirs = rt.SessionDirs(tmp_path / "root")
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

    own = rt.SessionDirs()
    own.get("s1")
    own.remove_all()
    assert not own.root.exists()  # a root made here goes at exit


def test_uploads_go_with_the_last_session_that_handed_them_in(tmp_path):
    """Gradio stores an upload once per content (``<cache>/<hash>/<name>``): it goes with the last
    session that used it, together with its folder."""
    dirs = rt.SessionDirs(tmp_path / "cache" / "mirage-sessions", grace_s=0.05)
    shared = tmp_path / "cache" / "h1" / "photo.png"
    own = tmp_path / "cache" / "h2" / "depth.npy"
    for f in (shared, own):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    dirs.track("a", shared, own, None)
    dirs.track("b", shared)
    assert dirs.remove("a")
    time.sleep(0.3)  # the grace period (test_a_closed_page_never_deletes_an_upload_another_visitor_just_sent)
    assert not own.exists() and not own.parent.exists() and shared.exists()  # b still holds the photo
    assert dirs.remove("b")
    time.sleep(0.3)
    assert not shared.exists() and not shared.parent.exists()
    with pytest.raises(ValueError, match="plain name"):
        dirs.track("../x", shared)


def test_sweep_removes_old_unclaimed_uploads_only(tmp_path, monkeypatch):
    import os
    import time

    dirs = rt.SessionDirs(tmp_path / "cache" / "mirage-sessions")
    old_free, new_free, old_claimed = (tmp_path / "cache" / h / "x.png" for h in ("h1", "h2", "h3"))
    for f in (old_free, new_free, old_claimed):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for f in (old_free, old_claimed):
        os.utime(f, (hour_ago, hour_ago))
    dirs.track("live", old_claimed)
    gone = dirs.sweep([str(old_free), str(new_free), str(old_claimed), str(tmp_path / "cache" / "h4" / "gone.png")], 600)
    assert gone == [old_free] and not old_free.parent.exists()
    assert new_free.exists() and old_claimed.exists()  # too young; handed in by a live session
    monkeypatch.setenv("MIRAGE_UPLOAD_TTL", "20")
    assert rt.upload_ttl() == 20.0
    monkeypatch.setenv("MIRAGE_UPLOAD_TTL", "-1")
    with pytest.raises(ValueError, match="MIRAGE_UPLOAD_TTL must be a positive number of seconds, got '-1'"):
        rt.upload_ttl()


def test_an_ended_session_gets_nothing_more_and_session_folders_are_not_uploads(tmp_path):
    dirs = rt.SessionDirs(tmp_path / "cache" / "mirage-sessions")
    own = dirs.get("a")
    (own / "scene.png").write_bytes(b"x")
    other = dirs.get("b") / "result.mp4"
    other.write_bytes(b"x")
    dirs.track("a", other)  # a client naming another session's file: not taken as its upload
    assert dirs.remove("a") and other.exists()
    with pytest.raises(ValueError, match="this page was closed: reload it"):
        dirs.get("a")  # a run still going when its page closed writes nothing
    with pytest.raises(ValueError, match="this page was closed"):
        dirs.track("a", tmp_path / "x.png")
    assert not (dirs.root / "a").exists()


def test_path_controls_follow_the_accepted_paths():
    from mirage import scene
    from mirage.synthetic import default_camera, default_scene

    camera = default_camera(256, 160, 60.0)
    image, depth = default_scene().render(camera)
    state = scene.build_scene(scene.RawScene("room", image[0], depth[0], camera.K, "ground truth"), 256)
    session = rt.Session().new_scene(state)
    assert rt.path_controls(session) == rt.PathControls(None, None, None, None, None)
    session.change_path(scene.preset_path, "pan_right", 12.0, 65)
    default_rows = scene.default_keyframe_rows(state)  # before any keyframe path: what a refused table goes back to
    assert rt.path_controls(session) == rt.PathControls(65, "pan_right", 12.0, None, None, None, default_rows)
    rows = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 60.0], [0.1, 0.0, 0.2, 5.0, 0.0, 0.0, 60.0]]
    session.change_path(scene.keyframe_path, rows, 33)  # another kind: the preset controls keep
    assert rt.path_controls(session) == rt.PathControls(33, "pan_right", 12.0, None, None, None, rows)
    with pytest.raises(ValueError):
        session.change_path(scene.keyframe_path, [[0, 0, 0, 0, 0, 0, 60], [0.1, 0, "far", 0, 0, 0, 60]], 33)
    assert rt.path_controls(session).table == rows  # the accepted table, not the refused one
    session.run, version, path = "a run", session.version, state.path
    with pytest.raises(ValueError, match="through the scene"):
        session.change_path(scene.preset_path, "dolly_in", 0.99, 33)
    assert rt.path_controls(session) == rt.PathControls(33, "pan_right", 12.0, None, None, None, rows)  # a refusal changes nothing:
    assert (session.version, session.run, state.path) == (version, "a run", path)  # nor the run, nor the path
    session.change_path(scene.preset_path, "pan_left", 5.0, 33)
    assert session.version == version + 1 and session.run == "a run"  # a run keeps its own path (app_runs.ActiveRun)


def test_a_new_working_size_keeps_the_controls_last_accepted_values():
    """``Session.resized``: the preset and stroke settings the controls show survive a size change
    (the stroke's own recipe, pixels mapped into the new fit, is ``scene.rebuild_at``'s: test_scene)."""
    from mirage import scene
    from mirage.synthetic import default_camera, default_scene
    from test_scene import _stroke_editor

    camera = default_camera(256, 160, 60.0)
    image, depth = default_scene().render(camera)
    state = scene.build_scene(scene.RawScene("room", image[0], depth[0], camera.K, "ground truth"), 256)
    session = rt.Session().new_scene(state)
    session.change_path(scene.preset_path, "pan_left", 10.0, 33)
    session.change_path(scene.keyframe_path, scene.default_keyframe_rows(state), 33)
    big = scene.rebuild_at(state, 512)
    session.resized(big)
    assert session.scene is big and big.recipe.kind == "keyframes"
    assert session.last_preset.preset == "pan_left" and session.last_preset.amount == 10.0

    H, W = big.size
    session.change_path(scene.stroke_path, _stroke_editor(H, W, (W // 2, H // 2), (W - 20, H // 2)), 33, 0.4)
    small = scene.rebuild_at(big, 256)
    session.resized(small)
    assert session.last_stroke.depth_fraction == 0.4
    torch.testing.assert_close(session.last_stroke.stroke, small.recipe.stroke, rtol=0, atol=0)  # mapped like the path's


def test_examples_say_where_their_depth_comes_from_and_look_different():
    captions = rt.example_captions(depth_pro=False)
    assert any("motorcycle-no-depth" in c and "planar prior" in c for c in captions)
    assert "Depth Pro" in rt.example_captions(depth_pro=True)[1]
    assert "runs on the **planar prior**" in rt.example_notes(depth_pro=False)
    assert "runs on the" not in rt.example_notes(depth_pro=True)
    thumbs = [t for t, _ in rt.example_gallery(depth_pro=False)]
    assert len(thumbs) == 3 and all(t.dtype == np.uint8 and t.shape[2] == 3 for t in thumbs)
    w = thumbs[0].shape[1] // 2
    assert np.array_equal(thumbs[0][:, :w], thumbs[1][:, :w])  # the same photo ...
    assert np.abs(thumbs[0][:, w:].astype(int) - thumbs[1][:, w:].astype(int)).mean() > 20  # ... with and without depth


def test_a_session_closed_while_its_run_sends_results_keeps_its_files_until_the_last(tmp_path):
    """Gradio reads a result's files after the handler yields it: a page closed mid-run is refused at
    once (its run ends after the chunk) but its folder goes only when the run has sent its last result."""
    dirs = rt.SessionDirs(tmp_path / "root")
    folder = dirs.get("s1")
    (folder / "video.mp4").write_bytes(b"x")
    with dirs.streaming("s1"):
        with dirs.streaming("s1"):  # a second run of the same page (another tab's request)
            assert dirs.busy("s1") and dirs.remove("s1")
            assert not dirs.alive("s1") and (folder / "video.mp4").is_file()
            with pytest.raises(ValueError, match="closed"):
                dirs.get("s1")
        assert (folder / "video.mp4").is_file()  # one run still sending
    assert not folder.exists() and not dirs.busy("s1") and not dirs.alive("s1")
    other = dirs.get("s2")
    with dirs.streaming("s2"):
        pass
    assert other.is_dir() and dirs.alive("s2")  # a run that ends on an open page removes nothing


def test_the_banner_names_the_gpu_and_what_a_chunk_asks_for(monkeypatch):
    import app_runs as runs
    from mirage.costs import CostModel, prior_for

    blackwell = "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    costs = CostModel(prior_for(blackwell, half=True), cap=120, granted_per_second=1.5)
    costs.device_name = blackwell
    monkeypatch.setattr(runs, "COSTS", costs)
    zero = rt.AppMode(True, "/w", "cuda", True, False, "")
    line = runs.device_line(zero, 50, 5.0)
    asked = costs.request(runs.ChunkCost.of("rgb", (32, 65), 1, 50, 5.0))
    assert line.startswith(f"GPU: **{blackwell}** (ZeroGPU, half a card): one 33-frame chunk of the rgb memory")
    assert f"asking for {asked} s" in line and "prior for RTX PRO 6000 Blackwell, half" in line and asked <= 120
    assert runs.device_line(rt.AppMode(True, "/w", "cpu", False, False, ""), 50, 5.0).startswith("Device: **CPU**")
    dedicated = rt.AppMode(True, "/w", "cuda", False, False, "")
    monkeypatch.delenv(rt.FP8_ENV, raising=False)
    assert ("regional compilation, fused RoPE and GELU (ours), VAE in bfloat16, fused VAE norms and padding (ours) (the first "
            "chunk compiles the transformer and the VAE's norms: about 20 s" in runs.device_line(dedicated, 20, 5.0))  # fmt: skip
    monkeypatch.setenv(rt.FP8_ENV, "on")  # the banner says what $MIRAGE_FP8 changes, and what it costs first
    assert ("regional compilation, FP8 (torchao), VAE in bfloat16, fused VAE norms and padding (ours) (the first chunk compiles "
            "the transformer and the VAE's norms: about 2 minutes" in runs.device_line(dedicated, 20, 5.0))  # fmt: skip
    monkeypatch.delenv(rt.FP8_ENV)  # beside an AoT package (no usable one here), the VAE's part of the setting is said too
    monkeypatch.setattr(rt, "aot_status", lambda: rt.AotStatus(note="none compiled"))
    assert runs.device_line(dedicated, 20, 5.0).endswith(
        "Speed setting: transformer eager (no ahead-of-time package: none compiled); VAE in bfloat16; fused VAE norms and padding (ours).")


def test_a_closed_page_never_deletes_an_upload_another_visitor_just_sent(tmp_path):
    """Gradio keeps uploads of the same content at one path. Visitor A handed in photo.png and closes
    the tab; visitor B has uploaded the same picture, but B's handler has not run yet (so B holds no
    claim): the file must still be there when B's handler runs. Unclaimed uploads of a closed page
    go after a grace period."""
    dirs = rt.SessionDirs(tmp_path / "cache" / "mirage-sessions", grace_s=0.3)
    upload = tmp_path / "cache" / "abc123" / "photo.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"png")
    dirs.track("a", upload)
    dirs.remove("a")  # A's tab closes while B's upload of the same file is in flight
    assert upload.is_file()
    dirs.track("b", upload)  # B's handler runs: B holds it now
    time.sleep(0.6)
    assert upload.is_file()  # claimed within the grace period: kept
    dirs.remove("b")
    assert upload.is_file()  # B's own grace period
    time.sleep(0.6)
    assert not upload.exists() and not upload.parent.exists()  # nobody claimed it: gone with its folder


def test_shared_results_keep_the_newest_and_refuse_what_is_not_an_id(tmp_path):
    import os

    shared = rt.SharedResults(tmp_path / "shared", keep=2)
    keys = []
    for n in range(3):
        video = tmp_path / f"side_by_side_{n}.mp4"
        video.write_bytes(f"video {n}".encode())
        keys.append(shared.share(video, f"caption {n}"))
        os.utime(tmp_path / "shared" / keys[-1], (n, n + 1e9))  # distinct ages, oldest first
    assert len(set(keys)) == 3 and shared.get(keys[0]) is None  # the oldest went to make room
    path, caption = shared.get(keys[2])
    assert path.read_bytes() == b"video 2" and caption == "caption 2"
    assert shared.share(tmp_path / "side_by_side_2.mp4", "caption 2") == keys[2]  # the same video: the same link
    for bad in ("../../etc", "0123", keys[1].upper(), None):
        assert shared.get(bad) is None


def test_keyframe_rows_are_added_as_a_copy_of_the_last_and_removed_down_to_two():
    from mirage import paths

    rows = [[0.0] * 7, [0.1, 0.0, 0.2, 5.0, 0.0, 0.0, 60.0]]
    assert rt.add_keyframe_row(rows) == rows + [rows[-1]]
    assert rt.remove_keyframe_row(rt.add_keyframe_row(rows)) == rows
    assert rt.remove_keyframe_row(rows) == rows  # the source and one more stay
    full = [[float(i)] * 7 for i in range(paths.MAX_KEYFRAMES)]
    assert rt.add_keyframe_row(full) == full
    assert rt.add_keyframe_row([]) == [[0.0] * 7]


def test_fp8_is_off_unless_asked_and_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv(rt.AOT_ENV, raising=False)
    dedicated, zero = rt.AppMode(True, "/w", "cuda", False, False, ""), rt.AppMode(True, "/w", "cuda", True, False, "")
    cpu, offline = rt.AppMode(True, "/w", "cpu", False, False, ""), rt.AppMode(False, None, "cpu", False, False, "")
    monkeypatch.delenv(rt.FP8_ENV, raising=False)
    assert not any(rt.fp8_wanted(m) for m in (dedicated, zero, cpu, offline))
    assert not rt.speed_settings("cuda", False).fp8
    monkeypatch.setenv(rt.FP8_ENV, "on")
    assert rt.fp8_wanted(dedicated) and not rt.fp8_wanted(offline)  # nothing to quantize without weights
    for mode, where in ((zero, "ZeroGPU"), (cpu, "cpu")):
        with pytest.raises(ValueError, match=f"MIRAGE_FP8=on needs a dedicated CUDA GPU .* runs on {where}"):
            rt.fp8_wanted(mode)
    settings = rt.speed_settings("cuda", False, fp8=True)
    assert settings.fp8 and settings.compile == "regional" and settings.vae_dtype == "bfloat16"
    assert rt.speed_settings("cuda", False).fused and not settings.fused  # FP8 + fused: no gain shown (README)
    assert rt.speed_settings("cuda", True, aot=True).compile == "off"  # AoT replaces regional compilation
    assert not rt.speed_settings("cuda", False, aot=True).fused  # a fused package loads longer than it saves
    monkeypatch.setenv(rt.AOT_ENV, "on")
    with pytest.raises(ValueError, match="MIRAGE_FP8=on and .MIRAGE_AOT=on cannot go together"):
        rt.fp8_wanted(dedicated)
    monkeypatch.delenv(rt.AOT_ENV)
    monkeypatch.setenv(rt.FP8_ENV, "yes")
    with pytest.raises(ValueError, match="MIRAGE_FP8 must be on or off, got 'yes'"):
        rt.fp8_wanted(dedicated)


def test_an_updates_files_outlive_the_next_update_for_a_slow_client(tmp_path):
    """Each update writes a folder; one goes only once two newer ones exist and it is a minute old (an
    API client still downloading update 2 when update 4 arrives got 403 when it went at once)."""
    import os
    import types

    import app_runs as runs

    session, active = types.SimpleNamespace(workdir=tmp_path), types.SimpleNamespace(number=1, writes=0)
    folders = [runs._new_folder(session, active) for _ in range(4)]
    assert [f.name for f in folders] == ["001", "002", "003", "004"] and all(f.is_dir() for f in folders)  # all young
    old = os.stat(folders[0]).st_mtime - 2 * runs.UPDATE_FILES_GRACE_S
    for f in folders[:3]:
        os.utime(f, (old, old))
    runs._new_folder(session, active)
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["004", "005"]  # the last two, and the young


def test_a_packages_load_time_is_said_and_asked_for_in_every_gpu_call(monkeypatch):
    """A GPU worker loads the block's package at its first call: the banner says how long the start-up
    check took to load it, and every call's allowance grows by that much."""
    from pathlib import Path

    import app_runs as runs
    from mirage.aot import LoadCheck, Package
    from mirage.costs import CostModel, prior_for

    good = Package(Path("block-a.pt2"), "a", [], 80.0, LoadCheck(True, 0, "", seconds=12.4))
    bad = Package(Path("block-b.pt2"), "b", [], None, LoadCheck(False, -11, "Segmentation fault"))
    status = rt.AotStatus((("704x1280, 33-frame chunks", good), ("704x1248, 33-frame chunks", bad)))
    assert status.load_seconds == pytest.approx(12.4)  # the package that is not used is not loaded
    assert "each GPU worker loads it at its first call (12 s at start-up)" in status.line()
    costs = CostModel(prior_for("NVIDIA H100 80GB HBM3"), cap=120)
    monkeypatch.setattr(runs, "COSTS", costs)
    cost = runs.ChunkCost.of("rgb", (32, 65), 1, 20, 5.0)
    before = costs.needed(cost)
    runs.count_package_load(status)
    assert costs.needed(cost) == pytest.approx(before + 12.4)
    runs.count_package_load(rt.AotStatus((), "no package"))  # eager: nothing to load
    assert costs.needed(cost) == pytest.approx(before + 12.4)


def test_the_aot_settings_are_read_or_refused_with_their_value(monkeypatch):
    zero, cpu = rt.AppMode(True, "/w", "cuda", True, False, ""), rt.AppMode(True, "/w", "cpu", False, False, "")
    monkeypatch.delenv(rt.AOT_ENV, raising=False)
    assert rt.aot_wanted(zero) and not rt.aot_wanted(cpu)  # auto: ZeroGPU with CUDA only
    monkeypatch.setenv(rt.AOT_ENV, "on")
    assert rt.aot_wanted(cpu) and not rt.aot_wanted(rt.AppMode(False, None, "cpu", False, False, ""))  # no weights: never
    monkeypatch.setenv(rt.AOT_ENV, "maybe")
    with pytest.raises(ValueError, match="MIRAGE_AOT must be auto, on or off, got 'maybe'"):
        rt.aot_wanted(zero)
    monkeypatch.delenv(rt.AOT_SIZES_ENV, raising=False)
    assert rt.aot_sizes() == [(704, 1280)]
    monkeypatch.setenv(rt.AOT_SIZES_ENV, "704x1280, 704x1248")
    assert rt.aot_sizes() == [(704, 1280), (704, 1248)]
    for bad in ("704", "704x1280x3", "axb", "700x1280", "0x1280", ""):
        monkeypatch.setenv(rt.AOT_SIZES_ENV, bad)
        with pytest.raises(ValueError, match=f"MIRAGE_AOT_SIZES must be .* got {bad!r}"):
            rt.aot_sizes()
