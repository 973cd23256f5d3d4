"""Benchmark the generation loop: latent memory (Mirage) vs RGB point cloud, resident and with model
CPU offload, at guidance 1 and 5, and the bare diffusers Wan2.2 TI2V pipeline for one chunk; or
with a trained side branch and its LoRA (``--branch mirage|spatia``).

Full size with random weights (no downloads): the Wan2.2 TI2V-5B transformer config
(``mirage.testing.TI2V_5B_TRANSFORMER_CONFIG``), the Wan2.2 VAE config in float32 (as released), the
UMT5-XXL text encoder of the released checkpoint (so that its 11 GB count in peak memory and in the
prompt stage; a word-level tokenizer stands in for the real one), and for depth the Depth Pro
architecture at its released size with random weights, timed for real, while the depth it hands to
the pipeline is the planar prior's (random weights predict meaningless depth; valid geometry makes
the memories grow and align as with a real estimate). Both memories run the same loop with the same
seed and settings.

    python benchmarks/pipeline.py --modes resident --out r.json   # GPU: 704x1280, 161 frames, 20 steps, g 1 and 5
    python benchmarks/pipeline.py --modes offload --out o.json
    python benchmarks/pipeline.py --small                          # CPU smoke test, tiny models
    python benchmarks/pipeline.py --branch spatia --reference-root .whl/ref --modes resident offload

With ``--branch`` the branch and LoRA files are written with the released key sets and shapes from
the reference classes, random values (``benchmarks/released_checkpoints.py``), loaded with
``MiragePipeline.load_branch`` (strict), and both memories generate under the family's defaults
(steps, guidance, chunking, continuation; ``--steps`` / ``--guidance`` override them).

Prints markdown tables (seconds per stage per chunk, totals, peak VRAM, cache size, ratios) and
writes everything to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel  # noqa: E402

from mirage import speed  # noqa: E402
from mirage.chunks import READOUT_PARTS, STAGES  # noqa: E402
from mirage.codecs import WanVAECodec  # noqa: E402
from mirage.depth import DepthProBackend, PlanarPriorBackend  # noqa: E402
from mirage.frames import Chunking  # noqa: E402
from mirage.paths import make_preset_path  # noqa: E402
from mirage.families import BRANCH_KINDS, DEFAULTS  # noqa: E402
from mirage.memory import MEMORY_KINDS  # noqa: E402
from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.testing import (  # noqa: E402
    TI2V_5B_TRANSFORMER_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    depth_pro_large_config,
    tiny_depth_pro_config,
    tiny_text_encoder,
)

MiB, GiB = 2**20, 2**30


def umt5_xxl_config():
    """google/umt5-xxl as Wan-AI/Wan2.2-TI2V-5B-Diffusers/text_encoder/config.json has it."""
    from transformers import UMT5Config

    return UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)  # fmt: skip


class TimedDepthProPlanarGeometry:
    """Runs a random-weight Depth Pro on every request (its real cost) and returns the planar prior's depth."""

    name = "depth-pro (random weights, timed) + planar-prior geometry"
    needs_weights = False

    def __init__(self, depth_pro: DepthProBackend, planar: PlanarPriorBackend) -> None:
        self.depth_pro = depth_pro
        self.planar = planar

    @property
    def model(self):  # what the pipeline's offload manages
        return self.depth_pro.model

    def estimate(self, image, K=None):  # image [3, H, W] in [-1, 1]
        self.depth_pro.estimate(image, K)
        return self.planar.estimate(image, K)

    def estimate_batch(self, frames, K):  # frames [3, F, H, W]; K [3, 3] -> [F, H, W]
        self.depth_pro.estimate_batch(frames, K)
        return torch.stack([self.planar.estimate(frames[:, i], K).depth for i in range(frames.shape[1])])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device: torch.device, dtype: torch.dtype) -> MiragePipeline:
    """Random-weight components at the released sizes (tiny ones with --small), resident on ``device``."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**(TINY_TRANSFORMER_CONFIG if args.small else TI2V_5B_TRANSFORMER_CONFIG))
    transformer = transformer.to(dtype).eval()
    vae = WanVAECodec.from_config(TINY_VAE_CONFIG if args.small else None, seed=0, device=device).vae  # float32
    encoder, tokenizer = tiny_text_encoder()
    if not args.small:
        from transformers import UMT5EncoderModel

        with torch.device(device):
            encoder = UMT5EncoderModel(umt5_xxl_config())
    encoder = encoder.to(device, dtype).eval()
    planar = PlanarPriorBackend()
    depth = DepthProBackend.from_config(tiny_depth_pro_config() if args.small else depth_pro_large_config(), seed=0, device=device)
    if device.type == "cuda":
        depth.model.half()
        torch.cuda.empty_cache()
    pipe = MiragePipeline(transformer, vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), encoder, tokenizer,
                          TimedDepthProPlanarGeometry(depth, planar))  # fmt: skip
    print(f"built components in {time.perf_counter() - t0:.1f} s", flush=True)
    return pipe


def load_branch(pipe: MiragePipeline, args, device: torch.device) -> dict:
    """Write the family's branch and LoRA files in the released layout (random values) and load them."""
    if args.small:  # tiny models: a random one-block branch of our own, no LoRA (the code path only)
        from mirage.branch import BranchConfig, MemoryBranch
        from mirage.testing import randomize_parameters

        branch = randomize_parameters(MemoryBranch.for_transformer(pipe.transformer, BranchConfig((0,))), 0, 0.02)
        pipe.load_branch(args.branch, branch.state_dict(), None, layers=(0,))
        return {"kind": args.branch, "small": True}
    from released_checkpoints import write_released_layout

    info = write_released_layout(args.reference_root, args.branch, args.checkpoint_dir, seed=args.seed,
                                 device="cuda" if device.type == "cuda" else "cpu")  # fmt: skip
    sync(device)
    t0 = time.perf_counter()
    pipe.load_branch(args.branch, args.checkpoint_dir, args.checkpoint_dir, local_files_only=True)  # strict
    sync(device)
    info.update(load_s=time.perf_counter() - t0, loaded_strict=True,
                branch_parameters_loaded=sum(p.numel() for p in pipe.branch.parameters()),
                lora_modules=sum(1 for n, _ in pipe.transformer.named_modules() if n.endswith("lora_A")))  # fmt: skip
    print(f"loaded the {args.branch} branch and LoRA in the released layout: {json.dumps(info)}", flush=True)
    return info


