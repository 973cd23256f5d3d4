"""Checkpoints of the trained side branch and of the LoRA adapters, for both families.

* **Spatia** publishes ``Jinjing713/Spatia``: ``step-8500.safetensors`` (an 8-block branch, unprefixed
  DiffSynth names) and ``lora_weights_10000.safetensors`` (``pipe.dit.<module>.lora_{A,B}.default.weight``).
* **Mirage** (the official code) publishes no weights; its trainer writes ``vace.safetensors`` /
  ``lora.safetensors`` or ``step_XXXXXXX_vace.safetensors`` / ``step_XXXXXXX_lora.safetensors``
  (a 15-block branch; LoRA keys ``pipe.dit.<module>.lora_{A,B}.weight``).

Both name modules as DiffSynth's Wan code does (``self_attn.q``, ``cross_attn.o``, ``norm3``,
``ffn.0``, ``modulation``, ``before_proj`` ...). Here they become diffusers names (``attn1.to_q``,
``attn2.to_out.0``, ``norm2``, ``ffn.net.0.proj``, ``scale_shift_table``, ``proj_in`` ...), one table
for the branch and the LoRA. Loading is strict: every missing, unexpected or mis-shaped tensor is
named in the error. The LoRA is loaded through diffusers/PEFT with the references' scaling,
``W + 1.0 * (B @ A)`` (PEFT ``lora_alpha = rank``).

Files come from a local path, a local folder or the Hugging Face cache (``mirage.weights``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from . import weights
from .branch import BranchConfig, MemoryBranch
from .families import FAMILIES

__all__ = [
    "SPATIA_REPO",
    "SPATIA_BRANCH_FILE",
    "SPATIA_LORA_FILE",
    "MIRAGE_BRANCH_FILE",
    "MIRAGE_LORA_FILE",
    "read_state_dict",
    "convert_module_name",
    "convert_branch_state_dict",
    "infer_branch_config",
    "load_branch",
    "branch_from_checkpoint",
    "convert_lora_state_dict",
    "load_lora",
    "find_checkpoint",
    "resolve_checkpoint",
]

# The families' file names (mirage.families.FAMILIES), under the names the loaders have always used.
SPATIA_REPO = FAMILIES["spatia"].weights_repo  # "Jinjing713/Spatia"
SPATIA_BRANCH_FILE, SPATIA_LORA_FILE = FAMILIES["spatia"].branch_file, FAMILIES["spatia"].lora_file
MIRAGE_BRANCH_FILE, MIRAGE_LORA_FILE = FAMILIES["mirage"].branch_file, FAMILIES["mirage"].lora_file

StateDict = dict[str, Tensor]

# DiffSynth module paths inside a Wan block -> diffusers WanTransformerBlock / BranchBlock paths. DiffSynth's
# ``norm3`` is the affine cross-attention norm (diffusers ``norm2``); its ``norm1``/``norm2`` have no weights.
_BLOCK_MODULES = {
    **{f"self_attn.{a}": f"attn1.to_{a}" for a in "qkv"}, "self_attn.o": "attn1.to_out.0",
    **{f"cross_attn.{a}": f"attn2.to_{a}" for a in "qkv"}, "cross_attn.o": "attn2.to_out.0",
    "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "before_proj": "proj_in", "after_proj": "proj_out",
}  # fmt: skip
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}  # parameters held by the block itself
_BLOCK_KEY = re.compile(r"^((?:vace_)?blocks\.\d+)\.(.+)$")  # (block prefix, path inside the block)

_BRANCH_PREFIXES = ("module.", "model.", "pipe.vace.", "vace.")
_LORA_PREFIXES = ("module.", "model.", "pipe.dit.", "dit.", "base_model.model.", "base_model.", "diffusion_model.")
_NESTED = {"branch": ("vace", "generator.vace"), "lora": ("lora", "generator.lora"), None: ()}
_WRAPPERS = ("state_dict", "module", "model")
_LORA_KEY = re.compile(r"^(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")


def read_state_dict(path: str | os.PathLike, part: Literal["branch", "lora"] | None = None) -> StateDict:
    """The tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``.

    Nested training checkpoints are unwrapped as the references do: ``vace`` / ``generator.vace``
    (``part="branch"``) or ``lora`` / ``generator.lora`` (``part="lora"``), then ``state_dict``,
    ``module``, ``model``. Non-tensor entries (step counters, configs) are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{str(path)!r} stores Python objects that need unpickling, which is refused (torch.load with "
            f"weights_only=True). Re-save its tensors with safetensors. ({err})"
        ) from err
    for _ in range(8):  # unwrap nested dicts, innermost last
        if not isinstance(obj, Mapping):
            break
        inner = next((v for k in _NESTED[part] if isinstance(v := _get_path(obj, k), Mapping)), None)
        if inner is None:
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{str(path)!r} holds no tensors (keys: {sorted(obj)[:10]})")
    return tensors


