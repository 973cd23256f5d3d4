"""One forward of the Wan2.2-TI2V-5B transformer at one chunk (9 x 44 x 80 latents, 7,920 tokens, bf16,
the UMT5 context of 512 tokens) per speed setting: eager with each attention backend that needs no
download, regional compilation (``compile_repeated_blocks``) in two modes, fused QKV, FP8 (torchao,
when it imports), and ahead-of-time compilation of the repeated block (``torch.export`` +
AOTInductor, loaded with its weights passed at run time as ``spaces.aoti_blocks_load`` does; the
package with its weights inside is loaded in a child process, whose exit code is reported).

Random weights at the released size (time and memory do not depend on their values). For each
setting: the first call (compile included), the median of the next calls, and the output against
eager bf16 (max abs and relative RMS difference). Writes JSON and a markdown table. ``--decode``
times the rest of a chunk's GPU work instead: the VAE decode of one chunk in float32 (as released)
and in bfloat16.

    python benchmarks/speed.py --out benchmarks/results/speed_cuda_h100.json   # GPU
    python benchmarks/speed.py --decode --out benchmarks/results/decode_cuda_h100.json
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


def decode_rows(device: torch.device, reps: int, small: bool) -> list[dict]:
    """The VAE decode of one chunk's latents (9 x 44 x 80, 33 frames at 704 x 1280) in float32 (as
    released and as diffusers loads it) and in bfloat16 (as DiffSynth, and with it the Mirage and
    Spatia references, run it), each with cuDNN's autotuner off and on (``cudnn.benchmark``): first
    call, median, difference from float32."""
    from mirage.codecs import WanVAECodec
    from mirage.testing import TINY_VAE_CONFIG

    shape = (1, 48, 3, 4, 6) if small else (1, 48, 9, 44, 80)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)  # [1, C, F, h, w] normalized latents
    rows, ref = [], None
    for dtype in (torch.float32, torch.bfloat16):
        codec = WanVAECodec.from_config(TINY_VAE_CONFIG if small else None, seed=0, torch_dtype=dtype, device=device)
        for tuned in (False, True):
            torch.backends.cudnn.benchmark = tuned
            with torch.no_grad():
                first, median, out = timed(lambda: codec.decode(z), reps, device)
            name = f"VAE decode, {str(dtype).removeprefix('torch.')}" + (", cudnn.benchmark" if tuned else "")
            row = {"setting": name, "setup_s": 0.0, "first_s": first, "median_ms": median * 1e3,
                   "note": f"one chunk's latents {list(shape[2:])}"}  # fmt: skip
            ref = out if ref is None else ref
            rows.append(row | diff(out, ref))
            print(json.dumps(rows[-1]), flush=True)
        torch.backends.cudnn.benchmark = False
        codec = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke test: the tiny transformer, 2 reps, no compile")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--skip", nargs="*", default=[], help="settings to skip (names as in the table)")
    p.add_argument("--only", nargs="*", default=None, help="run only the settings whose names contain one of these "
                                                            "(eager always runs: the reference)")
    p.add_argument("--decode", action="store_true", help="time the VAE decode (float32 vs bfloat16) instead of the transformer")
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
        rows.extend(decode_rows(device, reps, args.small))
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
    what = "One chunk's VAE decode" if args.decode else "One transformer forward"
    lines = [f"## {what}, {results['device']}, torch {torch.__version__}, latents {frames}x{h}x{w}", "",
             "| setting | setup s (build, compile or export) | first call s | median ms | max abs diff | rel. RMS diff | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
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
