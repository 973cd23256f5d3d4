"""Speed settings for the Wan transformer and the side branch's blocks: one home, off by default.

* **Attention backend** through diffusers' dispatcher (``set_attention_backend``), only backends that
  come with PyTorch (no kernel download) and that the device runs (``available_attention_backends``).
* **Regional compilation**: ``compile_repeated_blocks`` compiles the one repeated block
  (``WanTransformerBlock``) once for all 30 (diffusers' recipe; the branch's blocks likewise), where
  ``torch.compile`` may run at all (not on ZeroGPU).
* **FP8**: torchao's dynamic float8 activations with per-row float8 weights on the blocks' linear
  layers (Hopper and Blackwell; an option: it changes the output, ``benchmarks/speed.py`` says how
  much).
* **Ahead of time** (``aot_compile`` / ``aot_apply``): the repeated block exported once
  (``torch.export``) and compiled with AOTInductor into a package *without* its weights; every block
  then calls the same compiled code with its own weights passed as user-managed constants. This is
  what ZeroGPU's ``spaces.aoti_compile`` / ``aoti_blocks_load`` do with the same torch APIs (they pass
  ``package_constants_in_so=False`` and load the weights per block), and what runs where
  ``torch.compile`` cannot. A package is tied to the torch version, the GPU architecture, the working
  size and the block's source (``aot_key``).

``choose`` picks the setting for a device; the app applies it when it loads the pipeline and says so
in its banner.
"""

from __future__ import annotations

import hashlib
import inspect
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["SpeedSettings", "available_attention_backends", "apply", "apply_branch", "choose", "describe", "random_transformer",
           "aot_key", "aot_compile", "aot_apply", "aot_package_with_weights", "clear_executable_stack"]  # fmt: skip

# diffusers attention backends that need nothing beyond PyTorch (attention_dispatch.AttentionBackendName)
_BUILTIN_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "_native_math")


@dataclass(frozen=True)
class SpeedSettings:
    """How the transformer runs. The default changes nothing."""

    compile: Literal["off", "regional"] = "off"  # regional: compile_repeated_blocks (needs torch.compile at run time)
    compile_mode: str | None = None  # torch.compile mode of the repeated block (None: the default)
    attention: str | None = None  # a diffusers attention backend (None: as loaded, "native" = SDPA)
    fp8: bool = False  # torchao dynamic float8 on the blocks' linear layers
    fuse_qkv: bool = False  # one matrix product for q, k and v (diffusers' fuse_qkv_projections)


def available_attention_backends(device: torch.device | str) -> list[str]:
    """The built-in backends this device runs: SDPA's choice (``native``) everywhere; on CUDA cuDNN's,
    flash (sm >= 8.0) and memory-efficient attention; on the CPU the math one."""
    device = torch.device(device)
    if device.type != "cuda":
        return ["native", "_native_math"]
    major, _ = torch.cuda.get_device_capability(device)
    out = ["native", "_native_efficient"]
    if major >= 8:
        out += ["_native_flash"] + (["_native_cudnn"] if torch.backends.cudnn.is_available() else [])
    return out