def scene_inputs(args):
    """Input image [3, H, W] in [-1, 1] (the synthetic room) and an orbit path of args.frames cameras."""
    cam = default_camera(args.width, args.height)
    rgb, depth = default_scene().render(cam)  # [1, 3, H, W], [1, H, W]
    path = make_preset_path("orbit_left", cam, num_frames=args.frames, amount=20.0, scene_depth=float(depth.median()))
    return rgb[0], path


def run_mirage(pipe: MiragePipeline, image, path, args, memory: str, guidance: float, label: str, device) -> dict:
    pipe.prompt_cache.clear()  # every run pays its prompt encoding
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    chunking = None if args.chunk_frames is None else Chunking(args.chunk_frames, args.chunk_frames, 1)
    out = pipe(image, path, "a camera moving through a room", guidance_scale=guidance, num_frames=args.frames,
               chunking=chunking, num_inference_steps=args.steps, memory=memory,
               memory_mode="branch" if args.branch else "replace", generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    sync(device)
    wall = time.perf_counter() - t0
    result = {
        "label": label, "memory": memory, "guidance": guidance, "wall_s": wall, "chunk_timings": out.chunk_timings,
        "settings": {k: (str(v) if k == "chunking" else v) for k, v in out.settings.items()},
        "frame_ranges": out.frame_ranges,
        "total_s": sum(t["total"] for t in out.chunk_timings), "peak_vram_bytes": out.peak_memory_bytes,
        "run_peak_vram_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0,
        "cache_bytes": out.cache_bytes, "num_points": [e["num_points"] for e in out.memory.size_history],
        "hole_fraction": [r.hole_fraction for r in out.readouts], "depth_scales": out.depth_scales,
    }
    print(f"{label}: {wall:.2f} s, peak {result['run_peak_vram_bytes'] / GiB:.2f} GiB", flush=True)
    return result


def run_bare(pipe: MiragePipeline, image, args, guidance: float, label: str, device) -> dict:
    """diffusers' WanImageToVideoPipeline(expand_timesteps=True) on the same components, one chunk."""
    bare = WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                   transformer=pipe.transformer, scheduler=UniPCMultistepScheduler(**WAN_UNIPC_CONFIG),
                                   expand_timesteps=True)  # fmt: skip
    bare.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    bare(image=((image[None] + 1) / 2).to(device), prompt="a camera moving through a room", height=args.height,
         width=args.width, num_frames=args.chunk_frames, num_inference_steps=args.steps, guidance_scale=guidance,
         generator=torch.Generator().manual_seed(args.seed), output_type="pt")  # fmt: skip
    sync(device)
    wall = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
    print(f"{label}: {wall:.2f} s, peak {peak / GiB:.2f} GiB", flush=True)
    return {"label": label, "guidance": guidance, "frames": args.chunk_frames, "total_s": wall, "peak_vram_bytes": peak}


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


