"""Tests for mirage/video.py: MP4 round trip, side-by-side layout and labels, causal latent-mask
upsampling, mask videos and overlays."""

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from mirage.video import (
    HIDDEN_COLOR,
    mask_to_video,
    overlay_mask,
    read_video,
    side_by_side,
    to_uint8_frames,
    upsample_latent_mask,
    write_video,
)


def smooth_video(T=9, H=64, W=96):  # [3, T, H, W] in [-1, 1], smooth in space and time
    t = torch.linspace(0, 1, T).view(T, 1, 1)
    y = torch.linspace(0, 1, H).view(1, H, 1)
    x = torch.linspace(0, 1, W).view(1, 1, W)
    r = 0.8 * torch.sin(2 * np.pi * (x + 0.3 * t))
    g = 0.8 * torch.cos(2 * np.pi * (y - 0.2 * t)) * torch.ones_like(x)
    b = (0.6 * (x + y) - 0.6) * torch.ones_like(t)
    return torch.stack([r + 0 * y, g, b], 0)


def test_write_read_round_trip(tmp_path):
    video = smooth_video()
    path = write_video(tmp_path / "sub" / "a.mp4", video, fps=16)
    assert path.is_file() and path.stat().st_size > 0
    meta = next(imageio_ffmpeg.read_frames(str(path)))  # browser-playable: H.264, yuv420p, 16 fps
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 16
    back = read_video(path)
    assert back.shape == video.shape
    assert (back - video).abs().mean() < 0.02  # H.264 crf 18 on a smooth video
    assert (back - video).abs().max() < 0.25


def test_write_uint8_and_odd_size_is_padded(tmp_path):
    frames = to_uint8_frames(smooth_video(T=5, H=33, W=47))  # [T, H, W, 3]
    assert frames.shape == (5, 33, 47, 3) and frames.dtype == np.uint8
    back = read_video(write_video(tmp_path / "odd.mp4", frames, fps=8))
    assert back.shape == (3, 5, 34, 48)  # padded to even for yuv420p
    # the padding replicates the last row / column
    assert (back[:, :, -1] - back[:, :, -2]).abs().mean() < 0.05


def test_write_video_validates(tmp_path):
    with pytest.raises(ValueError, match="mp4"):
        write_video(tmp_path / "a.gif", smooth_video())
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", smooth_video(), fps=0)
    with pytest.raises(ValueError, match="video must be"):
        write_video(tmp_path / "a.mp4", torch.zeros(9, 3, 8, 8))
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(junk)


def test_side_by_side_layout_and_labels():
    a = torch.full((3, 5, 40, 60), 0.5)
    b = torch.full((3, 5, 40, 30), -0.5)
    out = side_by_side([a, b], gap=6)
    assert out.shape == (3, 5, 40, 60 + 6 + 30)
    assert torch.equal(out[:, :, :, :60], a) and torch.equal(out[:, :, :, 66:], b)
    assert (out[:, :, :, 60:66] == -1).all()
    a, b = torch.full((3, 5, 120, 60), 0.5), torch.full((3, 5, 120, 30), -0.5)  # tall enough for wrapped labels
    out = side_by_side([a, b], gap=6)
    labelled = side_by_side([a, b], ["latent memory", "RGB point cloud"], gap=6)
    assert labelled.shape == out.shape
    changed = (labelled != out).any(0).any(0)  # [H, W]
    assert changed[:15, :40].any() and changed[:15, 66:90].any()  # labels at the top-left of each
    assert not changed[60:].any()  # nothing burned in the lower half
    assert torch.equal(labelled[:, 0], labelled[:, 4])  # same label on every frame
    with pytest.raises(ValueError, match="frame count and height"):
        side_by_side([a, torch.zeros(3, 4, 40, 60)])
    with pytest.raises(ValueError, match="labels"):
        side_by_side([a, b], ["only one"])