def random_transformer(config: dict[str, Any], device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """A ``WanTransformer3DModel`` of ``config`` with random weights (benchmarks and tests)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    return model.to(dtype).eval()


def _blocks(transformer: nn.Module, branch: nn.Module | None = None) -> list[nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", []) or [])
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    return blocks + ([] if branch is None else list(getattr(branch, "blocks", [])))


def apply(transformer: nn.Module, settings: SpeedSettings, branch: nn.Module | None = None) -> nn.Module:
    """Apply ``settings`` to ``transformer`` (and ``branch``'s blocks) in place; returns ``transformer``."""
    if settings.attention is not None:
        if settings.attention not in _BUILTIN_BACKENDS:
            raise ValueError(f"attention must be one of {_BUILTIN_BACKENDS} (built into PyTorch), got {settings.attention!r}")
        transformer.set_attention_backend(settings.attention)
    if settings.fuse_qkv:
        transformer.fuse_qkv_projections()
    if settings.fp8:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        for block in _blocks(transformer, branch):
            quantize_(block, config, filter_fn=lambda m, _: isinstance(m, nn.Linear))
    if settings.compile == "regional":
        kwargs = {"fullgraph": True} | ({} if settings.compile_mode is None else {"mode": settings.compile_mode})
        transformer.compile_repeated_blocks(**kwargs)
    apply_branch(branch, SpeedSettings(settings.compile, settings.compile_mode, settings.attention))
    return transformer


def apply_branch(branch: nn.Module | None, settings: SpeedSettings) -> None:
    """A side branch loaded after ``apply``: its blocks get the same attention backend and compilation."""
    if branch is None:
        return
    if settings.attention is not None and hasattr(branch, "set_attention_backend"):
        branch.set_attention_backend(settings.attention)
    if settings.compile == "regional":
        kwargs = {"fullgraph": True} | ({} if settings.compile_mode is None else {"mode": settings.compile_mode})
        for block in getattr(branch, "blocks", []):
            block.compile(**kwargs)


def choose(device: str, zero_gpu: bool) -> SpeedSettings:
    """The setting for a device: regional compilation on a dedicated CUDA GPU; eager (SDPA) on ZeroGPU,
    where torch.compile does not run (AoT packages are applied apart: ``aot_apply``), and on the CPU."""
    if device == "cuda" and not zero_gpu:
        return SpeedSettings(compile="regional")
    return SpeedSettings()


def describe(settings: SpeedSettings) -> str:
    parts = [{"off": "eager", "regional": "regional compilation"}[settings.compile]]
    parts += [f"attention {settings.attention}"] if settings.attention else []
    parts += ["FP8 (torchao)"] if settings.fp8 else []
    parts += ["fused QKV"] if settings.fuse_qkv else []
    return ", ".join(parts)


# ------------------------------------------------------------------------------ ahead of time
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

    block, seen = _blocks(transformer)[0], {}

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


def aot_key(transformer: nn.Module, inputs: dict[str, Any]) -> str:
    """What a package is valid for: torch version, GPU architecture, input shapes and dtypes, the block's source."""
    block = _blocks(transformer)[0]
    arch = "x".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else "cpu"
    shapes = [tuple(v.shape) + (str(v.dtype),) for v in inputs.values() if isinstance(v, torch.Tensor)]
    source = inspect.getsource(type(block))
    return hashlib.sha256(f"{torch.__version__}|{arch}|{shapes}|{source}".encode()).hexdigest()[:16]


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


def aot_compile(transformer: nn.Module, inputs: dict[str, Any], package: str | Path) -> Path:
    """Export the repeated block at the shapes of ``inputs`` (the transformer's keyword arguments) and
    compile it with AOTInductor into ``package``, without weights. Returns the package's path."""
    from torch._inductor.package import package_aoti

    args, kwargs = _block_call(transformer, inputs)
    block = _blocks(transformer)[0]
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
    return package


class _AotBlock:
    """A block's forward through the shared compiled package, with this block's own weights."""

    def __init__(self, loaded, weights: dict[str, torch.Tensor]) -> None:
        self.loaded, self.weights, self.first = loaded, weights, True

    def __call__(self, *args, **kwargs):
        names = self.loaded.get_constant_fqns()
        self.loaded.load_constants({n: self.weights[n] for n in names}, check_full_update=self.first, user_managed=True)
        self.first = False
        return self.loaded(*args, **kwargs)


def aot_apply(transformer: nn.Module, package: str | Path) -> nn.Module:
    """Every repeated block of ``transformer`` runs the compiled ``package`` with its own weights."""
    loaded = torch._inductor.aoti_load_package(str(package))
    for block in _blocks(transformer):
        block.forward = _AotBlock(loaded, dict(block.state_dict()))
    return transformer


def aot_package_with_weights(transformer: nn.Module, inputs: dict[str, Any], package: str | Path) -> int:
    """The repeated block compiled into one package *with* its weights (``aoti_compile_and_package``'s
    default), to check whether such a package loads (0 once written)."""
    args, kwargs = _block_call(transformer, inputs)
    with torch.no_grad():
        exported = torch.export.export(_blocks(transformer)[0], args, kwargs)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
    return 0
