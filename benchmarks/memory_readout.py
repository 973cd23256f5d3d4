"""Readout cost of the latent memory vs the RGB point-cloud memory, side by side in one run.

For one 33-frame chunk and caches of 1, 9 and 45 frames (rendered from the synthetic room along an
orbit, exact depth, no deduplication, as in the paper), measures:

* latent memory: ``read`` of the chunk (9 latent-aligned views, one z-buffer on the latent grid);
* RGB memory: ``read`` of the chunk split into ``rasterize`` (33 full-resolution views) and
  ``encode`` (the renders through the real Wan2.2 ``AutoencoderKLWan`` config, random weights);
* both caches' bytes;

and prints a markdown table plus the ratios, and writes JSON.

    python benchmarks/memory_readout.py                     # full size (704x1280), needs a GPU
    python benchmarks/memory_readout.py --small --device cpu  # reduced size for a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage.cameras import Camera, Cameras  # noqa: E402
from mirage.codecs import WAN22_VAE_CONFIG, WanVAECodec  # noqa: E402
from mirage.memory import LatentSpatialMemory, Observation, RGBPointCloudMemory  # noqa: E402
from mirage.paths import make_preset_path  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.timing import synchronize  # noqa: E402

MiB = float(1 << 20)


def timed(fn, device, warmup: int, reps: int) -> tuple[float, object]:
    """Median wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA synchronised)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=33, help="pixel frames per chunk (4N+1)")
    ap.add_argument("--cache-frames", type=int, nargs="+", default=[1, 9, 45])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="VAE/latent dtype (default bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="reduced size for a CPU run: 176x320")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.small:
        args.height, args.width = 176, 320
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    reps = args.reps or (20 if device.type == "cuda" else 3)
    H, W, T = args.height, args.width, args.frames
    torch.manual_seed(0)

    codec = WanVAECodec.from_config(WAN22_VAE_CONFIG, seed=0).to(device, dtype)
    s, C = codec.spatial_stride, codec.latent_channels
    h, w = H // s, W // s

    # the scene and the cameras: a cache filled along an orbit, read along the orbit's continuation
    scene = default_scene()
    source: Camera = default_camera(width=W, height=H)
    n_cache = max(args.cache_frames)
    total = n_cache + T
    total += (1 - total) % 4  # 4N+1 frames for the path preset
    path = make_preset_path("orbit_left", source, num_frames=total, amount=30.0, scene_depth=scene.median_depth(source) if hasattr(scene, "median_depth") else 3.0)
    rows = []
    for k in args.cache_frames:
        cache_cams = path[:k]
        chunk_cams: Cameras = path[n_cache - T // 2 : n_cache - T // 2 + T] if n_cache >= T else path[total - T :]
        rgb, depth = scene.render(cache_cams.to(device))  # [k, 3, H, W], [k, H, W]
        # tokens are cached in bf16 as in the paper (xyz fp32 + 48 bf16), whatever the VAE computes in
        latents = torch.randn(C, k, h, w, device=device, dtype=torch.bfloat16)

        lat_mem = LatentSpatialMemory(codec=codec, device=device)
        rgb_mem = RGBPointCloudMemory(codec, device=device)
        first = Observation.single(cache_cams.camera(0), depth[0], latents[:, 0], rgb[0])
        lat_mem.initialize(first)
        rgb_mem.initialize(first)
        if k > 1:
            rest = Observation(cache_cams[1:], depth[1:], latents[:, 1:], rgb[1:].permute(1, 0, 2, 3))
            lat_mem.update(rest)
            rgb_mem.update(rest)

        t_lat, r_lat = timed(lambda: lat_mem.read(chunk_cams), device, 3, reps)
        t_lat_view, _ = timed(lambda: lat_mem.read_views(chunk_cams[:1]), device, 3, reps)
        # RGB: one full read (rasterize + encode), stages timed inside the memory (synchronised)
        rgb_reps = max(1, reps // 4)
        t_rgb, r_rgb = timed(lambda: rgb_mem.read(chunk_cams), device, 1 if device.type == "cuda" else 0, rgb_reps)
        stages = [rec for rec in rgb_mem.timings.history if rec["call"] == "read"][-rgb_reps:]
        t_rast = statistics.median(rec["rasterize"] for rec in stages)
        t_enc = statistics.median(rec["encode"] for rec in stages)
        rows.append(
            {
                "cache_frames": k,
                "latent_points": lat_mem.num_points,
                "rgb_points": rgb_mem.num_points,
                "latent_read_s": t_lat,
                "latent_read_one_view_s": t_lat_view,
                "rgb_rasterize_s": t_rast,
                "rgb_encode_s": t_enc,
                "rgb_read_s": t_rgb,
                "latent_bytes": lat_mem.nbytes,
                "rgb_bytes": rgb_mem.nbytes,
                "read_speedup": t_rgb / t_lat,
                "cache_ratio": rgb_mem.nbytes / lat_mem.nbytes,
                "latent_hole_fraction": r_lat.hole_fraction,
                "rgb_hole_fraction": r_rgb.hole_fraction,
            }
        )
        rgb_mem = lat_mem = None  # free the caches before the next size

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "size": f"{W}x{H}",
        "chunk_frames": T,
        "latent_grid": f"{w}x{h}",
        "reps": reps,
    }
    print(f"\nmemory readout, one {T}-frame chunk at {W}x{H} on {env['device']} ({env['dtype']}, median of {reps})\n")
    print("| cache frames | latent pts | RGB pts | latent read (ms) | RGB rasterize (ms) | RGB encode (ms) | RGB read (ms) | speedup | latent cache (MiB) | RGB cache (MiB) | cache ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['cache_frames']} | {r['latent_points']:,} | {r['rgb_points']:,} | {1e3 * r['latent_read_s']:.3f} | "
            f"{1e3 * r['rgb_rasterize_s']:.1f} | {1e3 * r['rgb_encode_s']:.1f} | {1e3 * r['rgb_read_s']:.1f} | "
            f"{r['read_speedup']:.0f}x | {r['latent_bytes'] / MiB:.2f} | {r['rgb_bytes'] / MiB:.1f} | {r['cache_ratio']:.1f}x |"
        )
    out = args.out or Path(__file__).parent / "results" / f"memory_readout_{device.type}{'_small' if args.small else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
