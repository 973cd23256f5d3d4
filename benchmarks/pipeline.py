"""Benchmark the generation loop: latent memory (Mirage) vs RGB point cloud, and bare diffusers Wan2.2 TI2V.

Full size with random weights (no downloads): the Wan2.2 TI2V-5B transformer config, the Wan2.2 VAE
config (``mirage.codecs.WAN22_VAE_CONFIG``), random prompt embeddings ``[1, 512, 4096]`` (so no text
encoder), and for depth the Depth Pro architecture (three DINOv2-L/16 encoders, the released
``apple/DepthPro-hf`` layout) with random weights, timed for real, while the depth it hands to the
pipeline is the planar prior's (random weights predict meaningless depth; valid geometry makes the
memories grow and align as with a real estimate). Both memories run the same loop with the same seed.

    python benchmarks/pipeline.py --offload --out results.json     # GPU: 704x1280, 65 frames, 20 steps
    python benchmarks/pipeline.py --small                          # CPU smoke test, tiny models, < 3 min

Prints markdown tables (seconds per stage per chunk, totals, peak VRAM, cache size, ratios) and
writes everything to ``--out`` as JSON. ``--offload`` repeats the runs with model CPU offload (the
24 GB setting). The bare ``WanImageToVideoPipeline(expand_timesteps=True)`` runs on the same
components, at one chunk (``--chunk-frames``) and at the full length in one pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel  # noqa: E402

from mirage.codecs import WanVAECodec  # noqa: E402
from mirage.depth import DepthProBackend, PlanarPriorBackend, tiny_depth_pro_config  # noqa: E402
from mirage.paths import make_preset_path  # noqa: E402
from mirage.pipeline import READOUT_PARTS, STAGES, WAN_UNIPC_CONFIG, MiragePipeline  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402

MiB, GiB = 2**20, 2**30

# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json
TI2V_5B_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TINY_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
    text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=32,
)
TINY_VAE_CONFIG = {"base_dim": 4, "decoder_base_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}


def depth_pro_large_config():
    """The released Depth Pro layout: DINOv2-L/16 at 384 for the image, patch and field-of-view encoders."""
    from transformers import DepthProConfig

    dinov2_l = {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                "patch_size": 16, "image_size": 384, "use_mask_token": False}
    return DepthProConfig(image_model_config=dinov2_l, patch_model_config=dinov2_l, fov_model_config=dinov2_l,
                          use_fov_model=True)


class TimedDepthProPlanarGeometry:
    """Runs a random-weight Depth Pro on every request (its real cost) and returns the planar prior's depth."""

    name = "depth-pro (random weights, timed) + planar-prior geometry"
    needs_weights = False

    def __init__(self, depth_pro: DepthProBackend, planar: PlanarPriorBackend) -> None:
        self.depth_pro = depth_pro
        self.planar = planar

    def estimate(self, image, K=None):  # image [3, H, W] in [-1, 1]
        self.depth_pro.estimate(image, K)
        return self.planar.estimate(image, K)

    def estimate_batch(self, frames, K):  # frames [3, F, H, W]; K [3, 3] -> [F, H, W]
        self.depth_pro.estimate_batch(frames, K)
        return torch.stack([self.planar.estimate(frames[:, i], K).depth for i in range(frames.shape[1])])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device: torch.device, dtype: torch.dtype):
    """Random-weight components: (transformer, vae, depth backend, prompt embeds [1, L, D])."""
    t0 = time.perf_counter()
    cfg = TINY_TRANSFORMER_CONFIG if args.small else TI2V_5B_CONFIG
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**cfg)
    transformer = transformer.to(dtype).eval()
    vae = WanVAECodec.from_config(TINY_VAE_CONFIG if args.small else None, seed=0, torch_dtype=dtype, device=device).vae
    planar = PlanarPriorBackend()
    if args.depth == "planar":
        depth = planar
    else:
        depth_pro = DepthProBackend.from_config(tiny_depth_pro_config() if args.small else depth_pro_large_config(),
                                                seed=0, device=device)
        if device.type == "cuda":
            depth_pro.model.half()
        depth = TimedDepthProPlanarGeometry(depth_pro, planar)
    embeds = torch.randn(1, 8 if args.small else 512, cfg["text_dim"], generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"built components in {time.perf_counter() - t0:.1f} s", flush=True)
    return transformer, vae, depth, embeds.to(device, dtype)


def scene_inputs(args):
    """Input image [3, H, W] in [-1, 1] (the synthetic room) and an orbit path of args.frames cameras."""
    cam = default_camera(args.width, args.height)
    rgb, depth = default_scene().render(cam)  # [1, 3, H, W], [1, H, W]
    path = make_preset_path("orbit_left", cam, num_frames=args.frames, amount=20.0, scene_depth=float(depth.median()))
    return rgb[0], path


