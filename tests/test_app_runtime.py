"""Tests for app_runtime: mode detection (weights, device), session folders, UI formats, ZeroGPU budgets."""

from __future__ import annotations

import pytest

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


def test_zerogpu_budget_per_memory_call(monkeypatch):
    monkeypatch.delenv(rt.ZEROGPU_MAX_ENV, raising=False)
    assert rt.gpu_seconds(65, 20, 1.0) > rt.gpu_seconds(33, 20, 1.0)
    assert rt.gpu_seconds(33, 20, 5.0) > rt.gpu_seconds(33, 20, 1.0)  # guidance: two transformer calls per step
    assert rt.gpu_seconds(33, 20, 1.0) == 31  # 20 + 1 chunk x (0.27 s x 20 calls + 5 s) = 30.4, rounded up
    assert rt.check_gpu_budget(33, 20, 5.0) == rt.gpu_seconds(33, 20, 5.0) <= rt.zerogpu_max_seconds() == 120
    with pytest.raises(ValueError, match="161 frames with 50 steps and guidance need about 180 s .* 120 s .*fewer frames or steps, or guidance 1"):
        rt.check_gpu_budget(161, 50, 5.0)
    monkeypatch.setenv(rt.ZEROGPU_MAX_ENV, "600")
    assert rt.check_gpu_budget(161, 50, 5.0) == 180


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
