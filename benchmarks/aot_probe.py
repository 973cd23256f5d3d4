"""Where ahead-of-time compilation of the Wan block breaks: each stage in its own process (a crash in one
stage cannot hide the others), with Python's faulthandler on. Stages: ``compile`` (export the repeated
block at one chunk's shapes and package it with AOTInductor, weights outside), ``load``
(``aoti_load_package``), ``apply`` (load, give every block its own weights, one transformer forward,
compared with eager). Prints each stage's exit code and the last lines of its output. ``aot_compile`` clears the
executable-stack flag of the compiled library (``speed.clear_executable_stack``); the compile stage
reports whether the packaged library still carries it.

    python benchmarks/aot_probe.py --package /tmp/block.pt2          # GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stage(name: str, package: str, small: bool, device: str | None) -> None:
    import torch

    from mirage import speed
    from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG
    from speed import inputs  # benchmarks/speed.py

    device = torch.device(device or ("cpu" if small else "cuda"))
    dtype = torch.float32 if small else torch.bfloat16
    config = TINY_TRANSFORMER_CONFIG if small else TI2V_5B_TRANSFORMER_CONFIG
    x = inputs(config, *((3, 4, 6) if small else (9, 44, 80)), device, dtype)
    t0 = time.perf_counter()
    if name == "compile":
        speed.aot_compile(speed.random_transformer(config, device, dtype), x, package)
        seconds = time.perf_counter() - t0
        with zipfile.ZipFile(package) as z, tempfile.TemporaryDirectory() as tmp:  # is the flag still set inside?
            libraries = [z.extract(n, tmp) for n in z.namelist() if n.endswith(".so")]
            still = [speed.clear_executable_stack(f) for f in libraries]
        print(json.dumps({"compile_s": seconds, "package_mib": Path(package).stat().st_size / 2**20,
                          "libraries": len(libraries), "executable_stack_in_package": any(still)}))
    elif name == "load":
        loaded = torch._inductor.aoti_load_package(package)
        print(json.dumps({"load_s": time.perf_counter() - t0, "constants": len(loaded.get_constant_fqns())}))
    else:
        model = speed.random_transformer(config, device, dtype)
        with torch.no_grad():
            ref = model(**x)[0]
            speed.aot_apply(model, package)
            out = model(**x)[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            times = []
            for _ in range(5):
                t1 = time.perf_counter()
                model(**x)
                torch.cuda.synchronize() if device.type == "cuda" else None
                times.append(time.perf_counter() - t1)
        d = (out.float() - ref.float())
        print(json.dumps({"median_ms": sorted(times)[2] * 1e3, "max_abs": float(d.abs().max()),
                          "rel_rms": float(d.pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="/tmp/mirage_block.pt2")
    p.add_argument("--small", action="store_true", help="the tiny transformer in float32 (on the CPU unless --device)")
    p.add_argument("--device", default=None, help="default: cpu with --small, else cuda")
    p.add_argument("--stage", choices=("compile", "load", "apply"), default=None, help="(internal) run one stage")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.stage:
        stage(args.stage, args.package, args.small, args.device)
        return
    report = {}
    for name in ("compile", "load", "apply"):
        cmd = [sys.executable, "-X", "faulthandler", __file__, "--stage", name, "--package", args.package]
        cmd += (["--small"] if args.small else []) + ([] if args.device is None else ["--device", args.device])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        tail = [line for line in (r.stdout + r.stderr).splitlines() if "warn" not in line.lower()][-12:]
        report[name] = {"exit_code": r.returncode, "tail": tail}
        print(f"{name}: exit {r.returncode}", *tail, sep="\n  ", flush=True)
        if r.returncode != 0:
            break
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