def run_mirage(pipe: MiragePipeline, image, path, embeds, args, memory: str, label: str, device) -> dict:
    sync(device)
    t0 = time.perf_counter()
    out = pipe(
        image, path, prompt_embeds=embeds, num_frames=args.frames, chunk_frames=args.chunk_frames,
        num_inference_steps=args.steps, memory=memory, memory_strength=args.memory_strength,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sync(device)
    wall = time.perf_counter() - t0
    result = {
        "label": label, "memory": memory, "wall_s": wall, "chunk_timings": out.chunk_timings,
        "total_s": sum(t["total"] for t in out.chunk_timings), "peak_vram_bytes": out.peak_memory_bytes,
        "cache_bytes": out.cache_bytes, "num_points": [e["num_points"] for e in out.memory.size_history],
        "hole_fraction": [r.hole_fraction for r in out.readouts], "depth_scales": out.depth_scales,
    }
    print(f"{label}: {wall:.2f} s, peak {max(out.peak_memory_bytes) / GiB:.2f} GiB", flush=True)
    return result


def run_bare(bare: WanImageToVideoPipeline, image, embeds, args, frames: int, label: str, device) -> dict:
    from PIL import Image

    pil = Image.fromarray(((image.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    bare(image=pil, prompt_embeds=embeds, height=args.height, width=args.width, num_frames=frames,
         num_inference_steps=args.steps, guidance_scale=1.0, generator=torch.Generator().manual_seed(args.seed),
         output_type="pt")
    sync(device)
    wall = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
    print(f"{label}: {wall:.2f} s, peak {peak / GiB:.2f} GiB", flush=True)
    return {"label": label, "frames": frames, "total_s": wall, "peak_vram_bytes": peak}


def memory_seconds(timing: dict) -> float:
    """The memory's own stages: readout + update (depth estimation excluded)."""
    return timing.get("readout", 0.0) + timing.get("update", 0.0)


def stage_table(runs: list[dict]) -> str:
    stages = [s for s in STAGES + READOUT_PARTS + ("total",) if any(s in t for r in runs for t in r["chunk_timings"])]
    cols = [(r, c) for r in runs for c in range(len(r["chunk_timings"]))]
    head = "| stage (s) | " + " | ".join(f"{r['label']} c{c}" for r, c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for s in stages:
        name = f"  ({s}, part of readout)" if s in READOUT_PARTS else s
        lines.append(f"| {name} | " + " | ".join(f"{r['chunk_timings'][c].get(s, 0.0):.4f}" for r, c in cols) + " |")
    lines.append("| peak VRAM (GiB) | " + " | ".join(f"{r['peak_vram_bytes'][c] / GiB:.2f}" for r, c in cols) + " |")
    lines.append("| cache (MiB) | " + " | ".join(f"{r['cache_bytes'][c] / MiB:.2f}" for r, c in cols) + " |")
    lines.append("| readout holes | " + " | ".join(f"{r['hole_fraction'][c]:.1%}" for r, c in cols) + " |")
    return "\n".join(lines)


def summary(latent: dict, rgb: dict, bare: list[dict]) -> tuple[str, dict]:
    lat_mem = sum(memory_seconds(t) for t in latent["chunk_timings"])
    rgb_mem = sum(memory_seconds(t) for t in rgb["chunk_timings"])
    share = [memory_seconds(t) / t["total"] for t in latent["chunk_timings"]]
    rgb_parts = [t.get("rasterize", 0.0) + t.get("encode", 0.0) for t in rgb["chunk_timings"]]
    stats = {
        "latent_total_s": latent["total_s"], "rgb_total_s": rgb["total_s"],
        "total_ratio_rgb_over_latent": rgb["total_s"] / latent["total_s"],
        "latent_memory_s": lat_mem, "rgb_memory_s": rgb_mem,
        "memory_ratio_rgb_over_latent": rgb_mem / max(lat_mem, 1e-12),
        "latent_memory_share_per_chunk": share, "latent_memory_share_target_met": all(s < 0.01 for s in share),
        "rgb_rasterize_plus_encode_per_chunk_s": rgb_parts,
        "peak_vram_gib": {"latent": max(latent["peak_vram_bytes"]) / GiB, "rgb": max(rgb["peak_vram_bytes"]) / GiB},
    }
    lines = [
        "| quantity | latent (Mirage) | RGB point cloud | ratio RGB/latent |",
        "|---|---|---|---|",
        f"| total (s) | {latent['total_s']:.2f} | {rgb['total_s']:.2f} | {stats['total_ratio_rgb_over_latent']:.3f} |",
        f"| memory stages: readout + update (s) | {lat_mem:.4f} | {rgb_mem:.4f} | {stats['memory_ratio_rgb_over_latent']:.1f} |",
        f"| peak VRAM (GiB) | {stats['peak_vram_gib']['latent']:.2f} | {stats['peak_vram_gib']['rgb']:.2f} | |",
        f"| cache after last chunk (MiB) | {latent['cache_bytes'][-1] / MiB:.2f} | {rgb['cache_bytes'][-1] / MiB:.2f} | "
        f"{rgb['cache_bytes'][-1] / latent['cache_bytes'][-1]:.1f} |",
        "",
        "latent memory share of each chunk (target < 1%): " + ", ".join(f"{s:.3%}" for s in share),
        "RGB rasterize + encode per chunk (s): " + ", ".join(f"{p:.4f}" for p in rgb_parts),
    ]
    for b in bare:
        lines.append(f"bare diffusers WanImageToVideoPipeline, {b['frames']} frames: {b['total_s']:.2f} s, "
                     f"peak {b['peak_vram_bytes'] / GiB:.2f} GiB")
    if bare:
        one = next(b for b in bare if b["label"].endswith("chunk"))
        n = len(latent["chunk_timings"])
        stats["overhead_vs_bare_chunks"] = {"latent": latent["total_s"] / (n * one["total_s"]),
                                            "rgb": rgb["total_s"] / (n * one["total_s"])}
        lines.append(f"time relative to {n} x the bare one-chunk pipeline: latent {stats['overhead_vs_bare_chunks']['latent']:.3f}, "
                     f"RGB {stats['overhead_vs_bare_chunks']['rgb']:.3f} (ours adds depth + memory)")
    return "\n".join(lines), stats


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke preset: tiny models, 64x96, 17 frames, chunks of 9, 3 steps")
    p.add_argument("--height", type=int, default=None, help="default 704 (64 with --small)")
    p.add_argument("--width", type=int, default=None, help="default 1280 (96 with --small)")
    p.add_argument("--frames", type=int, default=None, help="video length 4N+1, default 65 (17 with --small)")
    p.add_argument("--chunk-frames", type=int, default=None, help="default 33 (9 with --small)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps, default 20 (3 with --small)")
    p.add_argument("--memory-strength", type=float, default=0.8)
    p.add_argument("--offload", action="store_true", help="also run everything with model CPU offload (CUDA only)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare diffusers pipeline")
    p.add_argument("--no-warmup", action="store_true", help="skip the short warm-up runs")
    p.add_argument("--depth", choices=("depth-pro-timed", "planar"), default="depth-pro-timed")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    defaults = dict(height=64, width=96, frames=17, chunk_frames=9, steps=3) if args.small else \
        dict(height=704, width=1280, frames=65, chunk_frames=33, steps=20)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.offload and device.type != "cuda":
        raise SystemExit(f"--offload needs a CUDA device, got {device}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 4))
    transformer, vae, depth, embeds = build(args, device, dtype)
    image, path = scene_inputs(args)
    pipe = MiragePipeline(transformer, vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), depth_backend=depth)
    bare = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                   scheduler=UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), expand_timesteps=True)
    bare.set_progress_bar_config(disable=True)

    if not args.no_warmup:  # kernels, cuDNN algorithms, allocator, lazy imports (one short chunk each)
        warm = argparse.Namespace(**{**vars(args), "frames": args.chunk_frames, "steps": 2})
        for memory in ("latent", "rgb"):
            run_mirage(pipe, image, path, embeds, warm, memory, f"warm-up {memory}", device)
        if not args.no_bare:
            run_bare(bare, image, embeds, warm, args.chunk_frames, "warm-up bare", device)

    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype), "depth_backend": depth.name, "modes": {}}
    for offload in (False, True) if args.offload else (False,):
        mode = "offload" if offload else "resident"
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        runs = [run_mirage(pipe, image, path, embeds, args, m, f"{m}{' +offload' if offload else ''}", device)
                for m in ("latent", "rgb")]
        if offload:
            pipe.remove_all_hooks()
            if not args.no_bare:
                bare.enable_model_cpu_offload(device=device)
        bare_runs = [] if args.no_bare else [
            run_bare(bare, image, embeds, args, args.chunk_frames, f"bare {mode} one chunk", device),
            run_bare(bare, image, embeds, args, args.frames, f"bare {mode} full length", device),
        ]
        if offload and not args.no_bare:
            bare.remove_all_hooks()
        text, stats = summary(runs[0], runs[1], bare_runs)
        print(f"\n## {mode} ({args.width}x{args.height}, {args.frames} frames, {args.steps} steps, {device}, {dtype})\n")
        print(stage_table(runs) + "\n\n" + text + "\n", flush=True)
        if offload:
            stats["offload_peak_under_24_gib"] = max(max(r["peak_vram_bytes"]) for r in runs) < 24 * GiB
            print(f"offload peak VRAM under 24 GiB: {stats['offload_peak_under_24_gib']}")
        results["modes"][mode] = {"runs": runs, "bare": bare_runs, "summary": stats}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
