"""Ahead-of-time compiled transformer blocks (AOTInductor): what runs where ``torch.compile`` cannot.

The repeated block (``WanTransformerBlock``) is exported once at one chunk's shapes (``torch.export``)
and compiled with AOTInductor into a package *without* its weights; every block then calls the same
compiled code with its own weights passed as user-managed constants. This is what ZeroGPU's
``spaces.aoti_compile`` / ``aoti_blocks_load`` do with the same torch APIs (they pass
``package_constants_in_so=False`` and load the weights per block).

* ``key``: what a package is valid for (torch and diffusers versions, GPU architecture, the block's
  input shapes and dtypes, its weights' names, shapes and dtypes, its source).
* ``compile_block``: export, compile and package; ``signature`` records the shapes it takes.
* ``share_libstdcxx``: called before any package is loaded. On the H100 machine (torch 2.11+cu130, g++
  13.3) the packaged library carries its own static copy of libstdc++ and does not list
  ``libstdc++.so.6`` as a dependency (``benchmarks/aot_probe.py`` inspects it). Python loads the process's
  libstdc++ (for torch) into a local scope, and the package's lookups then mix the two copies: the
  ``std::regex`` that parses the device string takes a locale facet by the wrong id and the process
  dies (a segmentation fault there; ``std::bad_cast`` in the CPU reproduction in ``tests/test_aot.py``).
  With the process's libstdc++ in the global scope, every lookup binds to it and the package loads and
  runs (H100, this function's ``ctypes`` call made by hand and ``LD_PRELOAD``:
  ``benchmarks/results/aot_probe_block_preload_cuda_h100.json``).
* ``check_load``: load a package in a child process. A package that cannot be loaded may crash the
  process that tries, so a server learns it from a child and stays eager.
* ``apply``: every repeated block runs the package, loaded lazily in each process that calls it (a
  ZeroGPU worker loads it in its own call), for calls at the shapes it was compiled for; any other
  call (another working size, a side branch's longer sequence) runs the block's own forward, as does
  a block the package fails for (its weights renamed by an adapter, say), with a warning.
  ``remove`` puts every block back.
* ``prepare``: the start-up step: the package from a cache folder when one with the same key is
  there, else compiled into it; then checked.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import inspect
import json
import mmap
import os
import struct
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .speed import repeated_blocks

importlib.import_module(f"{__package__}.fused")  # registers mirage::linear_gelu_tanh, which a fused block's package calls by name

__all__ = ["Package", "LoadCheck", "example_inputs", "key", "signature", "compile_block", "share_libstdcxx", "check_load",
           "prepare", "apply", "remove", "package_with_weights", "clear_executable_stack"]  # fmt: skip

Signature = list[tuple[tuple[int, ...], str]]  # (shape, dtype) of every tensor a block call takes, in order


@dataclass(frozen=True)
class LoadCheck:
    """Whether a package loaded in a child process (exit code 0), and the end of what it printed."""

    ok: bool
    exit_code: int | None  # None: it ran out of time; -11: a segmentation fault
    detail: str
    seconds: float | None = None  # how long aoti_load_package took there (what each process pays again)
    import_seconds: float | None = None  # ``import torch._inductor`` before it (a process forked after ``apply`` has it)


@dataclass(frozen=True)
class Package:
    """A compiled block on disk and what it is for."""

    path: Path
    key: str
    signature: Signature
    compile_s: float | None  # seconds it took to compile here (None: found in the cache)
    load: LoadCheck | None  # the child process's load (None: not checked)

    @property
    def usable(self) -> bool:
        return self.load is None or self.load.ok

    def why_not(self) -> str:
        """Why the package is not used ("" when it is)."""
        if self.usable:
            return ""
        if self.load.exit_code is None:
            return f"its load in a child process {self.load.detail}"
        return f"its load in a child process ended with exit code {self.load.exit_code} ({self.load.detail.splitlines()[-1][:160] if self.load.detail else 'no output'})"


def example_inputs(transformer: nn.Module, latent_frames: int, height: int, width: int, text_tokens: int = 512,
                   device: torch.device | str | None = None) -> dict[str, Any]:  # fmt: skip
    """The transformer's keyword arguments for one chunk as ``MiragePipeline.predict`` passes them:
    latents ``[1, C, F, h, w]`` (``height`` x ``width`` in latent cells) and the prompt ``[1, L, D]`` in
    the transformer's dtype, one float32 timestep per token ``[1, F h/2 w/2]``. Random values: an
    export only needs shapes and dtypes."""
    cfg, dtype = transformer.config, transformer.dtype
    device = device or next(transformer.parameters()).device
    g = torch.Generator(device).manual_seed(0)
    p_t, p_h, p_w = cfg.patch_size
    tokens = (latent_frames // p_t) * (height // p_h) * (width // p_w)
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, latent_frames, height, width, generator=g, device=device).to(dtype),
        timestep=torch.full((1, tokens), 500.0, device=device),
        encoder_hidden_states=torch.randn(1, text_tokens, cfg.text_dim, generator=g, device=device).to(dtype),
        return_dict=False,
    )


def _inductor_configs() -> dict[str, Any]:
    """AOTInductor options for a package whose weights are passed at run time (as spaces' aoti.py sets them)."""
    configs = {"aot_inductor.package_constants_in_so": False, "aot_inductor.package": True,
               "always_keep_tensor_constants": True, "joint_graph_constant_folding": False}  # fmt: skip
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 10):
        configs["aot_inductor.package_constants_on_disk_format"] = "pickle_weights"
    else:
        configs["aot_inductor.package_constants_on_disk"] = True
    return configs


