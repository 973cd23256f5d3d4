"""What the two memories cost, side by side in one run: readout time and cache size.

Part 1, reads. For one 33-frame chunk and caches of 1, 9 and 45 frames (rendered from the synthetic
room along an orbit, exact depth, append-all as in the paper, so the caches are as large as the
paper's), measures:

* latent memory: ``read`` of the chunk (9 latent-aligned views, one footprint z-buffer on the latent grid);
* RGB memory: ``read`` of the chunk split into ``rasterize`` (33 full-resolution views, the same
  footprint z-buffer at pixel resolution) and ``encode`` (the renders through the real Wan2.2
  ``AutoencoderKLWan`` config, random weights);
* both caches' bytes.

Part 2, growth. A 161-frame orbit and a 161-frame detour that returns to the start, chunk by chunk as
the pipeline updates (the latent-aligned frames 4k of each chunk), exact depth: the cache of both
memories after each chunk with fusion (the default) and with append-all (the paper's), against the
paper's 2.25 MiB after five chunks for its latent memory.

    python benchmarks/memory_readout.py --out results.json           # full size (704x1280), needs a GPU
    python benchmarks/memory_readout.py --small --device cpu          # reduced size for a CPU
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

from mirage.cameras import Camera  # noqa: E402
from mirage.codecs import WanVAECodec  # noqa: E402
from mirage.frames import chunk_ranges  # noqa: E402
from mirage.memory import MEMORY_KINDS, MemoryConfig, Observation, make_memory  # noqa: E402
from mirage.paths import make_preset_path  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.testing import TINY_VAE_CONFIG  # noqa: E402
from mirage.timing import synchronize  # noqa: E402

MiB = float(1 << 20)
PAPER_LATENT_MIB_AFTER_5_CHUNKS = 2.25  # arXiv 2606.09828: 0.46 -> 2.25 MiB over five chunks


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


def reads(args, codec, device, scene, source: Camera) -> list[dict]:
    """Part 1: read time of one chunk at growing caches."""
    H, W, T = args.height, args.width, args.frames
    s, C = codec.spatial_stride, codec.latent_channels
    n_cache = max(args.cache_frames)
    total = n_cache + T
    total += (1 - total) % 4  # 4N+1 frames for the path preset
    path = make_preset_path("orbit_left", source, num_frames=total, amount=30.0, scene_depth=3.0)
    rows = []
    for k in args.cache_frames:
        cache_cams = path[:k]
        chunk_cams = path[n_cache - T // 2 : n_cache - T // 2 + T] if n_cache >= T else path[total - T :]
        rgb, depth = scene.render(cache_cams.to(device))  # [k, 3, H, W], [k, H, W]
        latents = torch.randn(C, k, H // s, W // s, device=device)  # tokens cached in bf16 as in the paper
        lat_mem = make_memory("latent", MemoryConfig(update_policy="append"), codec=codec, device=device)
        rgb_mem = make_memory("rgb", MemoryConfig(update_policy="append"), codec=codec, device=device)
        first = Observation.single(cache_cams.camera(0), depth[0], latents[:, 0], rgb[0])
        for mem in (lat_mem, rgb_mem):
            mem.initialize(first)
            if k > 1:
                mem.update(Observation(cache_cams[1:], depth[1:], latents[:, 1:], rgb[1:].permute(1, 0, 2, 3)))
        t_lat, r_lat = timed(lambda: lat_mem.read(chunk_cams), device, 3, args.reps)
        t_lat_view, _ = timed(lambda: lat_mem.read_views(chunk_cams[:1]), device, 3, args.reps)
        lat_mem.compile_reads = True  # the same read through torch.compile (compiled during the warm-up)
        t_comp, r_comp = timed(lambda: lat_mem.read(chunk_cams), device, 3, args.reps)
        lat_mem.compile_reads = False
        assert torch.equal(r_comp.latents, r_lat.latents) and torch.equal(r_comp.mask, r_lat.mask)
        rgb_reps = max(1, args.reps // 4) if k <= 9 else 1
        t_rgb, r_rgb = timed(lambda: rgb_mem.read(chunk_cams), device, 1 if device.type == "cuda" else 0, rgb_reps)
        stages = [rec for rec in rgb_mem.timings.history if rec["call"] == "read"][-rgb_reps:]
        rows.append({
            "cache_frames": k, "latent_points": lat_mem.num_points, "rgb_points": rgb_mem.num_points,
            "latent_read_s": t_lat, "latent_read_one_view_s": t_lat_view, "latent_read_compiled_s": t_comp,
            "rgb_rasterize_s": statistics.median(r["rasterize"] for r in stages),
            "rgb_encode_s": statistics.median(r["encode"] for r in stages), "rgb_read_s": t_rgb,
            "latent_bytes": lat_mem.nbytes, "rgb_bytes": rgb_mem.nbytes, "read_ratio_rgb_over_latent": t_rgb / t_lat,
            "cache_ratio": rgb_mem.nbytes / lat_mem.nbytes,
            "latent_hole_fraction": r_lat.hole_fraction, "rgb_hole_fraction": r_rgb.hole_fraction,
        })  # fmt: skip
        print(f"reads, cache of {k} frames: latent {1e3 * t_lat:.3f} ms (compiled {1e3 * t_comp:.3f}), RGB {1e3 * t_rgb:.1f} ms", flush=True)
        del lat_mem, rgb_mem
    return rows


def growth(args, codec, device, scene, source: Camera, preset: str, amount: float) -> dict:
    """Part 2: cache after init and after each chunk, for both memories and both update policies."""
    H, W = args.height, args.width
    s, C = codec.spatial_stride, codec.latent_channels
    path = make_preset_path(preset, source, num_frames=args.path_frames, amount=amount, scene_depth=3.0)
    ranges = chunk_ranges(len(path), args.frames)
    out = {"preset": preset, "amount": amount, "frames": len(path), "chunks": len(ranges), "sizes": {}, "points": {}, "update_s": {}}
    g = torch.Generator(device=device).manual_seed(0)
    for kind in MEMORY_KINDS:
        for policy in ("fuse", "append"):
            mem = make_memory(kind, MemoryConfig(update_policy=policy), codec=codec, device=device)
            rgb, depth = scene.render(path[:1].to(device))  # [1, 3, H, W], [1, H, W]
            mem.initialize(Observation.single(path.camera(0), depth[0], torch.randn(C, H // s, W // s, generator=g, device=device), rgb[0]))
            seconds = []
            for start, stop in ranges:
                cams = path[start + 4 : stop : 4]  # the latent-aligned frames 4k (k >= 1) of the chunk
                rgb, depth = scene.render(cams.to(device))  # [F-1, 3, H, W], [F-1, H, W]
                latents = torch.randn(C, len(cams), H // s, W // s, generator=g, device=device)
                synchronize(device)
                t0 = time.perf_counter()
                mem.update(Observation(cams, depth, latents, rgb.permute(1, 0, 2, 3)))
                synchronize(device)
                seconds.append(time.perf_counter() - t0)
            name = f"{kind} {policy}"
            out["sizes"][name] = [e["nbytes"] for e in mem.size_history]
            out["points"][name] = [e["num_points"] for e in mem.size_history]
            out["update_s"][name] = seconds
            print(f"growth {preset}, {name}: {out['sizes'][name][-1] / MiB:.2f} MiB after {len(ranges)} chunks", flush=True)
            del mem
    return out


def growth_table(g: dict) -> str:
    names = list(g["sizes"])
    lines = [f"{g['preset']} ({g['frames']} frames, {g['chunks']} chunks): cache in MiB after init and after each chunk",
             "", "| after | " + " | ".join(names) + " | RGB/latent (fuse) | RGB/latent (append) |",
             "|---|" + "---:|" * (len(names) + 2)]  # fmt: skip
    for i in range(g["chunks"] + 1):
        sz = {n: g["sizes"][n][i] for n in names}
        lines.append(f"| {'init' if i == 0 else f'chunk {i}'} | " + " | ".join(f"{sz[n] / MiB:.2f}" for n in names)
                     + f" | {sz['rgb fuse'] / sz['latent fuse']:.1f}x | {sz['rgb append'] / sz['latent append']:.1f}x |")  # fmt: skip
    last = g["sizes"]["latent fuse"][min(5, g["chunks"])] / MiB
    lines += ["", f"latent memory with fusion after {min(5, g['chunks'])} chunks: {last:.2f} MiB "
                  f"(paper: {PAPER_LATENT_MIB_AFTER_5_CHUNKS} MiB after five chunks; {'below' if last < PAPER_LATENT_MIB_AFTER_5_CHUNKS else 'above'})"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=33, help="pixel frames per chunk (4N+1)")
    ap.add_argument("--path-frames", type=int, default=161, help="frames of the growth paths (4N+1)")
    ap.add_argument("--cache-frames", type=int, nargs="+", default=[1, 9, 45])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="reduced size for a CPU run: 176x320, tiny VAE, caches of 1 and 9")
    ap.add_argument("--skip", nargs="*", choices=("reads", "growth"), default=[])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.small:
        args.height, args.width, args.cache_frames = 176, 320, [1, 9]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.reps = args.reps or (20 if device.type == "cuda" else 3)
    torch.manual_seed(0)
    codec = WanVAECodec.from_config(TINY_VAE_CONFIG if args.small else None, seed=0, device=device).to(device, dtype)
    scene = default_scene()
    source: Camera = default_camera(width=args.width, height=args.height)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "vae_dtype": str(dtype), "vae": "tiny" if args.small else "Wan2.2 config, random weights",
        "size": f"{args.width}x{args.height}", "chunk_frames": args.frames, "reps": args.reps,
    }  # fmt: skip
    result = {"env": env}
    if "reads" not in args.skip:
        rows = result["reads"] = reads(args, codec, device, scene, source)
        print(f"\nmemory readout, one {args.frames}-frame chunk at {env['size']} on {env['device']} (VAE {dtype}, median of {args.reps})\n")
        print("| cache frames | latent pts | RGB pts | latent read (ms) | latent read, compiled (ms) | RGB rasterize (ms) | RGB encode (ms) | RGB read (ms) | RGB/latent read | latent cache (MiB) | RGB cache (MiB) | cache ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['cache_frames']} | {r['latent_points']:,} | {r['rgb_points']:,} | {1e3 * r['latent_read_s']:.3f} | "
                  f"{1e3 * r['latent_read_compiled_s']:.3f} | "
                  f"{1e3 * r['rgb_rasterize_s']:.1f} | {1e3 * r['rgb_encode_s']:.1f} | {1e3 * r['rgb_read_s']:.1f} | "
                  f"{r['read_ratio_rgb_over_latent']:.0f}x | {r['latent_bytes'] / MiB:.2f} | {r['rgb_bytes'] / MiB:.1f} | {r['cache_ratio']:.1f}x |")  # fmt: skip
    if "growth" not in args.skip:
        result["growth"] = [growth(args, codec, device, scene, source, "orbit_left", 30.0),
                            growth(args, codec, device, scene, source, "detour_revisit", 60.0)]  # fmt: skip
        for g in result["growth"]:
            print("\n" + growth_table(g))
    out = args.out or Path(__file__).parent / "results" / f"memory_readout_{device.type}{'_small' if args.small else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