def _get_path(obj: Mapping, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """Remove any of ``prefixes`` from the front of ``key``, repeatedly and in any order."""
    while True:
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key


def convert_module_name(name: str) -> str:
    """A DiffSynth/official Wan module or parameter name (``blocks.3.self_attn.o.weight``,
    ``vace_blocks.0.modulation``) in diffusers naming (``blocks.3.attn1.to_out.0.weight``,
    ``vace_blocks.0.scale_shift_table``). Names already in diffusers naming are returned unchanged."""
    match = _BLOCK_KEY.match(name)
    if match is None:
        return name
    block, inner = match.groups()
    if inner in _BLOCK_PARAMS:
        return f"{block}.{_BLOCK_PARAMS[inner]}"
    for old, new in _BLOCK_MODULES.items():
        if inner == old or inner.startswith(old + "."):
            return f"{block}.{new}{inner[len(old):]}"
    return name


def convert_branch_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """A branch state dict (DiffSynth/Mirage/Spatia or ours) in ``MemoryBranch`` naming.

    Prefixes ``module.``, ``model.``, ``pipe.vace.``, ``vace.`` are stripped repeatedly, and only
    ``vace_blocks.*`` / ``vace_patch_embedding.*`` are kept (a full training checkpoint also holds
    the DiT, which is not the branch's)."""
    out: StateDict = {}
    for key, value in state_dict.items():
        name = _strip_prefixes(key, _BRANCH_PREFIXES)
        if not name.startswith(("vace_blocks.", "vace_patch_embedding.")):
            continue
        name = convert_module_name(name)
        if name in out:
            raise ValueError(f"two checkpoint keys convert to {name!r} (the second is {key!r})")
        out[name] = value
    if not out:
        raise ValueError(f"no branch tensors (vace_blocks.*, vace_patch_embedding.*) among {len(state_dict)} keys, "
                         f"e.g. {sorted(state_dict)[:5]}")  # fmt: skip
    return out


def infer_branch_config(
    state_dict: Mapping[str, Tensor], *, layers: tuple[int, ...] | None = None, scale: float = 1.0
) -> BranchConfig:
    """The ``BranchConfig`` of a branch state dict (any naming): ``in_channels`` from the patch
    embedding, the layers from the block count for the 30-layer TI2V-5B (15 blocks: 0, 2, ..., 28 as
    Mirage; 8 blocks: 0, 4, ..., 28 as Spatia). Any other count needs ``layers``."""
    converted = convert_branch_state_dict(state_dict)
    blocks = sorted({int(k.split(".")[1]) for k in converted if k.startswith("vace_blocks.")})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(f"the branch blocks must be numbered 0 .. n-1, got {blocks}")
    if "vace_patch_embedding.weight" not in converted:
        raise ValueError("the branch state dict has no vace_patch_embedding.weight")
    in_channels = int(converted["vace_patch_embedding.weight"].shape[1])
    n = len(blocks)
    if layers is None:
        known = {f.blocks: f.branch_config.layers for f in FAMILIES.values()}  # the released layouts
        if n not in known:
            names = " and ".join(f"{f.blocks} ({f.label})" for f in sorted(FAMILIES.values(), key=lambda f: -f.blocks))
            raise ValueError(f"the branch has {n} blocks; only {names} are known: pass layers=")
        layers = known[n]
    elif len(layers) != n:
        raise ValueError(f"layers={tuple(layers)} names {len(layers)} DiT layers but the branch has {n} blocks")
    return BranchConfig(tuple(layers), in_channels=in_channels, scale=scale)


def _as_state_dict(state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike, part: str) -> Mapping[str, Tensor]:
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        return read_state_dict(state_dict_or_path, part=part)
    return state_dict_or_path


def _check_against(expected: Mapping[str, Tensor], got: Mapping[str, Tensor], what: str) -> None:
    """Raise ``ValueError`` naming every missing key, unexpected key and shape mismatch."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
                  for k in sorted(set(expected) & set(got)) if tuple(expected[k].shape) != tuple(got[k].shape)]  # fmt: skip
    if missing or unexpected or mismatched:
        lines = [f"{what} does not match:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ValueError("\n".join(lines))


def load_branch(branch: MemoryBranch, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike) -> MemoryBranch:
    """Load a branch checkpoint (any naming, a dict or a file) into ``branch``, strictly: a
    ``ValueError`` lists missing keys, unexpected keys and shape mismatches. Returns ``branch``."""
    converted = convert_branch_state_dict(_as_state_dict(state_dict_or_path, "branch"))
    _check_against(branch.state_dict(), converted, f"the branch checkpoint ({len(branch.vace_blocks)} blocks)")
    branch.load_state_dict(converted, strict=True)
    return branch


def branch_from_checkpoint(
    transformer_or_config: Any,
    state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike,
    *,
    layers: tuple[int, ...] | None = None,
    scale: float = 1.0,
) -> MemoryBranch:
    """A ``MemoryBranch`` for ``transformer_or_config`` holding the checkpoint's tensors (their dtype
    and device), its config inferred by ``infer_branch_config``. Built on the meta device, so the
    full-size branch is never allocated twice."""
    converted = convert_branch_state_dict(_as_state_dict(state_dict_or_path, "branch"))
    config = infer_branch_config(converted, layers=layers, scale=scale)
    with torch.device("meta"):
        branch = MemoryBranch.for_transformer(transformer_or_config, config)
    _check_against(branch.state_dict(), converted, f"the branch checkpoint ({len(branch.vace_blocks)} blocks)")
    branch.load_state_dict(converted, strict=True, assign=True)
    return branch


def convert_lora_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """LoRA weights (DiffSynth/Mirage/Spatia/PEFT naming) as diffusers/PEFT keys
    ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` on ``WanTransformer3DModel`` modules.

    Prefixes ``module.``, ``model.``, ``pipe.dit.``, ``dit.``, ``base_model(.model).``,
    ``diffusion_model.`` are stripped repeatedly, ``.default`` is dropped, ``lora_down/lora_up`` mean
    ``lora_A/lora_B``. Keys of another kind (``alpha``, LoRA biases) are an error: the references
    fuse ``W + B @ A`` with nothing else."""
    out: StateDict = {}
    other = []
    for key, value in state_dict.items():
        match = _LORA_KEY.match(_strip_prefixes(key, _LORA_PREFIXES))
        if match is None:
            other.append(key)
            continue
        module, kind = match.groups()
        kind = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(kind, kind)
        name = f"{convert_module_name(module)}.{kind}.weight"
        if name in out:
            raise ValueError(f"two LoRA keys convert to {name!r} (the second is {key!r})")
        out[name] = value
    if other:
        raise ValueError(f"{len(other)} keys are not LoRA A/B weights (<module>.lora_A[.default].weight ...): {other[:10]}")
    if not out:
        raise ValueError("the LoRA state dict is empty")
    return out


def load_lora(
    transformer: Any,
    state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike,
    adapter_name: str = "memory",
) -> list[str]:
    """Load a LoRA (any naming, a dict or a file) into a diffusers ``WanTransformer3DModel`` as the
    PEFT adapter ``adapter_name``, scaled as the references fuse it: ``W + 1.0 * (B @ A)`` (PEFT
    ``lora_alpha = rank``; the rank is read from the tensors, per module). Raises ``ValueError``
    naming modules the transformer lacks, unpaired A/B and shape mismatches. Returns the adapted
    module names."""
    converted = convert_lora_state_dict(_as_state_dict(state_dict_or_path, "lora"))
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in converted.items():
        module, kind, _ = key.rsplit(".", 2)
        pairs.setdefault(module, {})[kind] = value
    problems = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            problems.append(f"{module}: has only {sorted(pair)}")
            continue
        a, b = pair["lora_A"], pair["lora_B"]  # [r, in], [out, r]
        try:
            linear = transformer.get_submodule(module)
        except AttributeError:
            problems.append(f"{module}: no such module in the transformer")
            continue
        linear = getattr(linear, "base_layer", linear)  # a Linear that already carries an adapter
        if not isinstance(linear, nn.Linear):
            problems.append(f"{module}: is a {type(linear).__name__}, not a Linear")
            continue
        want_a, want_b = (a.shape[0], linear.in_features), (linear.out_features, a.shape[0])
        if a.ndim != 2 or b.ndim != 2 or tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            problems.append(f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)}, expected {want_a} / "
                            f"{want_b} for Linear({linear.in_features}, {linear.out_features})")  # fmt: skip
    if problems:
        raise ValueError(f"the LoRA does not fit the transformer ({len(problems)} modules):\n  " + "\n  ".join(problems))
    ranks = {module: int(pair["lora_A"].shape[0]) for module, pair in pairs.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {f"^{re.escape(m)}$": rank for m, rank in ranks.items() if rank != r}  # modules of another rank
    metadata = {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
                "target_modules": sorted(pairs), "lora_dropout": 0.0, "bias": "none"}  # fmt: skip
    transformer.load_lora_adapter(converted, prefix=None, adapter_name=adapter_name, metadata=metadata)
    return sorted(pairs)


def _file_layout(filename: str) -> weights.Layout:
    return {filename: "file"}


def find_checkpoint(
    source: str | os.PathLike, filename: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The checkpoint file for ``source`` (a file, a folder + ``filename``, or a hub id + ``filename``
    in the Hugging Face cache), or None. Never touches the network."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if filename is None:
        return None
    folder = weights.find_local(source, _file_layout(filename), cache_dir=cache_dir)
    return None if folder is None else folder / filename


def resolve_checkpoint(
    source: str | os.PathLike,
    filename: str | None = None,
    *,
    what: str = "the checkpoint",
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Like ``find_checkpoint``, downloading ``filename`` of a hub id when allowed
    (``weights.resolve``); raises ``FileNotFoundError`` saying what was looked for and where."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if filename is None:
        raise FileNotFoundError(f"{what}: {os.fspath(source)!r} is not a file; name the file in the folder or hub repo")
    folder = weights.resolve(source, _file_layout(filename), what=what, local_files_only=local_files_only,
                             cache_dir=cache_dir)  # fmt: skip
    return folder / filename
