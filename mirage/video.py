"""Video I/O and the small video compositions the demo shows: side-by-side comparisons with burned-in
labels, visibility masks of a memory readout as video, and latent-to-pixel mask upsampling.

Videos are ``[3, T, H, W]`` float in ``[-1, 1]`` (CONVENTIONS.md) or ``uint8 [T, H, W, 3]``.
Files are H.264 / yuv420p MP4 (``+faststart``), which browsers play; yuv420p needs even sizes, so
odd widths/heights are padded by one replicated column/row on the right/bottom (``read_video``
then returns the padded size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
import torch.nn.functional as F
from torch import Tensor

from .frames import causal_upsample
from .images import from_uint8, to_uint8

__all__ = [
    "VISIBLE_COLOR",
    "HIDDEN_COLOR",
    "to_uint8_frames",
    "from_uint8_frames",
    "write_video",
    "concat_videos",
    "read_video",
    "side_by_side",
    "upsample_latent_mask",
    "mask_to_video",
    "overlay_mask",
]

VISIBLE_COLOR = (1.0, 1.0, 1.0)  # mask_to_video colour of cells the memory saw, in [-1, 1]
HIDDEN_COLOR = (0.1, -0.85, -0.85)  # dark red for cells the memory did not see, in [-1, 1]


# ----------------------------------------------------------------------------------- conversions
def to_uint8_frames(video: Tensor | np.ndarray) -> np.ndarray:  # -> [T, H, W, 3] uint8
    """``[3, T, H, W]`` float in ``[-1, 1]`` (rounded; decoder overshoot is clamped) or
    ``uint8 [T, H, W, 3]`` (passed through) to ``uint8 [T, H, W, 3]``."""
    if isinstance(video, np.ndarray) or (isinstance(video, Tensor) and video.dtype == torch.uint8):
        frames = video.cpu().numpy() if isinstance(video, Tensor) else video
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"uint8 video must be [T, H, W, 3] uint8, got {frames.dtype} {frames.shape}")
        return np.ascontiguousarray(frames)
    if not isinstance(video, Tensor) or not video.is_floating_point() or video.dim() != 4 or video.shape[0] != 3:
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(f"video must be float [3, T, H, W] in [-1, 1] or uint8 [T, H, W, 3], got {shape}")
    return to_uint8(video.cpu()).permute(1, 2, 3, 0).contiguous().numpy()  # [3, T, H, W] -> [T, H, W, 3]


def from_uint8_frames(frames: np.ndarray) -> Tensor:  # [T, H, W, 3] uint8 -> [3, T, H, W] in [-1, 1]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return from_uint8(torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2))  # [T, H, W, 3] -> [3, T, H, W]


# ------------------------------------------------------------------------------------------ files
def write_video(path: str | Path, video: Tensor | np.ndarray, fps: float = 16, *, crf: int = 18) -> Path:
    """Write an H.264 (yuv420p, faststart) MP4. video: ``[3, T, H, W]`` in ``[-1, 1]`` or
    ``uint8 [T, H, W, 3]``. ``crf``: x264 quality, 0 (lossless-ish) .. 51. Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"write_video writes browser-playable .mp4 files, got {path}")
    if not (float(fps) > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if not (0 <= int(crf) <= 51):
        raise ValueError(f"crf must be in 0..51, got {crf}")
    frames = to_uint8_frames(video)  # [T, H, W, 3]
    T, H, W, _ = frames.shape
    if T < 1 or H < 1 or W < 1:
        raise ValueError(f"video is empty: {T} frames of {W}x{H}")
    if H % 2 or W % 2:  # yuv420p needs even sizes: replicate the last row / column
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    import imageio_ffmpeg  # here, not at import: the mask and composition helpers need no ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path),
        (frames.shape[2], frames.shape[1]),
        fps=float(fps),
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-crf", str(int(crf)), "-preset", "fast", "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def concat_videos(parts: Sequence[str | Path], path: str | Path) -> Path:
    """Join MP4 files written by ``write_video`` with the same size and fps into one, end to end,
    without re-encoding (ffmpeg's concat demuxer, stream copy): a growing video costs its new part
    only. Returns the path."""
    import subprocess

    import imageio_ffmpeg

    parts, path = [Path(p).resolve() for p in parts], Path(path)
    if not parts:
        raise ValueError("concat_videos needs at least one part")
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"video part not found: {p}")
    listing = path.with_name(path.name + ".parts.txt")
    listing.write_text("".join(f"file '{p.as_posix()}'\n" for p in parts), encoding="utf-8")
    try:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(path)],
                       check=True, capture_output=True)  # fmt: skip
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"ffmpeg could not join {len(parts)} parts into {path}: {err.stderr.decode(errors='replace')}") from err
    finally:
        listing.unlink(missing_ok=True)
    return path


