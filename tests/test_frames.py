"""Frame arithmetic (mirage.frames): 4N+1 lengths, the causal pixel <-> latent mapping, chunking."""

from __future__ import annotations

import pytest
import torch

from mirage.frames import (
    check_num_frames,
    chunk_ranges,
    latent_aligned,
    latent_frame_indices,
    num_latent_frames,
    pixel_frames_of_latent,
    pixel_to_latent_frame,
    stitch_chunks,
)


def test_frame_helpers():
    assert latent_frame_indices(1) == [0]
    assert latent_frame_indices(9) == [0, 4, 8]
    assert latent_frame_indices(33) == list(range(0, 33, 4)) and len(latent_frame_indices(33)) == 9
    assert [num_latent_frames(t) for t in (1, 5, 9, 33)] == [1, 2, 3, 9]
    assert num_latent_frames(7, temporal_stride=2) == 4
    assert pixel_frames_of_latent(0) == range(0, 1)
    assert list(pixel_frames_of_latent(1)) == [1, 2, 3, 4]
    assert list(pixel_frames_of_latent(2)) == [5, 6, 7, 8]
    # the latent frames of a 4N+1 video tile its pixel frames, and frame k uses pixel frame 4k (its last)
    T = 33
    covered = [t for k in range(num_latent_frames(T)) for t in pixel_frames_of_latent(k)]
    assert covered == list(range(T))
    assert [pixel_frames_of_latent(k)[-1] for k in range(9)] == latent_frame_indices(T)


@pytest.mark.parametrize("bad", [0, 2, 4, 6, 8, 10, -3])
def test_check_num_frames_rejects(bad):
    with pytest.raises(ValueError, match=str(bad)):
        check_num_frames(bad)
    with pytest.raises(ValueError, match=str(bad)):
        num_latent_frames(bad)


def test_check_num_frames_accepts_and_bad_args():
    for t in (1, 5, 9, 13, 81):
        check_num_frames(t)
    with pytest.raises(ValueError, match="temporal_stride"):
        check_num_frames(5, temporal_stride=0)
    with pytest.raises(ValueError, match="-1"):
        pixel_frames_of_latent(-1)




def test_chunk_ranges_follow_the_paper_and_allow_a_short_last_chunk():
    assert chunk_ranges(33) == [(0, 33)]
    assert chunk_ranges(65) == [(0, 33), (32, 65)]
    assert chunk_ranges(97) == [(0, 33), (32, 65), (64, 97)]
    assert chunk_ranges(41) == [(0, 33), (32, 41)]  # last chunk 9 = 4*2+1 frames
    assert chunk_ranges(17, 9) == [(0, 9), (8, 17)]
    assert chunk_ranges(5, 9) == [(0, 5)]
    with pytest.raises(ValueError, match="64"):
        chunk_ranges(64)
    with pytest.raises(ValueError, match="N >= 1"):
        chunk_ranges(9, 1)


def test_causal_frame_mapping():
    assert pixel_to_latent_frame(9).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert pixel_to_latent_frame(1).tolist() == [0]
    # every pixel frame maps to the latent frame whose range holds it
    for t, k in enumerate(pixel_to_latent_frame(33).tolist()):
        assert t in pixel_frames_of_latent(k)
    with pytest.raises(ValueError, match="4N\\+1"):
        pixel_to_latent_frame(8)


def test_min_latent_frames_and_numpy_ints():
    import numpy as np

    assert check_num_frames(np.int64(9), min_latent_frames=2) == 9 and type(check_num_frames(np.int64(9))) is int
    with pytest.raises(ValueError, match="at least 5 frames.*got 1"):
        check_num_frames(1, min_latent_frames=2)
    with pytest.raises(ValueError, match="True"):
        check_num_frames(True)


def test_latent_aligned_and_stitch():
    assert latent_aligned(list(range(9))) == [0, 4, 8]
    assert latent_aligned(torch.arange(5)).tolist() == [0, 4]
    with pytest.raises(ValueError, match="got 8"):
        latent_aligned(list(range(8)))
    a, b = torch.arange(5.0)[None], torch.arange(4.0, 9.0)[None]  # chunks share frame 4
    assert stitch_chunks([a, b], 1).tolist() == [list(range(9))]
