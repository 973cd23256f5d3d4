"""The app's ahead-of-time path for one block, on CUDA, in one process: ``mirage.aot.prepare`` (export
the repeated block at one chunk's shapes, package it with AOTInductor without weights, load it once in
a fresh child process), then ``mirage.aot.apply`` and one transformer forward timed (first call, median
of ``--reps``), against eager bf16 (max abs and relative RMS difference); then ``--loads`` more loads
in fresh processes (what a ZeroGPU worker forked for a call pays). ``--fused`` packages the fused
block (``SpeedSettings(fused=True)``: its custom op is registered wherever ``mirage.aot`` is imported).
Random weights at the released size, one chunk (9 x 44 x 80 latents). JSON is written after each step,
so a run cut short keeps what it measured.

    python benchmarks/aot_apply.py --fused --out benchmarks/results/aot_fused_block_cuda_h100.json   # GPU
    python benchmarks/aot_apply.py --fused --small --loads 1 --out /tmp/aot_apply_small.json        # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mirage import aot, speed  # noqa: E402
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import diff, inputs, timed  # noqa: E402  (benchmarks/speed.py's chunk, timing and difference)


def load_row(check: aot.LoadCheck) -> dict:
    return {"ok": check.ok, "rc": check.exit_code, "seconds": check.seconds, "import_seconds": check.import_seconds,
            "detail": check.detail[-300:]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fused", action="store_true", help="the fused block (mirage.fused)")
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--loads", type=int, default=2, help="more loads in fresh processes after the forward")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--small", action="store_true", help="CPU smoke test: the tiny transformer in float32")
    args = p.parse_args()
    device, dtype = (torch.device("cpu"), torch.float32) if args.small else (torch.device("cuda"), torch.bfloat16)
    config, (frames, h, w) = (TINY_TRANSFORMER_CONFIG, (3, 4, 6)) if args.small else (TI2V_5B_TRANSFORMER_CONFIG, (9, 44, 80))
    model = speed.random_transformer(config, device, dtype)
    x = inputs(config, frames, h, w, device, dtype)
    with torch.no_grad():
        ref = model(**x)[0]  # [1, C, frames, h, w] eager
    speed.apply(model, speed.SpeedSettings(fused=args.fused))
    name = "cpu" if args.small else torch.cuda.get_device_name(0)
    res = {"device": name, "torch": torch.__version__, "loads": []}

    def save():
        args.out.write_text(json.dumps(res, indent=2))
        print(json.dumps({k: v for k, v in res.items() if k != "loads"} | {"loads": res["loads"][-1:]}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        package = aot.prepare(model, x, tmp, check=True)
        res.update(compile_s=package.compile_s, wall_s=time.perf_counter() - t0,
                   size_mib=package.path.stat().st_size / 2**20)  # fmt: skip
        res["loads"].append(load_row(package.load))
        save()
        if package.usable:
            aot.apply(model, package)
            with torch.no_grad():
                first, median, out = timed(lambda: model(**x)[0], args.reps, device)
            res.update(first_call_s=first, median_ms=median * 1e3, **diff(out, ref))
            save()
        for _ in range(args.loads):
            res["loads"].append(load_row(aot.check_load(package.path, timeout=90)))
            save()


if __name__ == "__main__":
    main()
