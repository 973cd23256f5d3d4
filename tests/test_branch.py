"""The side branch and ``branched_forward`` on tiny real diffusers transformers (random weights)."""

from __future__ import annotations

import pytest
import torch

from mirage.branch import BranchConfig, MemoryBranch, branched_forward, rotary_embedding
from mirage.families import FAMILIES
from mirage.testing import TINY_TEXT_DIM, randomize_parameters, tiny_branch_transformer

MIRAGE_BRANCH, SPATIA_BRANCH = FAMILIES["mirage"].branch_config, FAMILIES["spatia"].branch_config

R, F, H, W = 2, 3, 4, 6  # reference frames, other frames, latent height/width (post-patch 2 x 3)
N = (H // 2) * (W // 2)  # tokens per latent frame
LAYERS = (0, 2)  # of the 4 tiny DiT layers


@pytest.fixture(scope="module")
def transformer():
    return tiny_branch_transformer(seed=0)


def make_branch(transformer, layers=LAYERS, scale=1.0, seed=1, fresh=False):
    branch = MemoryBranch.for_transformer(transformer, BranchConfig(layers, scale=scale)).eval()
    if not fresh:
        randomize_parameters(branch, seed)
    return branch


def inputs(num_ref=R, frames=F, batch=1, seed=0):
    """Latents [B, 48, R + F, H, W], per-token timesteps [B, L] (every frame its own value, refs and
    target frame 0 at 0), text [B, 5, text_dim] and a context [B, 96, F, H, W]."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 48, num_ref + frames, H, W, generator=g)
    per_frame = torch.rand(batch, num_ref + frames, generator=g) * 1000  # [B, F_all]
    per_frame[:, : num_ref + 1] = 0
    timestep = per_frame.repeat_interleave(N, dim=1)  # [B, L] in token order
    text = torch.randn(batch, 5, TINY_TEXT_DIM, generator=g)
    context = torch.randn(batch, 96, frames, H, W, generator=g)
    return latents, timestep, text, context


def test_branch_configs():
    assert MIRAGE_BRANCH.layers == tuple(range(0, 30, 2)) and len(MIRAGE_BRANCH.layers) == 15
    assert SPATIA_BRANCH.layers == (0, 4, 8, 12, 16, 20, 24, 28)
    assert MIRAGE_BRANCH.in_channels == SPATIA_BRANCH.in_channels == 96 and MIRAGE_BRANCH.scale == 1.0
    for bad in [(), (2, 4), (0, 2, 2), (0, 4, 2)]:
        with pytest.raises(ValueError, match="layers"):
            BranchConfig(bad)


def test_state_dict_names_and_fresh_init(transformer):
    branch = MemoryBranch.for_transformer(transformer, BranchConfig(LAYERS))
    keys = set(branch.state_dict())
    D = 48
    assert branch.vace_patch_embedding.weight.shape == (D, 96, 1, 2, 2)
    assert {"vace_blocks.0.proj_in.weight", "vace_blocks.0.proj_in.bias"} <= keys
    assert not any(k.startswith("vace_blocks.1.proj_in") for k in keys)
    for n in range(2):
        for name in ["attn1.to_q.weight", "attn1.to_out.0.weight", "attn1.norm_q.weight", "attn2.to_k.bias",
                     "attn2.norm_k.weight", "norm2.weight", "norm2.bias", "ffn.net.0.proj.weight", "ffn.net.2.weight",
                     "scale_shift_table", "proj_out.weight", "proj_out.bias"]:  # fmt: skip
            assert f"vace_blocks.{n}.{name}" in keys
        assert torch.count_nonzero(branch.vace_blocks[n].proj_out.weight) == 0
        assert torch.count_nonzero(branch.vace_blocks[n].proj_out.bias) == 0
    with pytest.raises(ValueError, match="exceed"):
        MemoryBranch.for_transformer(transformer, BranchConfig((0, 4)))


@torch.no_grad()
def test_no_branch_no_refs_is_diffusers_bitwise(transformer):
    latents, timestep, text, context = inputs(num_ref=0, batch=2)
    expected = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(branched_forward(transformer, None, latents, timestep, text), expected)
    branch = make_branch(transformer)
    assert torch.equal(branched_forward(transformer, branch, latents, timestep, text), expected)  # no context
    # a timestep of [1, L] broadcasts over the batch, as in diffusers
    expected1 = transformer(hidden_states=latents, timestep=timestep[:1], encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(branched_forward(transformer, None, latents, timestep[:1], text), expected1)
    assert not torch.equal(expected1, expected)  # the per-token timesteps matter


@torch.no_grad()
def test_fresh_branch_changes_nothing(transformer):
    fresh = make_branch(transformer, fresh=True)
    randomize_parameters(fresh, seed=3)
    for block in fresh.vace_blocks:  # everything random except the zero proj_out of a fresh branch
        block.proj_out.weight.zero_()
        block.proj_out.bias.zero_()
    latents, timestep, text, context = inputs(num_ref=0)
    expected = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(branched_forward(transformer, fresh, latents, timestep, text, context=context), expected)
    latents, timestep, text, context = inputs()
    plain = branched_forward(transformer, None, latents, timestep, text, num_ref_frames=R)
    assert torch.equal(branched_forward(transformer, fresh, latents, timestep, text, context=context, num_ref_frames=R), plain)
    # a trained branch does change the output
    trained = make_branch(transformer)
    out = branched_forward(transformer, trained, latents, timestep, text, context=context, num_ref_frames=R)
    assert (out - plain).abs().max() > 1e-2


@torch.no_grad()
def test_hints_added_after_listed_layers_to_non_reference_tokens_only(transformer):
    scale = 0.5
    branch = make_branch(transformer, scale=scale)
    latents, timestep, text, context = inputs()
    ref_tokens = R * N
    block_in, block_out, hints = {}, {}, []
    handles = [branch.register_forward_hook(lambda m, a, out: hints.extend(out))]
    for i, block in enumerate(transformer.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: block_in.__setitem__(i, a[0].clone())))
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: block_out.__setitem__(i, out.clone())))
    n_layers = len(transformer.blocks)
    handles.append(transformer.norm_out.register_forward_pre_hook(lambda m, a: block_in.__setitem__(n_layers, a[0])))
    try:
        branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=R)
    finally:
        for h in handles:
            h.remove()
    assert len(hints) == len(LAYERS) and all(h.shape == (1, F * N, 48) for h in hints)
    assert all(h.abs().max() > 1e-2 for h in hints)
    for i in range(n_layers):
        after, before = block_in[i + 1], block_out[i]  # what the next block gets vs what block i gave
        if i in LAYERS:
            torch.testing.assert_close(after[:, ref_tokens:] - before[:, ref_tokens:], hints[LAYERS.index(i)] * scale,
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            assert torch.equal(after[:, :ref_tokens], before[:, :ref_tokens])  # references get no hint
        else:
            assert torch.equal(after, before), f"block {i} got a hint"


@torch.no_grad()
def test_branch_sees_non_reference_tokens_with_their_timesteps(transformer):
    branch = make_branch(transformer)
    latents, timestep, text, context = inputs()
    ref_tokens = R * N
    seen = {}
    handle = branch.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    try:
        branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=R)
    finally:
        handle.remove()
    tokens, ctx, text_tokens, temb, (cos, sin) = seen["args"]
    embedded = transformer.patch_embedding(latents).flatten(2).transpose(1, 2)  # [1, L_all, D]
    assert torch.equal(tokens, embedded[:, ref_tokens:]) and torch.equal(ctx, context)
    # the modulation of the non-reference tokens, from their own per-token timesteps only
    _, proj, text_emb, _ = transformer.condition_embedder(timestep[:, ref_tokens:].flatten(), text, None,
                                                          timestep_seq_len=F * N)  # fmt: skip
    assert torch.equal(temb, proj.unflatten(2, (6, -1))) and torch.equal(text_tokens, text_emb)
    full_cos, full_sin = rotary_embedding(transformer, latents, R)
    assert torch.equal(cos, full_cos[:, ref_tokens:]) and torch.equal(sin, full_sin[:, ref_tokens:])


def expected_rope(transformer, num_ref, frames, h, w):
    """cos, sin [L, head_dim] from the RoPE definition: axis dims (t, h, w), theta_k = 10000^(-2k/d),
    adjacent pairs; references at time -R .. -1 and height h .. 2h - 1, the rest at 0 .. F - 1."""
    rope = transformer.rope
    rows = []
    for f in range(num_ref + frames):
        for y in range(h):
            for x in range(w):
                t_pos, y_pos = f - num_ref, (y + h if f < num_ref else y)
                rows.append((t_pos, y_pos, x))
    pos = torch.tensor(rows, dtype=torch.float64)  # [L, 3]
    angles = []
    for axis, d in enumerate([rope.t_dim, rope.h_dim, rope.w_dim]):
        theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d / 2]
        angles.append((pos[:, axis : axis + 1] * theta).repeat_interleave(2, dim=1))  # [L, d]
    angle = torch.cat(angles, dim=1)  # [L, head_dim]
    return angle.cos(), angle.sin()


@torch.no_grad()
def test_reference_rope_positions(transformer):
    branch = make_branch(transformer)
    latents, timestep, text, context = inputs()
    got = {}
    hooks = [transformer.blocks[0].attn1.register_forward_pre_hook(lambda m, a: got.update(main=a[3])),
             branch.vace_blocks[0].attn1.register_forward_pre_hook(lambda m, a: got.update(branch=a[3]))]  # fmt: skip
    try:
        branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=R)
    finally:
        for h in hooks:
            h.remove()
    cos, sin = expected_rope(transformer, R, F, H // 2, W // 2)  # [L_all, head_dim]
    main_cos, main_sin = got["main"]  # [1, L_all, 1, head_dim]
    torch.testing.assert_close(main_cos[0, :, 0].double(), cos, atol=2e-6, rtol=0)
    torch.testing.assert_close(main_sin[0, :, 0].double(), sin, atol=2e-6, rtol=0)
    branch_cos, branch_sin = got["branch"]
    torch.testing.assert_close(branch_cos[0, :, 0].double(), cos[R * N :], atol=2e-6, rtol=0)
    torch.testing.assert_close(branch_sin[0, :, 0].double(), sin[R * N :], atol=2e-6, rtol=0)
    # without references the positions are diffusers' own
    plain = rotary_embedding(transformer, latents)
    assert all(torch.equal(a, b) for a, b in zip(plain, transformer.rope(latents)))


def test_rope_tables_too_short():
    small = tiny_branch_transformer(seed=0, rope_max_seq_len=3)  # post-patch height 2: refs need rows 2, 3
    latents, timestep, text, _ = inputs()
    with pytest.raises(ValueError, match=r"rope_max_seq_len.*'height': 4"):
        branched_forward(small, None, latents, timestep, text, num_ref_frames=R)
    branched_forward(small, None, latents[:, :, R:], timestep[:, R * N :], text)  # no refs: 2 rows suffice


@torch.no_grad()
def test_branch_hints_follow_the_reference_recipe(transformer):
    """c = patch(context) zero-padded to L; block 0: c = proj_in(c) + tokens; every block k:
    c = block(c), hint_k = proj_out(c). A context shorter than the latent is padded with zero tokens."""
    branch = make_branch(transformer)
    D, L = 48, F * N
    g = torch.Generator().manual_seed(5)
    tokens, text = torch.randn(1, L, D, generator=g), torch.randn(1, 7, D, generator=g)
    temb = torch.randn(1, L, 6, D, generator=g)
    rope = rotary_embedding(transformer, torch.zeros(1, 48, F, H, W))
    context = torch.randn(1, 96, F - 1, H, W, generator=g)  # one frame short
    hints = branch(tokens, context, text, temb, rope)
    c = branch.vace_patch_embedding(context).flatten(2).transpose(1, 2)  # [1, (F - 1) * N, D]
    c = torch.cat([c, torch.zeros(1, N, D)], dim=1)
    c = branch.vace_blocks[0].proj_in(c) + tokens
    for k, block in enumerate(branch.vace_blocks):
        c = block(c, text, temb, rope)
        torch.testing.assert_close(hints[k], block.proj_out(c), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"context has 24 tokens .* only 18"):
        branch(tokens, torch.randn(1, 96, F + 1, H, W), text, temb, rope)


@torch.no_grad()
def test_batch_is_per_sample(transformer):
    branch = make_branch(transformer)
    latents, timestep, text, context = inputs(batch=2)
    both = branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=R)
    for b in range(2):
        one = branched_forward(transformer, branch, latents[b : b + 1], timestep[b : b + 1], text[b : b + 1],
                               context=context[b : b + 1], num_ref_frames=R)  # fmt: skip
        torch.testing.assert_close(both[b : b + 1], one, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_branch(transformer):
    branch = make_branch(transformer, fresh=True)  # zero proj_out: still trainable
    latents, timestep, text, context = inputs()
    out = branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=R)
    out[:, :, R:].square().mean().backward()
    assert branch.vace_blocks[1].proj_out.weight.grad.abs().max() > 0
    assert branch.vace_patch_embedding.weight.grad is not None
    transformer.zero_grad(set_to_none=True)


def test_input_errors(transformer):
    branch = make_branch(transformer)
    latents, timestep, text, context = inputs()
    with pytest.raises(ValueError, match=r"timestep must be \[1 or 1, 30\]"):
        branched_forward(transformer, branch, latents, timestep[:, :-1], text, num_ref_frames=R)
    with pytest.raises(ValueError, match=r"context must be \[1, 96, F, 4, 6\], got \(1, 48, 3, 4, 6\)"):
        branched_forward(transformer, branch, latents, timestep, text, context=context[:, :48], num_ref_frames=R)
    with pytest.raises(ValueError, match="num_ref_frames=5"):
        branched_forward(transformer, branch, latents, timestep, text, num_ref_frames=5)
    deep = MemoryBranch(BranchConfig((0, 7)), dim=48, ffn_dim=64, num_heads=2)  # built for a deeper transformer
    with pytest.raises(ValueError, match=r"\(0, 7\) exceed the transformer's 4 blocks"):
        branched_forward(transformer, deep, latents, timestep, text, context=context, num_ref_frames=R)