def summary(latent: dict, rgb: dict) -> tuple[str, dict]:
    lat_mem = sum(memory_seconds(t) for t in latent["chunk_timings"])
    rgb_mem = sum(memory_seconds(t) for t in rgb["chunk_timings"])
    share = [memory_seconds(t) / t["total"] for t in latent["chunk_timings"]]
    stats = {
        "latent_total_s": latent["total_s"], "rgb_total_s": rgb["total_s"],
        "total_ratio_rgb_over_latent": rgb["total_s"] / latent["total_s"],
        "latent_memory_s": lat_mem, "rgb_memory_s": rgb_mem, "memory_ratio_rgb_over_latent": rgb_mem / max(lat_mem, 1e-12),
        "latent_memory_share_per_chunk": share,
        "peak_vram_gib": {"latent": latent["run_peak_vram_bytes"] / GiB, "rgb": rgb["run_peak_vram_bytes"] / GiB},
    }  # fmt: skip
    lines = [
        "| quantity | latent (Mirage) | RGB point cloud | ratio RGB/latent |",
        "|---|---|---|---|",
        f"| total (s) | {latent['total_s']:.2f} | {rgb['total_s']:.2f} | {stats['total_ratio_rgb_over_latent']:.3f} |",
        f"| memory stages: readout + update (s) | {lat_mem:.4f} | {rgb_mem:.4f} | {stats['memory_ratio_rgb_over_latent']:.1f} |",
        f"| peak VRAM over the run, text encoder included (GiB) | {stats['peak_vram_gib']['latent']:.2f} | {stats['peak_vram_gib']['rgb']:.2f} | |",
        f"| cache after last chunk (MiB) | {latent['cache_bytes'][-1] / MiB:.2f} | {rgb['cache_bytes'][-1] / MiB:.2f} | "
        f"{rgb['cache_bytes'][-1] / latent['cache_bytes'][-1]:.1f} |",
        "",
        "latent memory share of each chunk: " + ", ".join(f"{s:.3%}" for s in share),
    ]  # fmt: skip
    return "\n".join(lines), stats


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke preset: tiny models, 64x96, 17 frames, chunks of 9, 3 steps")
    p.add_argument("--height", type=int, default=None, help="default 704 (64 with --small)")
    p.add_argument("--width", type=int, default=None, help="default 1280 (96 with --small)")
    p.add_argument("--frames", type=int, default=None, help="video length 4N+1, default 161 (17 with --small)")
    p.add_argument("--chunk-frames", type=int, default=None, help="default 33 (9 with --small); with --branch the family's chunking")
    p.add_argument("--steps", type=int, default=None, help="sampling steps, default 20 (3 with --small; the family's with --branch)")
    p.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales to run (default 1 and 5; the family's with --branch)")
    p.add_argument("--branch", choices=BRANCH_KINDS, default=None, help="generate with a trained side branch + LoRA")
    p.add_argument("--reference-root", type=Path, default=None, help="reference sources for the released key sets (--branch)")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/mirage_released_layout"), help="where --branch writes its files")
    p.add_argument("--modes", nargs="+", choices=("resident", "offload"), default=["resident"])
    p.add_argument("--no-bare", action="store_true", help="skip the bare diffusers pipeline")
    p.add_argument("--no-warmup", action="store_true", help="skip the short warm-up runs")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", choices=("eager", "regional", "fp8"), default="eager",
                   help="mirage.speed setting of the transformer (and branch): eager, regional compilation, FP8 + regional")
    p.add_argument("--fused", action="store_true", help="also mirage.fused (ours): one-pass RoPE and the GELU in its product's epilogue")
    p.add_argument("--vae-fused", action="store_true", help="also the fused VAE (ours, mirage.fused.fuse_vae): norms in one "
                                                            "kernel, padding in the convolutions")
    p.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default=None,
                   help="the VAE's dtype (mirage.speed: bfloat16 as the references run it; default: float32 as released)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    defaults = dict(height=64, width=96, frames=17, chunk_frames=9, steps=3) if args.small else \
        dict(height=704, width=1280, frames=161, chunk_frames=33, steps=20)  # fmt: skip
    if args.branch:
        family = DEFAULTS[args.branch]
        defaults.update(steps=3 if args.small else family.num_inference_steps, chunk_frames=None)
        args.guidance = args.guidance or [family.guidance_scale]
        if args.reference_root is None and not args.small:
            p.error("--branch needs --reference-root (the released key sets come from the reference classes)")
    args.guidance = args.guidance or [1.0, 5.0]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "offload" in args.modes and device.type != "cuda":
        raise SystemExit(f"offload needs a CUDA device, got {device}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 4))
    pipe = build(args, device, dtype)
    branch_info = load_branch(pipe, args, device) if args.branch else None
    settings = {"eager": speed.SpeedSettings(), "regional": speed.SpeedSettings(compile="regional"),
                "fp8": speed.SpeedSettings(compile="regional", fp8=True)}[args.speed]  # fmt: skip
    settings = dataclasses.replace(settings, vae_dtype=args.vae_dtype, fused=args.fused, vae_fused=args.vae_fused)
    speed.apply(pipe.transformer, settings, pipe.branch, vae=pipe.vae)
    image, path = scene_inputs(args)
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype), "vae_dtype": str(pipe.vae.dtype), "depth_backend": pipe.depth_backend.name,
               "torch": torch.__version__, "branch": branch_info, "speed": speed.describe(settings), "modes": {}}  # fmt: skip
    for mode in args.modes:
        if mode == "offload":
            pipe.enable_model_cpu_offload(device=device)
        if not args.no_warmup:  # kernels, cuDNN algorithms, allocator, lazy imports (one short chunk each)
            warm = argparse.Namespace(**{**vars(args), "frames": args.chunk_frames or 33 if not args.small else 9, "steps": 2})
            for memory in MEMORY_KINDS:
                run_mirage(pipe, image, path, warm, memory, 1.0, f"warm-up {memory} {mode}", device)
        runs, table = [], []
        for guidance in args.guidance:
            pair = [run_mirage(pipe, image, path, args, m, guidance, f"{m} {mode} g{guidance:g}", device) for m in MEMORY_KINDS]
            text, stats = summary(*pair)
            table.append((guidance, pair, text, stats))
            runs.extend(pair)
        bare = [] if args.no_bare or args.branch or mode == "offload" else [
            run_bare(pipe, image, args, g, f"bare diffusers {mode} one chunk g{g:g}", device) for g in args.guidance
        ]  # fmt: skip
        what = f"{args.branch} branch + LoRA, " if args.branch else ""
        print(f"\n## {mode} ({what}{args.width}x{args.height}, {args.frames} frames, {args.steps} steps, {results['device']}, {dtype}, "
              f"{speed.describe(settings)})\n")
        for guidance, pair, text, _ in table:
            print(f"### guidance {guidance:g}\n\n" + stage_table(pair) + "\n\n" + text + "\n", flush=True)
        for b in bare:
            print(f"{b['label']}: {b['total_s']:.2f} s, peak {b['peak_vram_bytes'] / GiB:.2f} GiB")
        results["modes"][mode] = {"runs": runs, "bare": bare, "summary": {f"g{g:g}": s for g, _, _, s in table}}
        if mode == "offload":
            pipe.disable_model_cpu_offload(device)
        if args.out is not None:  # after every mode, so that a run cut short keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
            print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