def test_upsample_latent_mask_exact():
    F_, h, w = 3, 2, 3
    mask = torch.zeros(F_, h, w, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, 1, 2] = True
    mask[2] = True
    up = upsample_latent_mask(mask, 9, 32, 48)  # 16x16 blocks
    assert up.shape == (9, 32, 48) and up.dtype == torch.bool
    expected = torch.zeros(9, 32, 48, dtype=torch.bool)
    expected[0, :16, :16] = True  # latent 0 -> pixel 0
    expected[1:5, 16:, 32:] = True  # latent 1 -> pixels 1..4
    expected[5:9] = True  # latent 2 -> pixels 5..8
    assert torch.equal(up, expected)
    with pytest.raises(ValueError, match="need 4"):
        upsample_latent_mask(mask, 13, 32, 48)
    with pytest.raises(ValueError, match="bool"):
        upsample_latent_mask(mask.float(), 9, 32, 48)


def test_mask_to_video_and_overlay():
    mask = torch.tensor([[[True, False]], [[False, True]]])  # [T=2, h=1, w=2]
    vid = mask_to_video(mask, size=(4, 8))
    assert vid.shape == (3, 2, 4, 8)
    assert (vid[:, 0, :, :4] == 1).all()
    assert torch.allclose(vid[:, 0, :, 4:], torch.tensor(HIDDEN_COLOR).view(3, 1, 1))
    assert torch.allclose(vid[:, 1, :, :4], torch.tensor(HIDDEN_COLOR).view(3, 1, 1))
    video = torch.zeros(3, 2, 4, 8)
    over = overlay_mask(video, mask, opacity=0.5)
    assert torch.equal(over[:, 0, :, :4], video[:, 0, :, :4])  # visible untouched
    assert torch.allclose(over[:, 0, :, 4:], 0.5 * torch.tensor(HIDDEN_COLOR).view(3, 1, 1))
    with pytest.raises(ValueError, match="frames"):
        overlay_mask(torch.zeros(3, 3, 4, 8), mask)


def test_a_long_label_wraps_instead_of_being_cut():
    """The side-by-side video's labels at a 256-px preview: every word stays inside its frame."""
    from mirage.video import _label_overlay

    text = "Pixel point cloud (baseline): memory render, every frame"
    H, W = 128, 256
    overlay = _label_overlay(text, H, W)  # [4, H, W]
    ink = overlay[3] > 0.8  # [H, W] the text itself (the box is 150/255 opaque)
    cols = torch.nonzero(ink.any(0)).flatten()
    assert int(cols.max()) < W - 2 * max(2, H // 60)  # the text ends before the right margin
    rows = torch.nonzero(ink.any(1)).flatten()
    assert int(rows.max()) > 2 * (H // 18)  # on more than one line
    wide = _label_overlay("latent", 128, 1024)[3] > 0.8
    assert int(torch.nonzero(wide.any(1)).flatten().max()) < H // 18 + 2 * max(2, H // 60) + 4  # a short label: one line


def test_concat_videos_joins_parts_frame_for_frame_without_reencoding(tmp_path):
    from mirage.video import concat_videos

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 32, 48, generator=g) * 2 - 1  # [3, T, H, W]
    b = torch.rand(3, 4, 32, 48, generator=g) * 2 - 1
    pa, pb = write_video(tmp_path / "a.mp4", a), write_video(tmp_path / "b.mp4", b)
    joined = concat_videos([pa, pb], tmp_path / "ab.mp4")
    frames = read_video(joined)
    assert frames.shape == (3, 9, 32, 48)
    assert torch.equal(frames, torch.cat([read_video(pa), read_video(pb)], dim=1))  # the parts' own frames, untouched
    assert torch.equal(read_video(concat_videos([pb, pa], tmp_path / "ba.mp4"))[:, :4], read_video(pb))
    assert not list(tmp_path.glob("*.parts.txt"))
    with pytest.raises(FileNotFoundError):
        concat_videos([pa, tmp_path / "missing.mp4"], tmp_path / "x.mp4")
