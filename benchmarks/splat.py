"""Cost of the readout splats: nearest-cell ``splat_zbuffer`` vs ``splat_footprints``.

Two workloads, rendered from the synthetic room along an orbit (exact depth):

* latent: a cache of 45 frames on the latent grid (80x44 cells: 158,400 points with their
  ``cell_footprints``), read for the 9 latent-aligned views of a chunk;
* rgb: one frame at full resolution (1280x704: 901,120 points), read for the 33 views of a chunk.

Prints a markdown table (median milliseconds) and writes JSON. ``--old FILE`` also times the
``splat_zbuffer`` of another copy of ``mirage/geometry.py`` (e.g. ``git show REV:mirage/geometry.py``).

    python benchmarks/splat.py                              # full size, needs a GPU
    python benchmarks/splat.py --device cpu --rgb-views 3  # a CPU proxy: 3 of the 33 RGB views
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage.geometry import cell_footprints, splat_footprints, splat_zbuffer, unproject_depth  # noqa: E402
from mirage.paths import make_preset_path  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.timing import synchronize  # noqa: E402


def timed(fn, device, warmup: int, reps: int) -> tuple[float, float]:
    """Median and smallest wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA
    synchronised). On a shared CPU the smallest is the steadier number."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def workload(scene, path, cache: slice, views: slice, width: int, height: int, device):
    """Points [N, 3], axes [N, 2, 3], frames [N] of the cached frames, and the read cameras."""
    cams = path.rescaled(width, height)
    cache_cams, read_cams = cams[cache], cams[views]
    _, depth = scene.render(cache_cams)  # [F, h, w]
    pts = unproject_depth(depth, cache_cams.K, cache_cams.world_from_cam)  # [F, h, w, 3]
    axes = cell_footprints(depth, cache_cams.K, cache_cams.world_from_cam)  # [F, h, w, 2, 3]
    frames = torch.arange(depth.shape[0])[:, None, None].expand(depth.shape)  # [F, h, w]
    return (pts.reshape(-1, 3).to(device), axes.reshape(-1, 2, 3).to(device), frames.reshape(-1).to(device),
            read_cams.K.to(device), read_cams.cam_from_world.to(device))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--rgb-views", type=int, default=33, help="RGB views read (33 for a chunk)")
    ap.add_argument("--old", type=Path, default=None, help="another geometry.py whose splat_zbuffer to time")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    reps = args.reps or (20 if device.type == "cuda" else 3)
    old = None
    if args.old is not None:
        spec = importlib.util.spec_from_file_location("old_geometry", args.old)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_geometry"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)

    scene = default_scene()
    W, H = 1280, 704
    path = make_preset_path("orbit_left", default_camera(width=W, height=H), num_frames=77, amount=30.0, scene_depth=3.0)
    cases = {
        "latent 9 views x 45 frames, 80x44": (workload(scene, path, slice(0, 45), slice(29, 62, 4), 80, 44, device), 80, 44),
        f"rgb {args.rgb_views} views x 1 frame, 1280x704": (workload(scene, path, slice(44, 45), slice(29, 29 + args.rgb_views), W, H, device), W, H),
    }
    rows = []
    for name, ((pts, axes, frames, K, T), w, h) in cases.items():
        runs = {"splat_zbuffer (nearest cell)": lambda: splat_zbuffer(pts, None, K, T, h, w, surface_tolerance=0.05)}
        if old is not None:
            runs["old splat_zbuffer"] = lambda: old.splat_zbuffer(pts, None, K, T, h, w, surface_tolerance=0.05)
        for m in (4, 3, 2):
            runs[f"splat_footprints max_cells={m}"] = (
                lambda m=m: splat_footprints(pts, axes, frames, None, K, T, h, w, surface_tolerance=0.05, max_cells=m)
            )
        for label, fn in runs.items():
            median, best = timed(fn, device, 2 if device.type == "cuda" else 1, reps)
            rows.append({"case": name, "points": len(pts), "views": len(K), "splat": label, "ms": 1e3 * median, "min_ms": 1e3 * best})
            print(f"{name:40s} {label:34s} {1e3 * median:9.2f} ms (min {1e3 * best:.2f})", flush=True)

    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "reps": reps}  # fmt: skip
    print(f"\nsplat readout on {env['device']} (median of {reps}, surface_tolerance 0.05)\n")
    print("| case | points | views | splat | median ms | min ms |")
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['points']:,} | {r['views']} | {r['splat']} | {r['ms']:.2f} | {r['min_ms']:.2f} |")
    out = args.out or Path(__file__).parent / "results" / f"splat_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
