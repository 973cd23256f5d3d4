"""Branch and LoRA checkpoints: DiffSynth/Mirage/Spatia naming -> ours, strict loading, files."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file

from mirage import checkpoints as ck
from mirage.branch import BranchConfig, MemoryBranch, branched_forward
from mirage.families import FAMILIES
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TEXT_DIM, tiny_branch_transformer

MIRAGE_BRANCH, SPATIA_BRANCH = FAMILIES["mirage"].branch_config, FAMILIES["spatia"].branch_config

TINY_LAYERS = (0, 2)


def diffsynth_branch_shapes(num_blocks: int, dim: int, ffn_dim: int, in_channels: int = 96) -> dict[str, tuple]:
    """The keys and shapes of a DiffSynth ``VaceWanModel`` (the table of the Wan VACE code): per block
    ``modulation``, self/cross attention q, k, v, o (+ bias) and norm_q/norm_k, the affine ``norm3``,
    ``ffn.0``/``ffn.2``, ``after_proj``; ``before_proj`` in block 0; the patch embedding (patch 1x2x2)."""
    shapes: dict[str, tuple] = {"vace_patch_embedding.weight": (dim, in_channels, 1, 2, 2), "vace_patch_embedding.bias": (dim,)}
    for n in range(num_blocks):
        b = f"vace_blocks.{n}"
        shapes[f"{b}.modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                shapes[f"{b}.{attn}.{lin}.weight"], shapes[f"{b}.{attn}.{lin}.bias"] = (dim, dim), (dim,)
            shapes[f"{b}.{attn}.norm_q.weight"] = shapes[f"{b}.{attn}.norm_k.weight"] = (dim,)
        shapes[f"{b}.norm3.weight"] = shapes[f"{b}.norm3.bias"] = (dim,)
        shapes[f"{b}.ffn.0.weight"], shapes[f"{b}.ffn.0.bias"] = (ffn_dim, dim), (ffn_dim,)
        shapes[f"{b}.ffn.2.weight"], shapes[f"{b}.ffn.2.bias"] = (dim, ffn_dim), (dim,)
        projs = ("before_proj", "after_proj") if n == 0 else ("after_proj",)
        for proj in projs:
            shapes[f"{b}.{proj}.weight"], shapes[f"{b}.{proj}.bias"] = (dim, dim), (dim,)
    return shapes


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def transformer():
    return tiny_branch_transformer(seed=0)


def tiny_branch(transformer, layers=TINY_LAYERS):
    return MemoryBranch.for_transformer(transformer, BranchConfig(layers))


def tiny_diffsynth_state_dict(seed=0):
    return random_state_dict(diffsynth_branch_shapes(len(TINY_LAYERS), dim=48, ffn_dim=64), seed)


def test_convert_module_name():
    table = {
        "blocks.3.self_attn.q.weight": "blocks.3.attn1.to_q.weight", "blocks.3.self_attn.o.bias": "blocks.3.attn1.to_out.0.bias",
        "blocks.3.self_attn.norm_k.weight": "blocks.3.attn1.norm_k.weight",
        "vace_blocks.1.cross_attn.v.weight": "vace_blocks.1.attn2.to_v.weight",
        "vace_blocks.1.cross_attn.o.weight": "vace_blocks.1.attn2.to_out.0.weight",
        "vace_blocks.1.cross_attn.norm_q.weight": "vace_blocks.1.attn2.norm_q.weight",
        "vace_blocks.1.norm3.bias": "vace_blocks.1.norm2.bias", "vace_blocks.1.ffn.0.weight": "vace_blocks.1.ffn.net.0.proj.weight",
        "vace_blocks.1.ffn.2.bias": "vace_blocks.1.ffn.net.2.bias", "vace_blocks.1.modulation": "vace_blocks.1.scale_shift_table",
        "vace_blocks.0.before_proj.weight": "vace_blocks.0.proj_in.weight", "vace_blocks.4.after_proj.bias": "vace_blocks.4.proj_out.bias",
        "blocks.0.self_attn.q": "blocks.0.attn1.to_q", "blocks.0.ffn.2": "blocks.0.ffn.net.2",  # module names (LoRA)
    }  # fmt: skip
    for old, new in table.items():
        assert ck.convert_module_name(old) == new, old
        assert ck.convert_module_name(new) == new  # already ours: unchanged
    assert ck.convert_module_name("vace_patch_embedding.weight") == "vace_patch_embedding.weight"


def test_diffsynth_branch_state_dict_loads_into_the_right_modules(transformer):
    sd = tiny_diffsynth_state_dict()
    prefixed = {("pipe.vace." if i % 3 == 0 else "module.vace." if i % 3 == 1 else "") + k: v
                for i, (k, v) in enumerate(sd.items())}  # fmt: skip
    prefixed["pipe.dit.blocks.0.self_attn.q.weight"] = torch.zeros(48, 48)  # not the branch's: dropped
    branch = ck.load_branch(tiny_branch(transformer), prefixed)
    b0, b1 = branch.vace_blocks
    assert torch.equal(b1.attn2.to_out[0].weight, sd["vace_blocks.1.cross_attn.o.weight"])
    assert torch.equal(b0.attn1.to_k.bias, sd["vace_blocks.0.self_attn.k.bias"])
    assert torch.equal(b1.attn1.norm_q.weight, sd["vace_blocks.1.self_attn.norm_q.weight"])
    assert torch.equal(b0.norm2.weight, sd["vace_blocks.0.norm3.weight"]) and torch.equal(b0.norm2.bias, sd["vace_blocks.0.norm3.bias"])
    assert torch.equal(b1.ffn.net[0].proj.weight, sd["vace_blocks.1.ffn.0.weight"])
    assert torch.equal(b1.ffn.net[2].bias, sd["vace_blocks.1.ffn.2.bias"])
    assert torch.equal(b1.scale_shift_table, sd["vace_blocks.1.modulation"])
    assert torch.equal(b0.proj_in.weight, sd["vace_blocks.0.before_proj.weight"])
    assert torch.equal(b1.proj_out.bias, sd["vace_blocks.1.after_proj.bias"])
    assert torch.equal(branch.vace_patch_embedding.weight, sd["vace_patch_embedding.weight"])
    # our own naming loads as well, and round-trips
    again = ck.load_branch(tiny_branch(transformer), branch.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), branch.state_dict().values()))


@dataclass
class _NotATensor:
    value: int


def test_files_nested_and_refused(transformer, tmp_path):
    sd = tiny_diffsynth_state_dict()
    save_file({"vace." + k: v for k, v in sd.items()}, str(tmp_path / "step-8500.safetensors"))
    torch.save({"generator": {"vace": sd, "lora": {}}, "step": 10}, tmp_path / "train.pt")
    torch.save({"state_dict": {"module": {"model.vace." + k: v for k, v in sd.items()}}}, tmp_path / "wrapped.pt")
    for name in ["step-8500.safetensors", "train.pt", "wrapped.pt"]:
        branch = ck.load_branch(tiny_branch(transformer), tmp_path / name)
        assert torch.equal(branch.vace_blocks[1].proj_out.weight, sd["vace_blocks.1.after_proj.weight"]), name
    assert set(ck.read_state_dict(tmp_path / "train.pt", part="branch")) == set(sd)  # the step counter is dropped
    torch.save({"vace": sd, "config": _NotATensor(3)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="unpickling"):
        ck.read_state_dict(tmp_path / "pickled.pt", part="branch")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        ck.read_state_dict(tmp_path / "nothing.pt")


def test_load_branch_errors_name_keys_and_shapes(transformer):
    sd = tiny_diffsynth_state_dict()
    del sd["vace_blocks.1.cross_attn.k.bias"]
    sd["vace_blocks.1.before_proj.weight"] = torch.zeros(48, 48)
    sd["vace_patch_embedding.weight"] = torch.zeros(48, 49, 1, 2, 2)
    with pytest.raises(ValueError) as err:
        ck.load_branch(tiny_branch(transformer), sd)
    msg = str(err.value)
    assert "missing keys (1): vace_blocks.1.attn2.to_k.bias" in msg
    assert "unexpected keys (1): vace_blocks.1.proj_in.weight" in msg
    assert "vace_patch_embedding.weight: expected (48, 96, 1, 2, 2), got (48, 49, 1, 2, 2)" in msg
    with pytest.raises(ValueError, match="no branch tensors"):
        ck.load_branch(tiny_branch(transformer), {"blocks.0.self_attn.q.weight": torch.zeros(48, 48)})


def test_infer_branch_config():
    mirage = diffsynth_branch_shapes(15, dim=8, ffn_dim=8)
    spatia = diffsynth_branch_shapes(8, dim=8, ffn_dim=8, in_channels=32)
    meta = lambda shapes: {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # noqa: E731
    assert ck.infer_branch_config(meta(mirage)) == MIRAGE_BRANCH
    assert ck.infer_branch_config(meta(spatia)) == BranchConfig(SPATIA_BRANCH.layers, in_channels=32)
    tiny = meta(diffsynth_branch_shapes(2, dim=8, ffn_dim=8))
    with pytest.raises(ValueError, match="2 blocks; only 15 .* pass layers="):
        ck.infer_branch_config(tiny)
    assert ck.infer_branch_config(tiny, layers=(0, 3), scale=0.5) == BranchConfig((0, 3), scale=0.5)
    with pytest.raises(ValueError, match="names 3 DiT layers but the branch has 2 blocks"):
        ck.infer_branch_config(tiny, layers=(0, 1, 2))


@pytest.mark.parametrize("config, tensors, params", [(MIRAGE_BRANCH, 439, 2_607_077_376), (SPATIA_BRANCH, 236, 1_395_398_656)])
def test_full_size_diffsynth_keys_map_one_to_one(config, tensors, params):
    """The DiffSynth key set of the released-size branch (dim 3072, ffn 14336, 96 channels) maps onto
    ``MemoryBranch`` of the TI2V-5B config, on the meta device (nothing allocated)."""
    shapes = diffsynth_branch_shapes(len(config.layers), dim=3072, ffn_dim=14336)
    assert len(shapes) == tensors and sum(math.prod(s) for s in shapes.values()) == params
    with torch.device("meta"):
        branch = MemoryBranch.for_transformer(TI2V_5B_TRANSFORMER_CONFIG, config)
    ours = {k: tuple(v.shape) for k, v in branch.state_dict().items()}
    converted = ck.convert_branch_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    assert len(converted) == len(ours) == tensors
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    ck.load_branch(branch, converted)  # strict: no missing or unexpected keys, no shape mismatch
    loaded = ck.branch_from_checkpoint(TI2V_5B_TRANSFORMER_CONFIG, converted)
    assert loaded.config == config and loaded.vace_blocks[0].proj_in is not None


@torch.no_grad()
def test_branch_from_checkpoint_runs_like_load_branch(transformer):
    sd = tiny_diffsynth_state_dict(seed=4)
    a = ck.branch_from_checkpoint(transformer, sd, layers=TINY_LAYERS, scale=0.5)
    b = ck.load_branch(MemoryBranch.for_transformer(transformer, BranchConfig(TINY_LAYERS, scale=0.5)), sd)
    g = torch.Generator().manual_seed(0)
    latents, context = torch.randn(1, 48, 4, 4, 6, generator=g), torch.randn(1, 96, 3, 4, 6, generator=g)
    timestep, text = torch.full((1, 24), 500.0), torch.randn(1, 5, TINY_TEXT_DIM, generator=g)
    out_a = branched_forward(transformer, a, latents, timestep, text, context=context, num_ref_frames=1)
    out_b = branched_forward(transformer, b, latents, timestep, text, context=context, num_ref_frames=1)
    assert torch.equal(out_a, out_b)


# ---------------------------------------------------------------------------------------------- LoRA

LORA_MODULES = {"self_attn.q": (48, 48), "self_attn.k": (48, 48), "self_attn.v": (48, 48), "self_attn.o": (48, 48),
                "cross_attn.q": (48, 48), "cross_attn.k": (48, 48), "cross_attn.v": (48, 48), "cross_attn.o": (48, 48),
                "ffn.0": (48, 64), "ffn.2": (64, 48)}  # fmt: skip  # DiffSynth module -> (in, out)


def diffsynth_lora(num_blocks=4, rank=4, seed=0, style="mirage"):
    """A LoRA in one of the references' namings, plus {diffusers module: (A, B)}."""
    g = torch.Generator().manual_seed(seed)
    sd, pairs = {}, {}
    for i in range(num_blocks):
        for module, (fin, fout) in LORA_MODULES.items():
            r = rank + 2 if (i, module) == (1, "ffn.2") else rank  # one module of another rank
            a, b = torch.randn(r, fin, generator=g) * 0.2, torch.randn(fout, r, generator=g) * 0.2
            name = f"blocks.{i}.{module}"
            if style == "mirage":  # Mirage's export
                sd[f"pipe.dit.{name}.lora_A.weight"], sd[f"pipe.dit.{name}.lora_B.weight"] = a, b
            elif style == "spatia":  # DiffSynth 1.x trainer export, PEFT's .default kept
                sd[f"pipe.dit.{name}.lora_A.default.weight"], sd[f"pipe.dit.{name}.lora_B.default.weight"] = a, b
            else:  # kohya-like down/up
                sd[f"diffusion_model.{name}.lora_down.weight"], sd[f"diffusion_model.{name}.lora_up.weight"] = a, b
            pairs[ck.convert_module_name(name)] = (a, b)
    return sd, pairs


