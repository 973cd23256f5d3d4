"""One forward of the Wan2.2-TI2V-5B transformer at one chunk (9 x 44 x 80 latents, 7,920 tokens, bf16,
the UMT5 context of 512 tokens) per speed setting: eager with each attention backend that needs no
download, regional compilation (``compile_repeated_blocks``) in two modes, fused QKV, FP8 (torchao,
when it imports), and ahead-of-time compilation of the repeated block (``torch.export`` +
AOTInductor, loaded with its weights passed at run time as ``spaces.aoti_blocks_load`` does; the
package with its weights inside is loaded in a child process, whose exit code is reported).

Random weights at the released size (time and memory do not depend on their values). For each
setting: the first call (compile included), the median of the next calls, and the output against
eager bf16 (max abs and relative RMS difference). Writes JSON and a markdown table. ``--decode``
and ``--depth`` time the rest of a chunk's GPU work instead: the VAE decode of one chunk in float32
(as released), in bfloat16 and with its norms in one kernel; Depth Pro on one chunk's frames, its patches cut
by transformers' ``F.unfold`` and by a strided view (ours).

    python benchmarks/speed.py --out benchmarks/results/speed_cuda_h100.json   # GPU
    python benchmarks/speed.py --decode --profile --out benchmarks/results/decode_cuda_h100.json
    python benchmarks/speed.py --depth --out benchmarks/results/depth_cuda_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage import aot, speed  # noqa: E402
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG  # noqa: E402


def inputs(config: dict, frames: int, h: int, w: int, device, dtype) -> dict:
    g = torch.Generator(device).manual_seed(0)
    tokens = frames * (h // 2) * (w // 2)
    return dict(
        hidden_states=torch.randn(1, config["in_channels"], frames, h, w, generator=g, device=device, dtype=dtype),
        timestep=torch.full((1, tokens), 500.0, device=device),  # TI2V: one timestep per token
        encoder_hidden_states=torch.randn(1, 512, config["text_dim"], generator=g, device=device, dtype=dtype),
        return_dict=False,
    )


def timed(fn, reps: int, device) -> tuple[float, float, torch.Tensor]:
    """(first call s, median of ``reps`` later calls s, output)."""
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    first, out = once()
    times = [once()[0] for _ in range(reps)]
    return first, statistics.median(times), out


def diff(out: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (out.float() - ref.float())
    return {"max_abs": float(d.abs().max()), "rel_rms": float(d.pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt())}


def decode_rows(device: torch.device, reps: int, small: bool, profile: bool = False) -> list[dict]:
    """The VAE decode of one chunk's latents (9 x 44 x 80, 33 frames at 704 x 1280) in float32 (as
    released and as diffusers loads it) and in bfloat16 (as DiffSynth, and with it the Mirage and
    Spatia references, run it), each with cuDNN's autotuner off and on (``cudnn.benchmark``), then in
    bfloat16 fused (``SpeedSettings(vae_fused=True)``, ours: its norms alone, then with the padding
    in the convolutions) and, as a probe, in channels-last memory order: first call, median,
    difference from float32. ``profile``: the GPU time of one bfloat16 decode by kernel, as diffusers
    runs it and fused."""
    from mirage.codecs import WanVAECodec
    from mirage.testing import TINY_VAE_CONFIG

    shape = (1, 48, 3, 4, 6) if small else (1, 48, 9, 44, 80)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)  # [1, C, F, h, w] normalized latents
    rows, ref = [], None

    def row(name: str, codec, latents: torch.Tensor) -> None:
        nonlocal ref
        with torch.no_grad():
            first, median, out = timed(lambda: codec.decode(latents), reps, device)
        ref = out if ref is None else ref
        rows.append({"setting": name, "setup_s": 0.0, "first_s": first, "median_ms": median * 1e3,
                     "note": f"one chunk's latents {list(shape[2:])}"} | diff(out, ref))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    for dtype in (torch.float32, torch.bfloat16):
        codec = WanVAECodec.from_config(TINY_VAE_CONFIG if small else None, seed=0, torch_dtype=dtype, device=device)
        for tuned in (False, True):
            torch.backends.cudnn.benchmark = tuned
            row(f"VAE decode, {str(dtype).removeprefix('torch.')}" + (", cudnn.benchmark" if tuned else ""), codec, z)
        torch.backends.cudnn.benchmark = False
    profiles = {"bfloat16": op_shares(lambda: codec.decode(z), device)} if profile and device.type == "cuda" else {}
    from mirage.fused import fuse_vae

    fuse_vae(codec.vae, convolutions=False)  # the norms alone first; speed.apply then does the convolutions
    row("VAE decode, bfloat16, norms in one kernel (ours)", codec, z)
    speed.apply(torch.nn.Identity(), speed.SpeedSettings(vae_fused=True), vae=codec.vae)
    row("VAE decode, bfloat16, fused: norms in one kernel + padding in the convolutions (ours)", codec, z)
    if profile and device.type == "cuda":
        profiles["bfloat16, fused"] = op_shares(lambda: codec.decode(z), device)
    codec = WanVAECodec.from_config(TINY_VAE_CONFIG if small else None, seed=0, torch_dtype=torch.bfloat16, device=device)
    for conv in (m for m in codec.vae.modules() if isinstance(m, torch.nn.Conv3d)):  # a probe: cuDNN's 3-D
        conv.to(memory_format=torch.channels_last_3d)  # convolutions in NDHWC (the 2-D ones as they are)
    row("VAE decode, bfloat16, channels_last_3d (probe)", codec, z.contiguous(memory_format=torch.channels_last_3d))
    for name, prof in profiles.items():
        rows.append({"setting": f"profile: {name}", "profile": prof})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def depth_rows(device: torch.device, reps: int, small: bool, profile: bool = False) -> list[dict]:
    """Depth Pro at its released size (random weights, float16 on CUDA) on one chunk's eight frames at
    704 x 1280 (``estimate_batch``, four at a time as the pipeline runs it) and on one image
    (``estimate``, the first frame's depth), its patches cut by transformers' ``split_to_patches``
    (``F.unfold``) and by ``split_to_patches_by_view`` (ours, what the backend puts in its place): first call,
    median, difference. ``profile``: the GPU time of the eight frames' depth by kernel, both ways."""
    from transformers.models.depth_pro import modeling_depth_pro

    from mirage.cameras import intrinsics_from_fov
    from mirage.depth import DepthProBackend
    from mirage.depth import depth_pro as module
    from mirage.testing import depth_pro_large_config, tiny_depth_pro_config

    backend = DepthProBackend.from_config(tiny_depth_pro_config() if small else depth_pro_large_config(), seed=0, device=device)
    if device.type == "cuda":
        backend.model.half()
    H, W = (32, 48) if small else (704, 1280)
    frames = torch.rand(3, 8, H, W, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1  # [3, F, H, W]
    K = intrinsics_from_fov(W, H, 60.0)
    rows, refs = [], {}
    try:
        for how, split in (("transformers' split_to_patches (F.unfold)", module.TRANSFORMERS_SPLIT_TO_PATCHES),
                           ("patches by view (ours)", module.split_to_patches_by_view)):  # fmt: skip
            modeling_depth_pro.split_to_patches = split  # the backend put ours there; transformers' for the first rows
            for what, fn in (("8 frames", lambda: backend.estimate_batch(frames, K)), ("1 image", lambda: backend.estimate(frames[:, 0], K).depth)):
                first, median, out = timed(fn, reps, device)
                d = {} if what not in refs else diff(torch.nan_to_num(out), torch.nan_to_num(refs[what])) | {"equal": bool(torch.equal(out.nan_to_num(), refs[what].nan_to_num()))}
                refs.setdefault(what, out)
                rows.append({"setting": f"Depth Pro, {what}, {how}", "setup_s": 0.0, "first_s": first, "median_ms": median * 1e3,
                             "note": f"{H}x{W}" + (", float16" if device.type == "cuda" else "") + (", bit for bit" if d.get("equal") else "")} | d)  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            if profile and device.type == "cuda":
                rows.append({"setting": f"profile: Depth Pro, 8 frames, {how}", "profile": op_shares(lambda: backend.estimate_batch(frames, K), device)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        modeling_depth_pro.split_to_patches = module.split_to_patches_by_view
    return rows


PROFILED = ("eager (SDPA, native)", "regional compile", "regional compile + fused RoPE and GELU (ours)",
            "FP8 (torchao, per-row) + regional compile", "FP8 + regional compile + fused RoPE (ours)")  # fmt: skip


def kernel_shares(model, x: dict, device: torch.device) -> dict:
    """Where one forward's GPU time goes (torch.profiler, after two warm-up calls): milliseconds of
    attention, matrix-product, fused elementwise (Triton) and other kernels, and the ten largest."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(2):
            model(**x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**x)
            torch.cuda.synchronize()
    kinds = {"attention": ("fmha", "flash", "attention", "sdpa", "cudnn"), "matmul": ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas"),
             "triton (fused)": ("triton",)}  # fmt: skip
    shares: dict[str, float] = {k: 0.0 for k in (*kinds, "other")}
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
    top = []
    for e in events:
        ms = getattr(e, "self_device_time_total", 0.0) / 1e3
        kind = next((k for k, keys in kinds.items() if any(s in e.key.lower() for s in keys)), "other")
        shares[kind] += ms
        top.append((ms, e.key[:90], e.count))
    top.sort(reverse=True)
    return {"ms": shares, "top": [{"ms": m, "kernel": k, "count": c} for m, k, c in top[:10]]}


def op_shares(fn, device: torch.device) -> dict:
    """GPU milliseconds of one call of ``fn`` (after one warm-up) by kernel: convolutions and matrix
    products, element-wise kernels and copies, other; and the twelve largest kernels."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    kinds = {"convolutions and matrix products": ("conv", "implicit", "xmma", "sm90", "nhwc", "cudnn", "gemm", "nvjet", "cutlass"),
             "elementwise, reductions and copies": ("elementwise", "vectorized", "reduce", "copy", "cat", "triton", "norm", "pad")}  # fmt: skip
    shares: dict[str, float] = {k: 0.0 for k in (*kinds, "other")}
    top = []
    for e in prof.key_averages():
        ms = getattr(e, "self_device_time_total", 0.0) / 1e3
        if ms <= 0:
            continue
        kind = next((k for k, keys in kinds.items() if any(s in e.key.lower() for s in keys)), "other")
        shares[kind] += ms
        top.append((ms, e.key[:90], e.count))
    top.sort(reverse=True)
    return {"ms": shares, "top": [{"ms": m, "kernel": k, "count": c} for m, k, c in top[:12]]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke test: the tiny transformer, 2 reps, no compile")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--skip", nargs="*", default=[], help="settings to skip (names as in the table)")
    p.add_argument("--only", nargs="*", default=None, help="run only the settings whose names contain one of these "
                                                            "(eager always runs: the reference)")
    p.add_argument("--decode", action="store_true", help="time the VAE decode (float32 vs bfloat16) instead of the transformer")
    p.add_argument("--depth", action="store_true", help="time Depth Pro on one chunk's frames (transformers' patch split vs ours) instead")
    p.add_argument("--profile", action="store_true", help="also profile one forward of the regional compile (and FP8): "
                                                          "GPU milliseconds by kernel kind")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_TRANSFORMER_CONFIG if args.small else TI2V_5B_TRANSFORMER_CONFIG
    frames, h, w = (3, 4, 6) if args.small else (9, 44, 80)
    reps = 2 if args.small else args.reps
    x = inputs(config, frames, h, w, device, dtype)
    rows, results = [], {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                         "torch": torch.__version__, "latents": [frames, h, w], "reps": reps}  # fmt: skip

    def fresh():
        return speed.random_transformer(config, device, dtype)

    def run(name: str, build, note: str = ""):
        if name in args.skip or (args.only is not None and rows and not any(o in name for o in args.only)):
            return
        print(f"{name} ...", flush=True)
        try:
            t0 = time.perf_counter()
            model = build()
            setup = time.perf_counter() - t0
            with torch.no_grad():
                first, median, out = timed(lambda: model(**x)[0], reps, device)
            row = {"setting": name, "setup_s": setup, "first_s": first, "median_ms": median * 1e3, "note": note}
            if "eager" in results:
                row.update(diff(out, results["eager"]))
            else:
                results["eager"] = out
            if args.profile and device.type == "cuda" and name in PROFILED:
                results.setdefault("profiles", {})[name] = kernel_shares(model, x, device)
                print(json.dumps({"profile": name, **results["profiles"][name]}), flush=True)
            model = None  # (freed before the next setting)
        except Exception as err:  # noqa: BLE001 - a setting that fails is a result too
            row = {"setting": name, "error": f"{type(err).__name__}: {err}"[:400], "trace": traceback.format_exc()[-1500:]}
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
        rows.append(row)

    if args.decode:
        rows.extend(decode_rows(device, reps, args.small, args.profile))
    elif args.depth:
        rows.extend(depth_rows(device, reps, args.small, args.profile))
    else:
        base = fresh()
        run("eager (SDPA, native)", lambda: base)
        for backend in speed.available_attention_backends(device):
            if backend != "native":
                run(f"eager, attention {backend}", lambda b=backend: speed.apply(base, speed.SpeedSettings(attention=b)))
        speed.apply(base, speed.SpeedSettings(attention="native"))
        if not args.small:
            run("regional compile", lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional")))
            run("regional compile, max-autotune-no-cudagraphs",
                lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional", compile_mode="max-autotune-no-cudagraphs")))
            run("regional compile + fused QKV", lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional", fuse_qkv=True)))
            run("regional compile + fused RoPE and GELU (ours)",
                lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional", fused=True)))
            def tuned():  # Inductor's coordinate-descent tuning of the block's Triton kernels (a probe, not a setting)
                model = speed.apply(fresh(), speed.SpeedSettings(fused=True))
                model.compile_repeated_blocks(fullgraph=True, options={"coordinate_descent_tuning": True})
                return model

            run("regional compile + fused RoPE and GELU, coordinate-descent tuning", tuned)
            run("FP8 (torchao, per-row) + regional compile",
                lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional", fp8=True)))
            run("FP8 + regional compile + fused RoPE (ours)",
                lambda: speed.apply(fresh(), speed.SpeedSettings(compile="regional", fp8=True, fused=True)))
        with tempfile.TemporaryDirectory() as tmp:
            def aot_block():  # compiled, loaded once in a child process (a crash there is a result), then applied
                model = fresh()
                pkg = aot.prepare(model, x, tmp)
                results["aot_load_check"] = {"exit_code": pkg.load.exit_code, "detail": pkg.load.detail, "compile_s": pkg.compile_s}
                if not pkg.usable:
                    raise RuntimeError(f"the package does not load here (exit code {pkg.load.exit_code})")
                return aot.apply(model, pkg)

            run("AoT block (weights at run time)", aot_block, "one package for every block; weights passed per call (user-managed constants)")
            package = next(Path(tmp).glob("block-*.pt2"), None)
            if device.type == "cuda" and package is not None:
                inside = Path(tmp) / "inside.pt2"
                try:
                    rc = aot.package_with_weights(base, x, inside)
                    results["aot_weights_inside_child_rc"] = aot.check_load(inside).exit_code
                    results["aot_weights_inside_size_mib"] = inside.stat().st_size / 2**20 if rc == 0 else None
                except Exception as err:  # noqa: BLE001
                    results["aot_weights_inside_error"] = f"{type(err).__name__}: {err}"[:400]
                results["aot_weights_at_run_time_child_rc"] = aot.check_load(package).exit_code
    results.pop("eager", None)
    results["rows"] = rows
    what = "One chunk's VAE decode" if args.decode else "One chunk's depth" if args.depth else "One transformer forward"
    size = "8 frames at 704x1280" if args.depth and not args.small else f"latents {frames}x{h}x{w}"
    lines = [f"## {what}, {results['device']}, torch {torch.__version__}, {size}", "",
             "| setting | setup s (build, compile or export) | first call s | median ms | max abs diff | rel. RMS diff | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "profile" in r:
            total = sum(r["profile"]["ms"].values())
            lines.append(f"| {r['setting']} (GPU ms) | | | {total:.1f} | | | " + ", ".join(f"{k} {v:.1f}" for k, v in r["profile"]["ms"].items()) + " |")
        elif "error" in r:
            lines.append(f"| {r['setting']} | failed | | | | | {r['error'][:160]} |")
        else:
            lines.append(f"| {r['setting']} | {r['setup_s']:.1f} | {r['first_s']:.1f} | {r['median_ms']:.1f} | {r.get('max_abs', 0):.3g} | "
                         f"{r.get('rel_rms', 0):.3g} | {r['note']} |")  # fmt: skip
    extra = {k: v for k, v in results.items() if k.startswith("aot_")}
    if extra:
        lines += ["", "AoT package load in a fresh process: " + json.dumps(extra)]
    for name, prof in results.get("profiles", {}).items():
        total = sum(prof["ms"].values())
        lines += ["", f"GPU time of one forward, {name} (torch.profiler): {total:.1f} ms = "
                  + ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in prof["ms"].items())]  # fmt: skip
    table = "\n".join(lines)
    print(table, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
