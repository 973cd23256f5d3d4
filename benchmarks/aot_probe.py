"""Where ahead-of-time compilation of the Wan block breaks: each stage in its own process (a crash in one
stage cannot hide the others), with Python's faulthandler on. Stages: ``compile`` (export the repeated
block at one chunk's shapes and package it with AOTInductor, weights outside), ``load``
(``aoti_load_package``), ``apply`` (load, give every block its own weights, one transformer forward,
compared with eager). Prints each stage's exit code and the last lines of its output (with PyTorch's
native stack trace on a fatal signal). ``--minimal`` runs the same stages on one linear layer packaged
with its weights by ``aoti_compile_and_package`` (does any package load here?); ``--init-device``
starts the device (a CUDA context) before loading. After the compile stage, ``inspect`` reports
what the packaged library is made of (binutils, no torch): the shared libraries it needs and where it
looks for them, the compiler that built it, and whether C++ standard library internals (locale facet
ids, ``codecvt``) are defined inside it, i.e. a second copy of libstdc++ beside the process's (on the H100
machine: yes, and loading such a package crashes unless ``aot.share_libstdcxx`` ran first, which every
stage here does; ``--no-share`` leaves it out of the load stage to show the crash). ``aot.compile_block`` clears the
executable-stack flag of the compiled library (``aot.clear_executable_stack``); the compile stage
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


def minimal_stage(name: str, package: str, device: str, init_device: bool) -> None:
    """One linear layer: export + ``aoti_compile_and_package`` (weights inside), load, apply."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).to(device)
    x = (torch.randn(8, 64, device=device),)
    if name == "compile":
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(torch.export.export(model, x), package_path=package)
        print(json.dumps({"package_kib": Path(package).stat().st_size / 1024}))
        return
    if init_device:
        torch.zeros(1, device=device)
    t0 = time.perf_counter()
    loaded = torch._inductor.aoti_load_package(package)
    load_s = time.perf_counter() - t0
    if name == "apply":
        with torch.no_grad():
            print(json.dumps({"max_abs": float((loaded(*x) - model(*x)).abs().max())}))
    else:
        print(json.dumps({"load_s": load_s}))


def stage(name: str, package: str, small: bool, device: str | None, init_device: bool = False) -> None:
    import torch

    from mirage import aot, speed
    from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG
    from speed import inputs  # benchmarks/speed.py

    device = torch.device(device or ("cpu" if small else "cuda"))
    dtype = torch.float32 if small else torch.bfloat16
    config = TINY_TRANSFORMER_CONFIG if small else TI2V_5B_TRANSFORMER_CONFIG
    x = inputs(config, *((3, 4, 6) if small else (9, 44, 80)), device, dtype)
    t0 = time.perf_counter()
    if name == "compile":
        aot.compile_block(speed.random_transformer(config, device, dtype), x, package)
        seconds = time.perf_counter() - t0
        with zipfile.ZipFile(package) as z, tempfile.TemporaryDirectory() as tmp:  # is the flag still set inside?
            libraries = [z.extract(n, tmp) for n in z.namelist() if n.endswith(".so")]
            still = [aot.clear_executable_stack(f) for f in libraries]
        print(json.dumps({"compile_s": seconds, "package_mib": Path(package).stat().st_size / 2**20,
                          "libraries": len(libraries), "executable_stack_in_package": any(still)}))
    elif name == "load":
        if init_device:
            torch.zeros(1, device=device)
        loaded = torch._inductor.aoti_load_package(package)
        print(json.dumps({"load_s": time.perf_counter() - t0, "constants": len(loaded.get_constant_fqns())}))
    else:
        model = speed.random_transformer(config, device, dtype)
        with torch.no_grad():
            ref = model(**x)[0]
            aot.apply(model, package)
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


def inspect(package: str) -> dict:
    """What the package's compiled libraries are made of (module docstring); empty fields where a
    binutils tool is missing."""
    import shutil

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout if shutil.which(cmd[0]) else ""

    out = {}
    with zipfile.ZipFile(package) as z, tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in z.namelist() if n.endswith(".so")):
            lib = z.extract(name, tmp)
            dynamic = run("readelf", "-d", lib).splitlines()
            defined = run("nm", "-C", "--defined-only", lib).splitlines()
            internals = [line.split(" ", 2)[-1] for line in defined
                         if any(k in line for k in ("std::locale::id", "std::locale::classic", "std::codecvt<char16_t"))]
            out[Path(name).name] = {
                "needed": [line.split("[")[-1].rstrip("]") for line in dynamic if "(NEEDED)" in line],
                "runpath": [line.split("[")[-1].rstrip("]") for line in dynamic if "PATH)" in line],
                "compiler": sorted({line.split("]", 1)[-1].strip() for line in run("readelf", "-p", ".comment", lib).splitlines()
                                    if "]" in line}),
                "libstdcxx_internals_defined_inside": internals[:8],
                "libstdcxx_internals_count": len(internals),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="/tmp/mirage_block.pt2")
    p.add_argument("--small", action="store_true", help="the tiny transformer in float32 (on the CPU unless --device)")
    p.add_argument("--device", default=None, help="default: cpu with --small, else cuda")
    p.add_argument("--minimal", action="store_true", help="one linear layer with its weights inside the package")
    p.add_argument("--init-device", action="store_true", help="start the device before loading")
    p.add_argument("--no-share", action="store_true",
                   help="load without aot.share_libstdcxx (the apply stage, through mirage.aot, shares anyway)")
    p.add_argument("--stage", choices=("compile", "load", "apply"), default=None, help="(internal) run one stage")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.stage:
        import torch

        if hasattr(torch._C, "_set_print_stack_traces_on_fatal_signal"):  # a native stack trace on a crash
            torch._C._set_print_stack_traces_on_fatal_signal(True)
        if not args.no_share:
            from mirage.aot import share_libstdcxx

            share_libstdcxx()
        if args.minimal:
            minimal_stage(args.stage, args.package, args.device or "cuda", args.init_device)
        else:
            stage(args.stage, args.package, args.small, args.device, args.init_device)
        return
    report = {}
    for name in ("compile", "load", "apply"):
        cmd = [sys.executable, "-X", "faulthandler", __file__, "--stage", name, "--package", args.package]
        cmd += (["--small"] if args.small else []) + ([] if args.device is None else ["--device", args.device])
        cmd += (["--minimal"] if args.minimal else []) + (["--init-device"] if args.init_device else [])
        cmd += ["--no-share"] if args.no_share else []
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        tail = [line for line in (r.stdout + r.stderr).splitlines() if "warn" not in line.lower()][-40:]
        report[name] = {"exit_code": r.returncode, "tail": tail}
        print(f"{name}: exit {r.returncode}", *tail, sep="\n  ", flush=True)
        if name == "compile" and r.returncode == 0:
            report["inspect"] = inspect(args.package)
            print("inspect:", json.dumps(report["inspect"], indent=1), flush=True)
        if r.returncode != 0:
            break
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