def _block_call(transformer: nn.Module, inputs: dict[str, Any]) -> tuple[tuple, dict]:
    """The arguments the first repeated block is called with for ``inputs`` (the forward stops there)."""

    class _Captured(Exception):
        pass

    block, seen = repeated_blocks(transformer)[0], {}

    def hook(module, args, kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen["args"], seen["kwargs"]


def signature(args: tuple, kwargs: dict) -> Signature:
    """(shape, dtype) of every tensor in a block call, in order: what decides whether a package fits."""
    leaves, _ = tree_flatten((args, kwargs))
    return [(tuple(v.shape), str(v.dtype)) for v in leaves if isinstance(v, torch.Tensor)]


def key(transformer: nn.Module, inputs: dict[str, Any]) -> str:
    """What a package is valid for: torch version, GPU architecture, the block's input shapes and dtypes,
    and what its forward runs: the source of every module that defines a class in it or its attention
    processors (with their helper functions), each module's settings (``extra_repr``), each processor's
    attention backend (an unset one: the process's), and each weight's name, shape, dtype and tensor type
    (a quantized weight is a tensor subclass). ``mirage.fused`` and ``set_attention_backend`` change
    what runs but keep the block's own class and weights."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    block = repeated_blocks(transformer)[0]
    arch = "x".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else "cpu"
    device = next(transformer.parameters()).device.type
    import diffusers

    default_backend = _AttentionBackendRegistry.get_active_backend()[0]
    parts = [(name, m, getattr(m, "processor", None)) for name, m in block.named_modules()]
    runs = [(name, type(m).__qualname__, m.extra_repr(), type(p).__qualname__,
             str(getattr(p, "_attention_backend", None) or default_backend)) for name, m, p in parts]  # fmt: skip
    classes = dict.fromkeys(c for _, m, p in parts for c in (type(m), type(p)) if c is not type(None))
    modules = dict.fromkeys(inspect.getmodule(c) for c in classes)
    source = "".join(inspect.getsource(m) for m in modules) + repr(runs)
    sig = signature(*_block_call(transformer, inputs))
    weights = [(n, tuple(t.shape), str(t.dtype), type(t).__qualname__) for n, t in block.state_dict().items()]  # e.g. a LoRA renames them
    text = f"{torch.__version__}|{diffusers.__version__}|{arch}|{device}|{sig}|{weights}|{source}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clear_executable_stack(path: str | Path) -> bool:
    """Drop the executable-stack flag that the compiler leaves on an AOTInductor ``.so`` (the
    ``PT_GNU_STACK`` program header of a 64-bit little-endian ELF file). A loader that honours it must
    make every thread's stack executable when the library is opened, which recent glibc refuses and
    which ZeroGPU's own ``spaces.aoti_compile`` avoids the same way. True when the flag was set."""
    pt_gnu_stack, pf_x = 0x6474E551, 0x1
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as elf:
        if elf[:6] != b"\x7fELF\x02\x01":
            raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
        (table,) = struct.unpack_from("<Q", elf, 0x20)  # e_phoff
        entry, count = struct.unpack_from("<HH", elf, 0x36)  # e_phentsize, e_phnum
        for header in range(table, table + entry * count, entry):
            kind, flags = struct.unpack_from("<II", elf, header)  # p_type, p_flags
            if kind == pt_gnu_stack and flags & pf_x:
                struct.pack_into("<I", elf, header + 4, flags & ~pf_x)
                return True
    return False


def _sidecar(package: Path) -> Path:
    return package.with_suffix(package.suffix + ".json")


def compile_block(transformer: nn.Module, inputs: dict[str, Any], package: str | Path) -> Path:
    """Export the repeated block at the shapes of ``inputs`` (the transformer's keyword arguments) and
    compile it with AOTInductor into ``package``, without weights; its signature goes beside it
    (``<package>.json``). Returns the package's path."""
    from torch._inductor.package import package_aoti

    args, kwargs = _block_call(transformer, inputs)
    block = repeated_blocks(transformer)[0]
    with torch.no_grad():
        exported = torch.export.export(block, args, kwargs)
        artifacts = torch._inductor.aot_compile(exported.module(), args, kwargs, options=_inductor_configs())
    files = [f for f in artifacts if isinstance(f, str)]
    for f in files:
        if f.endswith(".so"):
            clear_executable_stack(f)
    package = Path(package)
    package.parent.mkdir(parents=True, exist_ok=True)
    package_aoti(str(package), files)
    _sidecar(package).write_text(json.dumps({"signature": signature(args, kwargs), "torch": torch.__version__}))
    return package


def share_libstdcxx() -> bool:
    """Put the process's libstdc++ into the global symbol scope (module docstring: a package's own static
    copy then goes unused). Idempotent; a no-op where there is no ``libstdc++.so.6`` (False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # the soname matches the copy torch already loaded: this promotes it, it loads nothing new
        ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def check_load(package: str | Path, timeout: float = 300.0) -> LoadCheck:
    """Load ``package`` in a child process (``aoti_load_package``, after ``share_libstdcxx`` as every
    load here): whether that worked, its exit code, the last lines it printed, and the seconds the load
    took there, apart from those of importing the compiler's Python package first. The child has this
    process's environment (and so its GPU)."""
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys, time; sys.path.insert(0, {root!r}); import torch; from mirage.aot import share_libstdcxx; "
            "share_libstdcxx(); t = time.perf_counter(); import torch._inductor; i = time.perf_counter() - t; "
            f"t = time.perf_counter(); m = torch._inductor.aoti_load_package({str(package)!r}); "
            "print('load_s', time.perf_counter() - t, 'import_s', i, 'constants', len(m.get_constant_fqns()))")
    try:
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return LoadCheck(False, None, f"no answer in {timeout:.0f} s")
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and "warn" not in ln.lower()]
    said = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("load_s ")]
    seconds, imported = (float(said[-1][1]), float(said[-1][3])) if r.returncode == 0 and said else (None, None)
    return LoadCheck(r.returncode == 0, r.returncode, "\n".join(lines[-6:]), seconds, imported)