def read_video(path: str | Path) -> Tensor:  # -> [3, T, H, W] float in [-1, 1]
    """Read every frame of a video file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        W, H = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(H, W, 3) for buf in reader]  # T x [H, W, 3]
    except (OSError, RuntimeError, StopIteration) as err:
        raise ValueError(f"cannot decode video file {path}: {err}") from err
    if not frames:
        raise ValueError(f"video file has no frames: {path}")
    return from_uint8_frames(np.stack(frames))


# ----------------------------------------------------------------------------------- composition
def _wrap(draw: PIL.ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` broken at spaces into lines no wider than ``width`` pixels where words allow."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def _label_overlay(text: str, height: int, width: int) -> Tensor:  # -> [4, H, W] rgb in [-1, 1] + alpha
    """A label (white text on a translucent black box) at the top-left of a frame, wrapped onto more
    lines (and, for a word wider than the frame, a smaller font) so that none of it is cut off."""
    canvas = PIL.Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    margin = max(2, height // 60)
    room = width - 4 * margin  # text width that leaves the box inside the frame
    size = max(10, round(height / 18))
    while True:
        font = PIL.ImageFont.load_default(size=size)
        lines = _wrap(draw, text, font, room)
        widest = max(draw.textlength(line, font=font) for line in lines.split("\n"))
        if widest <= room or size <= 6:
            break
        size -= 1
    left, top, right, bottom = draw.multiline_textbbox((2 * margin, 2 * margin), lines, font=font)
    draw.rectangle((left - margin, top - margin, right + margin, bottom + margin), fill=(0, 0, 0, 150))
    draw.multiline_text((2 * margin, 2 * margin), lines, font=font, fill=(255, 255, 255, 255))
    rgba = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0  # [H, W, 4] -> [4, H, W]
    rgba[:3] = rgba[:3] * 2.0 - 1.0
    return rgba


def side_by_side(
    videos: Sequence[Tensor], labels: Sequence[str] | None = None, *, gap: int = 8, gap_value: float = -1.0
) -> Tensor:  # -> [3, T, H, n * W + (n - 1) * gap]
    """Concatenate videos ``[3, T, H, W_i]`` left to right with ``gap`` columns between them,
    burning ``labels[i]`` into the top-left corner of video ``i``. All must share ``T`` and ``H``."""
    if len(videos) == 0:
        raise ValueError("side_by_side needs at least one video")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"{len(labels)} labels for {len(videos)} videos")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    shapes = [tuple(v.shape) for v in videos]
    for s in shapes:
        if len(s) != 4 or s[0] != 3:
            raise ValueError(f"videos must be [3, T, H, W], got shapes {shapes}")
    if len({(s[1], s[2]) for s in shapes}) != 1:
        raise ValueError(f"videos must share frame count and height, got shapes (3, T, H, W) = {shapes}")
    _, T, H, _ = shapes[0]
    parts = []
    for i, video in enumerate(videos):
        video = video.detach().float().cpu()
        if labels is not None and labels[i]:
            rgba = _label_overlay(str(labels[i]), H, video.shape[3])[:, None]  # [4, 1, H, W]
            video = video * (1.0 - rgba[3:]) + rgba[:3] * rgba[3:]
        if i > 0 and gap > 0:
            parts.append(torch.full((3, T, H, gap), float(gap_value)))
        parts.append(video)
    return torch.cat(parts, dim=3)


# ----------------------------------------------------------------------------------------- masks
def _resize_mask(mask: Tensor, height: int, width: int) -> Tensor:  # [T, h, w] bool -> [T, H, W] bool
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    up = F.interpolate(mask[:, None].float(), size=(height, width), mode="nearest-exact")  # [T, 1, H, W]
    return up[:, 0] > 0.5


def _check_mask(mask: Tensor, name: str) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dim() != 3:
        raise ValueError(f"{name} must be a [T, h, w] tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got {mask.dtype}")
    return mask.detach().cpu()


def upsample_latent_mask(
    mask: Tensor, num_frames: int, height: int, width: int, temporal_stride: int = 4
) -> Tensor:  # mask: [F, h, w] bool -> [T, H, W] bool
    """Latent-grid mask to pixel frames: latent frame ``k`` fills pixel frames ``4k-3 .. 4k`` (and
    frame 0 fills pixel 0); each cell becomes its ``H/h x W/w`` block (nearest)."""
    mask = _check_mask(mask, "latent mask")
    return _resize_mask(causal_upsample(mask, num_frames, 1, temporal_stride), height, width)  # [T, h, w] -> [T, H, W]


def mask_to_video(mask: Tensor, size: tuple[int, int] | None = None) -> Tensor:  # mask: [T, h, w] bool
    """Visibility mask as a video ``[3, T, H, W]``: visible white, hidden dark red. ``size=(H, W)``
    upsamples nearest (``None`` keeps ``h x w``)."""
    mask = _check_mask(mask, "mask")
    H, W = size if size is not None else mask.shape[1:]
    mask = _resize_mask(mask, int(H), int(W))[None]  # [1, T, H, W]
    visible = torch.tensor(VISIBLE_COLOR).view(3, 1, 1, 1)
    hidden = torch.tensor(HIDDEN_COLOR).view(3, 1, 1, 1)
    return torch.where(mask, visible, hidden)  # [3, T, H, W]


def overlay_mask(
    video: Tensor, mask: Tensor, *, color: tuple[float, float, float] = HIDDEN_COLOR, opacity: float = 0.5
) -> Tensor:  # video: [3, T, H, W]; mask: [T, h, w] bool (True = visible) -> [3, T, H, W]
    """Tint the hidden (``mask == False``) regions of a video with ``color`` at ``opacity``."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got {tuple(video.shape)}")
    mask = _check_mask(mask, "mask")
    if mask.shape[0] != video.shape[1]:
        raise ValueError(f"mask has {mask.shape[0]} frames, video has {video.shape[1]}")
    if not (0.0 <= opacity <= 1.0):
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    hidden = ~_resize_mask(mask, video.shape[2], video.shape[3])[None]  # [1, T, H, W]
    tint = torch.tensor(color, dtype=torch.float32).view(3, 1, 1, 1)
    video = video.detach().float().cpu()
    return torch.where(hidden, (1.0 - opacity) * video + opacity * tint, video)
