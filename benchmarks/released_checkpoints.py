"""Random checkpoints with exactly the released key sets and shapes, built from the reference classes.

No trained weights can be downloaded here, so the loaders are checked against files that have the
released *layout*: the key names and shapes come from the reference implementation's own classes
at the released configs (the official Mirage code's vendored DiffSynth ``VaceWanModel`` and
``WanModel``, ``--reference-root`` as in ``benchmarks/diffsynth_equivalence.py``), the values are
random. The files are written as the references write them:

* Spatia ``step-8500.safetensors``: the 8-block ``VaceWanModel`` state dict, unprefixed (Spatia
  loads it strictly); ``lora_weights_10000.safetensors``: ``pipe.dit.<module>.lora_{A,B}.default.weight``
  for every ``q, k, v, o, ffn.0, ffn.2`` of the DiT (DiffSynth 1.x trainer, rank 32);
* Mirage ``vace.safetensors``: the 15-block ``VaceWanModel`` state dict, unprefixed;
  ``lora.safetensors``: ``pipe.dit.<module>.lora_{A,B}.weight`` (the official trainer's export).

``benchmarks/pipeline.py --branch KIND`` loads them with ``MiragePipeline.load_branch`` (strict: a
missing, unexpected or mis-shaped tensor is an error) and generates with them.

    python benchmarks/released_checkpoints.py --reference-root .whl/ref --kind spatia --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffsynth_equivalence import load_vendored  # noqa: E402

from mirage.families import FAMILIES  # noqa: E402

# Wan2.2-TI2V-5B as DiffSynth builds it (model_config.py, hash 1f5ab7703c6fc803fdded85ff040c316)
TI2V_5B_DIFFSYNTH = dict(dim=3072, in_dim=48, ffn_dim=14336, out_dim=48, text_dim=4096, freq_dim=256, eps=1e-6,
                         patch_size=(1, 2, 2), num_heads=24, num_layers=30, has_image_input=False,
                         seperated_timestep=True, require_vae_embedding=False, require_clip_embedding=False,
                         fuse_vae_embedding_in_latents=True)  # fmt: skip
BRANCH_LAYERS = {k: f.branch_config.layers for k, f in FAMILIES.items()}  # the released layouts
FILES = {k: (f.branch_file, f.lora_file) for k, f in FAMILIES.items()}
LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")  # PEFT target_modules of both trainers


def branch_shapes(root: Path, kind: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the reference ``VaceWanModel`` at the released config of ``kind``."""
    _, vace, _ = load_vendored(root)
    d = TI2V_5B_DIFFSYNTH
    with torch.device("meta"):
        model = vace.VaceWanModel(vace_layers=BRANCH_LAYERS[kind], vace_in_dim=96, patch_size=d["patch_size"],
                                  has_image_input=False, dim=d["dim"], num_heads=d["num_heads"], ffn_dim=d["ffn_dim"],
                                  eps=d["eps"])  # fmt: skip
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def lora_shapes(root: Path, kind: str, rank: int = 32) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the LoRA the reference trainer exports for the reference ``WanModel`` (TI2V-5B)."""
    dit, _, _ = load_vendored(root)
    with torch.device("meta"):
        model = dit.WanModel(**TI2V_5B_DIFFSYNTH)
    tag = FAMILIES[kind].lora_key_tag  # DiffSynth 1.x keeps PEFT's adapter name; Mirage's export drops it
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and name.endswith(tuple(f".{t}" for t in LORA_TARGETS)):
            shapes[f"pipe.dit.{name}.lora_A{tag}.weight"] = (rank, module.in_features)
            shapes[f"pipe.dit.{name}.lora_B{tag}.weight"] = (module.out_features, rank)
    return shapes


def write_random(shapes: dict[str, tuple[int, ...]], path: Path, seed: int, std: float = 0.02,
                 device: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> Path:  # fmt: skip
    """A safetensors file with ``shapes``' keys holding ``N(0, std)`` values (``1 + N(0, std)`` for norm weights)."""
    from safetensors.torch import save_file

    gen = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std
        if "norm" in key and key.endswith("weight"):
            value += 1
        tensors[key] = value.to(dtype).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_released_layout(root: Path, kind: str, folder: Path, seed: int = 0, device: str = "cpu") -> dict:
    """Write ``kind``'s branch and LoRA files into ``folder``; returns what was written."""
    t0 = time.perf_counter()
    branch, lora = branch_shapes(root, kind), lora_shapes(root, kind)
    names = FILES[kind]
    write_random(branch, folder / names[0], seed, device=device)
    write_random(lora, folder / names[1], seed + 1, device=device)
    count = lambda s: sum(int(torch.tensor(v).prod()) for v in s.values())  # noqa: E731
    return {"kind": kind, "folder": str(folder), "branch_file": names[0], "lora_file": names[1],
            "branch_tensors": len(branch), "branch_parameters": count(branch), "lora_tensors": len(lora),
            "lora_parameters": count(lora), "write_s": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-root", type=Path, required=True)
    p.add_argument("--kind", choices=tuple(FILES), required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the two files")
    p.add_argument("--shapes-only", action="store_true", help="print the key counts, write nothing")
    args = p.parse_args()
    if args.shapes_only:
        b, l = branch_shapes(args.reference_root, args.kind), lora_shapes(args.reference_root, args.kind)
        print(json.dumps({"branch_tensors": len(b), "lora_tensors": len(l), "first_branch_keys": list(b)[:3],
                          "first_lora_keys": list(l)[:2]}, indent=2))  # fmt: skip
        return
    print(json.dumps(write_released_layout(args.reference_root, args.kind, args.out), indent=2))


if __name__ == "__main__":
    main()