def prepare(transformer: nn.Module, inputs: dict[str, Any], cache_dir: str | Path, check: bool = True) -> Package:
    """The package for ``inputs``' shapes: from ``cache_dir`` when one with the same ``key`` is there,
    else compiled into it (through a temporary name: a compile cut short leaves nothing); then, with
    ``check``, loaded once in a child process (``check_load``)."""
    k = key(transformer, inputs)
    path = Path(cache_dir) / f"block-{k}.pt2"
    compile_s = None
    if not (path.is_file() and _sidecar(path).is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):  # said before minutes of compiling, not after
            raise PermissionError(f"cannot write ahead-of-time packages into {path.parent}")
        t0 = time.perf_counter()
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.pt2")
        try:
            compile_block(transformer, inputs, tmp)
            os.replace(_sidecar(tmp), _sidecar(path))
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, _sidecar(tmp)):
                leftover.unlink(missing_ok=True)
        compile_s = time.perf_counter() - t0
    return Package(path, k, _read_signature(path), compile_s, check_load(path) if check else None)


_LOADED: dict[tuple[int, str], Any] = {}  # (process id, package path) -> the loaded package


def _loaded(package: Path):
    where = (os.getpid(), str(package))
    if where not in _LOADED:
        share_libstdcxx()
        _LOADED[where] = torch._inductor.aoti_load_package(str(package))
    return _LOADED[where]


