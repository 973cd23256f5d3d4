"""Model configs for tests and benchmarks, in one place: the released sizes (for full-size runs with
random weights) and tiny sizes of the same diffusers / transformers classes (for CPU tests).

Nothing here downloads anything. ``save_tiny_wan_checkpoint`` writes a complete diffusers folder of
Wan2.2 TI2V layout (transformer, VAE, scheduler, UMT5 text encoder, tokenizer) with random weights,
so that the real loading code (``MiragePipeline.from_pretrained``, the app's weight lookup) runs
end to end without the real weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TI2V_5B_TRANSFORMER_CONFIG",
    "TINY_TRANSFORMER_CONFIG",
    "TINY_VAE_CONFIG",
    "TINY_TEXT_DIM",
    "tiny_transformer",
    "tiny_text_encoder",
    "tiny_depth_pro_config",
    "tiny_depth_anything_config",
    "depth_pro_large_config",
    "save_tiny_wan_checkpoint",
    "shard_safetensors",
    "write_hub_cache",
    "TINY_BRANCH_TRANSFORMER_CONFIG",
    "tiny_branch_transformer",
    "tiny_branch_state_dict",
    "tiny_lora_state_dict",
    "save_tiny_branch",
    "randomize_parameters",
    "subclass_weight",
]

# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json (diffusers WanTransformer3DModel kwargs)
TI2V_5B_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
TINY_TEXT_DIM = 32
TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
    text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32,
)  # fmt: skip
# Overrides of mirage.codecs.WAN22_VAE_CONFIG: the Wan2.2 VAE layout (48 channels, patch 2, residual,
# stride 16, temporal stride 4) with narrow layers.
TINY_VAE_CONFIG: dict[str, Any] = {"base_dim": 4, "decoder_base_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}


def tiny_transformer(seed: int = 0, **overrides: Any):
    """A 2-layer ``WanTransformer3DModel`` of the TI2V layout, random weights from ``seed``."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides}).eval()


def tiny_text_encoder(seed: int = 0):
    """A 1-layer ``UMT5EncoderModel`` and a word-level fast tokenizer (``(encoder, tokenizer)``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = "a red room with motorcycle garden street camera moving slowly static low quality blurry".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = UMT5Config(vocab_size=len(vocab), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(config).eval()
    return encoder, tokenizer


def tiny_depth_pro_config():
    """A DepthProConfig small enough for CPU tests (sizes as in transformers' own DepthPro tests)."""
    from transformers import DepthProConfig

    return DepthProConfig(
        patch_size=16, fusion_hidden_size=16, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[10, 8],
        scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.2], scaled_images_feature_dims=[12, 12],
        use_fov_model=True,
        image_model_config=dict(model_type="dinov2", num_hidden_layers=2, hidden_size=16, num_attention_heads=1, patch_size=4),
        patch_model_config=dict(model_type="vit", num_hidden_layers=2, hidden_size=24, num_attention_heads=2, patch_size=6),
        fov_model_config=dict(model_type="vit", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, patch_size=8),
    )  # fmt: skip


def depth_pro_large_config():
    """The released Depth Pro layout (``apple/DepthPro-hf``): DINOv2-L/16 at 384 for the image, patch
    and field-of-view encoders."""
    from transformers import DepthProConfig

    dinov2_l = {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                "patch_size": 16, "image_size": 384, "use_mask_token": False}  # fmt: skip
    return DepthProConfig(image_model_config=dinov2_l, patch_model_config=dinov2_l, fov_model_config=dinov2_l,
                          use_fov_model=True)  # fmt: skip


