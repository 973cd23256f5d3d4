"""The app's ahead-of-time path for one block, on CUDA, in one process: ``mirage.aot.prepare`` (export
the repeated block at one chunk's shapes, package it with AOTInductor without weights, load it once in
a fresh child process), then ``mirage.aot.apply`` and one transformer forward timed (first call, median
of ``--reps``), against eager bf16 (max abs and relative RMS difference); then ``--loads`` more loads
in fresh processes (what a ZeroGPU worker forked for a call pays). ``--fused`` packages the fused
block (``SpeedSettings(fused=True)``: its custom op is registered wherever ``mirage.aot`` is imported).
Random weights at the released size, one chunk (9 x 44 x 80 latents). JSON is written after each step,
so a run cut short keeps what it measured.

    python benchmarks/aot_apply.py --fused --out benchmarks/results/aot_fused_block_cuda_h100.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mirage import aot, speed  # noqa: E402
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import inputs  # noqa: E402  (benchmarks/speed.py's chunk)


def load_row(check: aot.LoadCheck) -> dict:
    return {"ok": check.ok, "rc": check.exit_code, "seconds": check.seconds, "import_seconds": check.import_seconds,
            "detail": check.detail[-300:]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fused", action="store_true", help="the fused block (mirage.fused)")
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--loads", type=int, default=2, help="more loads in fresh processes after the forward")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device("cuda")
    model = speed.random_transformer(TI2V_5B_TRANSFORMER_CONFIG, device, torch.bfloat16)
    x = inputs(TI2V_5B_TRANSFORMER_CONFIG, 9, 44, 80, device, torch.bfloat16)
    with torch.no_grad():
        ref = model(**x)[0]  # [1, C, 9, 44, 80] eager bf16
    speed.apply(model, speed.SpeedSettings(fused=args.fused))
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "loads": []}

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
            times = []
            with torch.no_grad():
                for i in range(args.reps + 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = model(**x)[0]
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            d = out.float() - ref.float()
            res.update(first_call_s=times[0], median_ms=statistics.median(times[1:]) * 1e3, max_abs=float(d.abs().max()),
                       rel_rms=float(d.pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt()))  # fmt: skip
            save()
        for _ in range(args.loads):
            res["loads"].append(load_row(aot.check_load(package.path, timeout=90)))
            save()


if __name__ == "__main__":
    main()