class _AotBlock:
    """A block's forward: the package compiled for the call's shapes with this block's own weights, or
    the block's own forward where none was."""

    def __init__(self, block: nn.Module, fits: dict[tuple, Path]) -> None:
        self.block, self.fits = block, fits  # signature (as a tuple) -> package
        self.weights: dict[str, torch.Tensor] | None = None
        self.pid: int | None = None
        self.first: set[Path] = set()  # packages that got this process's full constants update
        self.broken: set[Path] = set()  # packages that failed for this block: it runs eager at their shapes
        self.calls = {"package": 0, "eager": 0}

    def __call__(self, *args, **kwargs):
        package = self.fits.get(tuple(signature(args, kwargs)))
        if package is not None and package not in self.broken:
            try:
                return self._run(package, args, kwargs)
            except Exception as err:  # noqa: BLE001 - e.g. weights renamed by an adapter: this block runs eager
                self.broken.add(package)
                warnings.warn(f"{package.name} not used for {type(self.block).__name__}: {type(err).__name__}: {err}")
        self.calls["eager"] += 1
        return type(self.block).forward(self.block, *args, **kwargs)

    def _run(self, package: Path, args: tuple, kwargs: dict):
        if self.pid != os.getpid():  # this process's first call: its own tensors (a ZeroGPU worker's on its GPU)
            self.weights, self.pid, self.first = dict(self.block.state_dict()), os.getpid(), set()
        loaded = _loaded(package)
        names = loaded.get_constant_fqns()
        missing = [n for n in names if n not in self.weights]
        if missing:
            raise KeyError(f"the block has no weight {missing[0]!r} (of {len(missing)} the package needs)")
        loaded.load_constants({n: self.weights[n] for n in names}, check_full_update=package not in self.first, user_managed=True)
        self.first.add(package)
        out = loaded(*args, **kwargs)
        self.calls["package"] += 1
        return out


def _read_signature(path: Path) -> Signature:
    return [(tuple(shape), dtype) for shape, dtype in json.loads(_sidecar(path).read_text())["signature"]]


def apply(transformer: nn.Module, packages: str | Path | Package | list) -> nn.Module:
    """Every repeated block of ``transformer`` runs the package compiled for each call's shapes, where
    one of ``packages`` was (module docstring); no device work here: each process loads a package at
    its first call. The compiler's Python package is imported here, so that a process forked later
    (a ZeroGPU worker) pays only the package's own load (``LoadCheck.seconds``)."""
    importlib.import_module("torch._inductor")
    packages = packages if isinstance(packages, list) else [packages]
    fits = {}
    for pkg in packages:
        path, sig = (pkg.path, pkg.signature) if isinstance(pkg, Package) else (Path(pkg), _read_signature(Path(pkg)))
        fits[tuple(sig)] = path
    for block in repeated_blocks(transformer):
        block.forward = _AotBlock(block, fits)
    return transformer


def remove(transformer: nn.Module) -> dict[str, int]:
    """Every repeated block back to its own forward; returns how many block calls ran the package and
    how many ran eager while it was applied."""
    calls = {"package": 0, "eager": 0}
    for block in repeated_blocks(transformer):
        aot = block.__dict__.pop("forward", None)
        if isinstance(aot, _AotBlock):
            calls = {k: calls[k] + aot.calls[k] for k in calls}
    return calls


def package_with_weights(transformer: nn.Module, inputs: dict[str, Any], package: str | Path) -> int:
    """The repeated block compiled into one package *with* its weights (``aoti_compile_and_package``'s
    default), to check whether such a package loads (0 once written)."""
    args, kwargs = _block_call(transformer, inputs)
    with torch.no_grad():
        exported = torch.export.export(repeated_blocks(transformer)[0], args, kwargs)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
    return 0