def tiny_depth_anything_config(max_depth: int = 20):
    """A metric DepthAnythingConfig small enough for CPU tests (sizes as in transformers' own tests)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=8, out_indices=[1, 2], reshape_hidden_states=False,
    )  # fmt: skip
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=4, patch_size=16, neck_hidden_sizes=[2, 2],
        fusion_hidden_size=6, depth_estimation_type="metric", max_depth=max_depth,
    )  # fmt: skip


def save_tiny_wan_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Write a Wan2.2-TI2V-5B-Diffusers-shaped folder with tiny random components; returns it.

    ``transformer/`` (``WanTransformer3DModel``), ``vae/`` (``AutoencoderKLWan`` of
    ``TINY_VAE_CONFIG``), ``scheduler/`` (the released UniPC config), ``text_encoder/`` (UMT5),
    ``tokenizer/`` and ``model_index.json``, as ``hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers`` lays
    them out."""
    from diffusers import UniPCMultistepScheduler

    from .codecs import WanVAECodec
    from .pipeline import WAN_UNIPC_CONFIG

    folder = Path(folder)
    tiny_transformer(seed).save_pretrained(folder / "transformer")
    WanVAECodec.from_config(TINY_VAE_CONFIG, seed=seed).vae.save_pretrained(folder / "vae")
    UniPCMultistepScheduler(**WAN_UNIPC_CONFIG).save_pretrained(folder / "scheduler")
    encoder, tokenizer = tiny_text_encoder(seed)
    encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    index = {
        "_class_name": "WanImageToVideoPipeline", "_diffusers_version": "0.35.0", "expand_timesteps": True,
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
    }  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def shard_safetensors(file: str | Path, shards: list[str], index: str) -> list[Path]:
    """Split the safetensors ``file`` into ``len(shards)`` files beside it (tensors in order, about
    equal sizes), write the index ``index`` (``{"metadata": {"total_size"}, "weight_map"}``, what
    diffusers and transformers read for a sharded checkpoint) and remove ``file``. Returns the paths
    written. Lets a tiny checkpoint carry a released checkpoint's shard names."""
    from safetensors.torch import load_file, save_file

    file = Path(file)
    tensors = load_file(str(file))
    names = list(tensors)
    if len(names) < len(shards):
        raise ValueError(f"{file.name} has {len(names)} tensors, fewer than {len(shards)} shards")
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    weight_map, written, start = {}, [], 0
    for i, shard in enumerate(shards):
        stop = len(names) if i == len(shards) - 1 else max(start + 1, round(len(names) * (i + 1) / len(shards)))
        save_file({n: tensors[n].contiguous() for n in names[start:stop]}, str(file.parent / shard))
        weight_map.update({n: shard for n in names[start:stop]})
        written.append(file.parent / shard)
        start = stop
    (file.parent / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    file.unlink()
    return [*written, file.parent / index]


def write_hub_cache(cache_dir: str | Path, repo_id: str, folder: str | Path, files: list[str],
                    revision: str = "0" * 40) -> Path:  # fmt: skip
    """Lay ``files`` (paths relative to ``folder``) out in ``cache_dir`` as huggingface_hub's cache
    holds a model download (``models--org--name/snapshots/<revision>/...`` and ``refs/main``), as a
    Space's ``preload_from_hub`` leaves them. Returns the snapshot folder."""
    import shutil

    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for rel in files:
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(folder) / rel, snapshot / rel)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


# A tiny TI2V-layout transformer for the side branch and the reference comparisons: head_dim 24, whose
# RoPE axis split (t 8, h 8, w 8) is the same in diffusers and DiffSynth (it differs for 16 and 64).
TINY_BRANCH_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_TRANSFORMER_CONFIG, "attention_head_dim": 24, "ffn_dim": 64, "num_layers": 4,
}  # fmt: skip


