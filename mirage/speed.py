"""Speed settings for the Wan transformer and the side branch's blocks: one home, off by default.

* **Attention backend** through diffusers' dispatcher (``set_attention_backend``), only backends that
  come with PyTorch (no kernel download) and that the device runs (``available_attention_backends``).
* **Regional compilation**: ``compile_repeated_blocks`` compiles the one repeated block
  (``WanTransformerBlock``) once for all 30 (diffusers' recipe; the branch's blocks likewise), where
  ``torch.compile`` may run at all (not on ZeroGPU).
* **VAE in bfloat16** (``vae_dtype``): encode and decode in bf16, as DiffSynth loads every model and
  with it the Mirage and Spatia references run their VAE (diffusers' Wan examples keep the released
  float32). One chunk's decode: 2.8 s -> 1.7 s on the H100, 1.6% relative RMS difference in the frames
  (``benchmarks/speed.py --decode``).
* **FP8**: torchao's dynamic float8 activations with per-row float8 weights on the blocks' linear
  layers (Hopper and Blackwell; an option: it changes the output, ``benchmarks/speed.py`` says how
  much).
* **Fused** (``fused``, ours): RoPE in one pass and the feed-forward's GELU in its product's epilogue
  (``mirage.fused``); the GELU is computed before the bf16 rounding, so the output moves by bf16
  rounding (``benchmarks/speed.py`` says how much and what it saves).
* **Fused VAE** (``vae_fused``, ours): each of the VAE's RMS norms compiled into one kernel instead
  of seven passes, and its causal convolutions padding their input themselves instead of copying it
  into a padded tensor (``mirage.fused.fuse_vae``). Encode and decode, so both memories gain alike.
* **Ahead of time**: ``mirage.aot`` (the repeated block exported and compiled with AOTInductor),
  what runs where ``torch.compile`` cannot (ZeroGPU).

``choose`` picks the setting for a device; the app applies it when it loads the pipeline and says so
in its banner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["SpeedSettings", "available_attention_backends", "apply", "apply_branch", "choose", "describe", "describe_vae",
           "random_transformer", "repeated_blocks"]  # fmt: skip

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
    vae_dtype: Literal["float32", "bfloat16"] | None = None  # the VAE's dtype (None: as loaded, float32)
    fused: bool = False  # ours: one-pass RoPE and the GELU in the FFN product's epilogue (mirage.fused)
    vae_fused: bool = False  # ours: the VAE's norms in one kernel, padding in its convolutions (mirage.fused.fuse_vae)


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


def repeated_blocks(transformer: nn.Module, branch: nn.Module | None = None) -> list[nn.Module]:
    """The transformer's repeated blocks (its ``_repeated_blocks`` classes), then ``branch``'s blocks."""
    names = set(getattr(transformer, "_repeated_blocks", []) or [])
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    return blocks + ([] if branch is None else list(getattr(branch, "blocks", [])))


def apply(transformer: nn.Module, settings: SpeedSettings, branch: nn.Module | None = None,
          vae: nn.Module | None = None) -> nn.Module:  # fmt: skip
    """Apply ``settings`` to ``transformer`` (and ``branch``'s blocks, and ``vae``, the pipeline's
    ``AutoencoderKLWan``: its dtype, its fused norms and padding) in place; returns ``transformer``."""
    if settings.vae_dtype is not None and vae is not None:
        vae.to(dtype=getattr(torch, settings.vae_dtype))
    if settings.vae_fused and vae is not None:
        from mirage.fused import fuse_vae

        fuse_vae(vae)
    if settings.attention is not None:
        if settings.attention not in _BUILTIN_BACKENDS:
            raise ValueError(f"attention must be one of {_BUILTIN_BACKENDS} (built into PyTorch), got {settings.attention!r}")
        _set_attention_backend(transformer, settings.attention)
    if settings.fuse_qkv:
        transformer.fuse_qkv_projections()
    if settings.fp8:
        quantize_fp8(repeated_blocks(transformer, branch))
    if settings.fused:  # after quantizing: a quantized product keeps its own kernel (mirage.fused)
        from mirage.fused import fuse_blocks

        fuse_blocks(repeated_blocks(transformer))
    if settings.compile == "regional":
        kwargs = {"fullgraph": True} | ({} if settings.compile_mode is None else {"mode": settings.compile_mode})
        transformer.compile_repeated_blocks(**kwargs)
    apply_branch(branch, SpeedSettings(settings.compile, settings.compile_mode, settings.attention))
    return transformer


def quantize_fp8(blocks: list[nn.Module]) -> None:
    """torchao's dynamic FP8 (float8 activations, per-row float8 weights) for the linear layers of ``blocks``."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for block in blocks:
        quantize_(block, config, filter_fn=lambda m, _: isinstance(m, nn.Linear))


def _set_attention_backend(model: nn.Module, backend: str) -> None:
    """``model.set_attention_backend(backend)`` for this model's processors only: diffusers also makes it
    the process's default, which every other model (and every processor made later) would then use."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        model.set_attention_backend(backend)
    finally:
        _AttentionBackendRegistry.set_active_backend(default)


def apply_branch(branch: nn.Module | None, settings: SpeedSettings) -> None:
    """A side branch loaded after ``apply``: its blocks get the same attention backend and compilation."""
    if branch is None:
        return
    if settings.attention is not None and hasattr(branch, "set_attention_backend"):
        _set_attention_backend(branch, settings.attention)
    if settings.compile == "regional":
        kwargs = {"fullgraph": True} | ({} if settings.compile_mode is None else {"mode": settings.compile_mode})
        for block in getattr(branch, "blocks", []):
            block.compile(**kwargs)


def choose(device: str, zero_gpu: bool) -> SpeedSettings:
    """The setting for a device: on CUDA the VAE in bf16 (as the references run it) and, on a dedicated
    GPU, regional compilation of the fused blocks (``fused``: 164 instead of 170 ms a forward on an
    H100) and the fused VAE (``vae_fused``: a chunk's decode 1.39 instead of 1.70 s); eager (SDPA) on
    ZeroGPU, where torch.compile does not run (AoT packages are applied apart: ``mirage.aot``); on the
    CPU, nothing (float32 throughout)."""
    if device != "cuda":
        return SpeedSettings()
    if zero_gpu:
        return SpeedSettings(vae_dtype="bfloat16")
    return SpeedSettings(compile="regional", fused=True, vae_dtype="bfloat16", vae_fused=True)


def describe(settings: SpeedSettings) -> str:
    parts = [{"off": "eager", "regional": "regional compilation"}[settings.compile]]
    parts += [f"attention {settings.attention}"] if settings.attention else []
    parts += ["FP8 (torchao)"] if settings.fp8 else []
    parts += ["fused QKV"] if settings.fuse_qkv else []
    parts += ["fused RoPE and GELU (ours)"] if settings.fused else []
    return ", ".join(parts + describe_vae(settings))


def describe_vae(settings: SpeedSettings) -> list[str]:
    """What ``settings`` does to the VAE, in ``describe``'s words (also said beside an AoT package)."""
    return ([f"VAE in {settings.vae_dtype}"] if settings.vae_dtype else []) + (
        ["fused VAE norms and padding (ours)"] if settings.vae_fused else [])