@pytest.mark.parametrize("style", ["mirage", "spatia", "down_up"])
@torch.no_grad()
def test_load_lora_equals_fused_weights(style):
    base = tiny_branch_transformer(seed=2)
    fused = copy.deepcopy(base)
    sd, pairs = diffsynth_lora(style=style)
    for module, (a, b) in pairs.items():  # the references' fusion: W += 1.0 * B @ A
        fused.get_submodule(module).weight += b @ a
    names = ck.load_lora(base, sd)
    assert names == sorted(pairs) and len(names) == 40
    g = torch.Generator().manual_seed(1)
    latents, text = torch.randn(1, 48, 3, 4, 6, generator=g), torch.randn(1, 5, TINY_TEXT_DIM, generator=g)
    timestep = torch.cat([torch.zeros(1, 6), torch.full((1, 12), 700.0)], dim=1)
    got = base(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    want = fused(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    plain = tiny_branch_transformer(seed=2)(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                                            return_dict=False)[0]  # fmt: skip
    assert (want - plain).abs().max() > 1e-2  # the LoRA matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(branched_forward(base, None, latents, timestep, text), got)  # our forward sees the adapter


def test_load_lora_errors(tmp_path):
    sd, _ = diffsynth_lora(num_blocks=1)
    bad = dict(sd)
    bad["pipe.dit.blocks.9.self_attn.q.lora_A.weight"] = torch.zeros(4, 48)
    bad["pipe.dit.blocks.9.self_attn.q.lora_B.weight"] = torch.zeros(48, 4)
    bad["pipe.dit.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(4, 32)
    del bad["pipe.dit.blocks.0.cross_attn.v.lora_B.weight"]
    with pytest.raises(ValueError) as err:
        ck.load_lora(tiny_branch_transformer(), bad)
    msg = str(err.value)
    assert "blocks.9.attn1.to_q: no such module" in msg
    assert "blocks.0.ffn.net.0.proj: lora_A (4, 32) / lora_B (64, 4), expected (4, 48) / (64, 4)" in msg
    assert "blocks.0.attn2.to_v: has only ['lora_A']" in msg
    with pytest.raises(ValueError, match=r"not LoRA A/B weights .*alpha"):
        ck.load_lora(tiny_branch_transformer(), {**sd, "pipe.dit.blocks.0.self_attn.q.alpha": torch.tensor(4.0)})
    save_file(sd, str(tmp_path / "lora.safetensors"))
    assert len(ck.load_lora(tiny_branch_transformer(), tmp_path / "lora.safetensors")) == 10


# --------------------------------------------------------------------------------------------- files


def _fake_hf_cache(root, repo_id, files: dict):
    """A Hugging Face cache entry for ``repo_id`` holding ``files`` (name -> bytes)."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_find_and_resolve_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "step_0010000_vace.safetensors").write_bytes(b"x")
    file = folder / "step_0010000_vace.safetensors"
    assert ck.find_checkpoint(file) == file and ck.resolve_checkpoint(str(file)) == file
    assert ck.find_checkpoint(folder, "step_0010000_vace.safetensors") == file
    assert ck.find_checkpoint(folder, ck.MIRAGE_BRANCH_FILE) is None
    with pytest.raises(FileNotFoundError, match="vace.safetensors"):
        ck.resolve_checkpoint(folder, ck.MIRAGE_BRANCH_FILE)
    with pytest.raises(FileNotFoundError, match="name the file"):
        ck.resolve_checkpoint(folder)
    cache = tmp_path / "hf-cache"
    assert ck.find_checkpoint(ck.SPATIA_REPO, ck.SPATIA_BRANCH_FILE, cache_dir=cache) is None
    with pytest.raises(FileNotFoundError, match="Jinjing713/Spatia"):
        ck.resolve_checkpoint(ck.SPATIA_REPO, ck.SPATIA_BRANCH_FILE, cache_dir=cache)
    _fake_hf_cache(cache, ck.SPATIA_REPO, {ck.SPATIA_BRANCH_FILE: b"v", ck.SPATIA_LORA_FILE: b"l"})
    found = ck.find_checkpoint(ck.SPATIA_REPO, ck.SPATIA_BRANCH_FILE, cache_dir=cache)
    assert found is not None and found.read_bytes() == b"v"
    assert ck.resolve_checkpoint(ck.SPATIA_REPO, ck.SPATIA_LORA_FILE, cache_dir=cache).read_bytes() == b"l"