def randomize_parameters(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every parameter of ``module`` drawn at random from ``seed``: norm weights ``1 + N(0, std)``,
    everything else (biases, modulation tables, zero-initialised projections) ``N(0, std)``, so that
    no default one or zero hides a bug. Returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            p.copy_(noise + 1 if "norm" in name and name.endswith("weight") else noise)
    return module


def subclass_weight(linear: torch.nn.Linear) -> torch.nn.Linear:
    """``linear`` with its weight made a tensor subclass holding the same values (PyTorch's test
    ``TwoTensor``), as a quantized weight is (torchao's Float8 weights): code that must tell such a
    weight apart is tested without torchao. Returns ``linear``."""
    from torch.testing._internal.two_tensor import TwoTensor

    w = linear.weight.detach()
    linear.weight = torch.nn.Parameter(TwoTensor(w.clone(), w.clone()), requires_grad=False)
    return linear


def tiny_branch_transformer(seed: int = 0, **overrides: Any):
    """A 4-layer ``WanTransformer3DModel`` of ``TINY_BRANCH_TRANSFORMER_CONFIG`` with every parameter
    random (``randomize_parameters``)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**{**TINY_BRANCH_TRANSFORMER_CONFIG, **overrides}).eval()
    return randomize_parameters(model, seed)


def tiny_branch_state_dict(transformer_config: dict[str, Any], layers: tuple[int, ...], seed: int = 1,
                           zero_out: bool = False, prefix: str = "pipe.vace.") -> dict[str, torch.Tensor]:  # fmt: skip
    """A random branch for ``transformer_config`` with blocks after ``layers``, keys under a trainer's
    ``prefix`` (stripped on load); ``zero_out``: ``proj_out`` zero, so the branch adds nothing."""
    from .branch import BranchConfig, MemoryBranch

    branch = randomize_parameters(MemoryBranch.for_transformer(transformer_config, BranchConfig(tuple(layers))), seed)
    if zero_out:
        for block in branch.vace_blocks:
            torch.nn.init.zeros_(block.proj_out.weight)
            torch.nn.init.zeros_(block.proj_out.bias)
    return {f"{prefix}{k}": v for k, v in branch.state_dict().items()}


def tiny_lora_state_dict(transformer_config: dict[str, Any], rank: int = 4, seed: int = 0, prefix: str = "pipe.dit.",
                         default: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """A random LoRA on every ``q, k, v, o, ffn.0, ffn.2`` of a transformer of ``transformer_config``,
    in DiffSynth's module names (``default``: PEFT's ``.default`` kept, as Spatia's file has it)."""
    gen = torch.Generator().manual_seed(seed)
    dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    ffn = transformer_config["ffn_dim"]
    shapes = {f"{a}.{p}": (dim, dim) for a in ("self_attn", "cross_attn") for p in "qkvo"} | {"ffn.0": (dim, ffn), "ffn.2": (ffn, dim)}
    tag = ".default" if default else ""
    sd = {}
    for i in range(transformer_config["num_layers"]):
        for name, (n_in, n_out) in shapes.items():
            sd[f"{prefix}blocks.{i}.{name}.lora_A{tag}.weight"] = torch.randn(rank, n_in, generator=gen) * 0.2
            sd[f"{prefix}blocks.{i}.{name}.lora_B{tag}.weight"] = torch.randn(n_out, rank, generator=gen) * 0.2
    return sd


def save_tiny_branch(folder: str | Path, kind: str, transformer_config: dict[str, Any] = TINY_TRANSFORMER_CONFIG,
                     seed: int = 1) -> Path:  # fmt: skip
    """``folder`` holding a random branch and LoRA under the family's file names (Spatia's
    ``step-8500.safetensors`` + ``lora_weights_10000.safetensors``, Mirage's ``vace.safetensors`` +
    ``lora.safetensors``), one branch block per stride of the tiny transformer's layers."""
    from safetensors.torch import save_file

    from .families import FAMILIES

    family = FAMILIES[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = family.layers(-(-transformer_config["num_layers"] // family.layer_stride))  # as many as fit the layers
    save_file(tiny_branch_state_dict(transformer_config, layers, seed), str(folder / family.branch_file))
    lora = tiny_lora_state_dict(transformer_config, seed=seed, default=family.lora_key_tag == ".default")
    save_file(lora, str(folder / family.lora_file))
    return folder
