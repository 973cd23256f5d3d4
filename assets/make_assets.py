"""Write the example assets (deterministic): ``python assets/make_assets.py`` from the repo root.

motorcycle_left.png / motorcycle_right.png / motorcycle_depth.npy:
    ``crop_to_multiple(load_middlebury_motorcycle(), 32)`` -> 736 x 480 uint8 RGB and float32
    left-view camera-z depth in metres (NaN = no ground truth).
synthetic_room.png / synthetic_room_depth.npy:
    ``default_scene().render(default_camera(512, 288, 60))`` -> uint8 RGB and float32 depth (metres).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from mirage.examples import (  # noqa: E402
    SYNTHETIC_ROOM_FOV_X_DEG,
    SYNTHETIC_ROOM_SIZE,
    crop_to_multiple,
    load_middlebury_motorcycle,
)
from mirage.synthetic import default_camera, default_scene  # noqa: E402

OUT = Path(__file__).resolve().parent


def to_uint8(image) -> np.ndarray:  # image: [3, H, W] in [-1, 1] -> [H, W, 3] uint8
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # CHW -> HWC


def save_png(path: Path, image) -> None:  # image: [3, H, W] in [-1, 1]
    Image.fromarray(to_uint8(image)).save(path, optimize=True)
    print(f"wrote {path.name}: {path.stat().st_size / 1024:.0f} KiB")


def save_depth(path: Path, depth) -> None:  # depth: [H, W] metres, NaN invalid
    np.save(path, depth.numpy().astype(np.float32))
    print(f"wrote {path.name}: {path.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    moto = crop_to_multiple(load_middlebury_motorcycle(), 32)
    save_png(OUT / "motorcycle_left.png", moto.left)
    save_png(OUT / "motorcycle_right.png", moto.right)
    save_depth(OUT / "motorcycle_depth.npy", moto.depth_left)

    rgb, depth = default_scene().render(default_camera(*SYNTHETIC_ROOM_SIZE, SYNTHETIC_ROOM_FOV_X_DEG))
    save_png(OUT / "synthetic_room.png", rgb[0])
    save_depth(OUT / "synthetic_room_depth.npy", depth[0])


if __name__ == "__main__":
    main()
