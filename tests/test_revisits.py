"""Tests for mirage/revisits.py: which frames come back to an earlier camera, and their scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirage.cameras import Cameras
from mirage.paths import make_preset_path
from mirage.revisits import RevisitTally, revisit_pairs
from mirage.synthetic import default_camera


def test_revisit_pairs_are_the_returns_to_an_earlier_camera_after_leaving_it():
    cam = default_camera(256, 144, 60.0)
    detour = make_preset_path("detour_revisit", cam, 65, None, 3.0)
    pairs = revisit_pairs(detour, 3.0)
    assert pairs and pairs[-1] == (0, 64) and all(j == 0 and i > 32 for j, i in pairs)  # the way back to the start pose
    def near(i, tol_m, tol_deg):  # camera i within tol of the start camera
        d = float((detour.centers[i] - detour.centers[0]).norm())
        R = detour.cam_from_world[i, :3, :3] @ detour.cam_from_world[0, :3, :3].T
        return d <= tol_m and math.degrees(math.acos(max(-1.0, min(1.0, (float(R.trace()) - 1) / 2)))) <= tol_deg

    for i in range(1, 65):  # exactly the frames within 0.5% of the depth and 0.5 degrees of the start, once it left
        left = any(not near(k, 0.05 * 3.0, 5.0) for k in range(1, i))
        assert ((0, i) in pairs) == (near(i, 0.015 + 1e-9, 0.5 + 1e-9) and left), i
    assert near(1, 0.015, 0.5) and (0, 1) not in pairs  # the frames just after the start coincide too: no revisit yet
    assert revisit_pairs(make_preset_path("orbit_left", cam, 65, None, 3.0), 3.0) == []
    still = Cameras(cam.K.expand(9, 3, 3), cam.cam_from_world.expand(9, 4, 4), cam.width, cam.height)
    assert revisit_pairs(still, 3.0) == []  # a camera that never leaves comes back to nothing


def test_the_tally_scores_pairs_as_their_frames_arrive_and_forgets_what_undo_takes_back():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 246, size=(8, 12, 3), dtype=np.uint8)
    video = np.stack([first] + [rng.integers(0, 255, (8, 12, 3), dtype=np.uint8) for _ in range(7)] + [first, first + 10])  # [10, ...]
    tally = RevisitTally([(0, 8), (0, 9)])
    tally.add(0, 0, torch.from_numpy(video[:5]))  # chunk 0: frames 0..4, frame 0 kept
    assert tally.score() is None and set(tally.kept) == {0}
    tally.add(1, 4, video[4:9])  # chunk 1: frames 4..8 (frame 4 shared): frame 8 is frame 0 again
    s = tally.score()
    assert s.frames == 1 and math.isinf(s.psnr) and s.ssim == pytest.approx(1.0) and "∞" in s.describe()
    tally.add(2, 8, video[8:10])  # chunk 2: frame 9 is frame 0 + 10 everywhere: squared error 100
    s = tally.score()
    assert s.frames == 2 and s.psnr == pytest.approx(10 * math.log10(255**2 / 50)) and s.pairs == ((0, 8), (0, 9))
    assert "over 2 frame(s)" in s.describe() and "frame 8 ↔ 0 … 9 ↔ 0" in s.describe()
    tally.truncate(2)  # Undo of chunk 2
    assert tally.score().frames == 1
    tally.truncate(0)
    assert tally.score() is None and not tally.kept
    with pytest.raises(ValueError, match="uint8"):
        tally.add(0, 0, video[:2].astype(np.float32))
