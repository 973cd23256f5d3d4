"""The trained side branch of Mirage and Spatia, composed with diffusers' ``WanTransformer3DModel``.

Both methods condition Wan2.2-TI2V-5B on a 96-channel context video (the memory's readout and a
score / hole mask, each a 48-channel latent) through a VACE-style branch, and on reference latents
placed before the sequence. The branch is a stack of full DiT blocks: the context is patch-embedded,
added (after ``proj_in``) to the latent tokens of the non-reference frames, run through the blocks,
and after each block ``proj_out`` gives a *hint*. The hints are computed once, before the main
blocks, and hint ``k`` is added to the non-reference tokens right after main block ``layers[k]``.

Reference frames (the first ``num_ref_frames`` latent frames) get RoPE time positions
``-R .. -1`` and height positions ``h' .. 2h' - 1`` (``h'`` = post-patch height); all other frames
take positions ``0 .. F - 1`` exactly as diffusers. The branch never sees the reference tokens.

diffusers' ``WanVACETransformer3DModel`` cannot run this: its blocks take one timestep per sample
(TI2V needs one per token) and it has no reference frames. So ``branched_forward`` is our own
forward that reuses the transformer's submodules; with no branch and no references it is exactly
``WanTransformer3DModel.forward`` (bitwise, ``tests/test_branch.py``).

LoRA adapters of the main transformer are loaded by ``mirage.checkpoints.load_lora``; checkpoints
of the branch by ``mirage.checkpoints.load_branch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import Tensor, nn

__all__ = [
    "BranchConfig",
    "BranchBlock",
    "MemoryBranch",
    "rotary_embedding",
    "branched_forward",
]


@dataclass(frozen=True)
class BranchConfig:
    """Where the branch's hints go and what it reads."""

    layers: tuple[int, ...]  # main DiT blocks after which hint k is added; strictly increasing, starts at 0
    in_channels: int = 96  # channels of the context video: 48 readout/render + 48 score latent
    scale: float = 1.0  # every hint is multiplied by this before it is added (``vace_scale``)

    def __post_init__(self):
        layers = tuple(int(i) for i in self.layers)
        if not layers or layers[0] != 0 or any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"BranchConfig.layers must be strictly increasing and start at 0, got {self.layers}")
        if self.in_channels < 1:
            raise ValueError(f"BranchConfig.in_channels must be positive, got {self.in_channels}")
        object.__setattr__(self, "layers", layers)


class BranchBlock(WanTransformerBlock):
    """A diffusers Wan block (per-token ``temb [B, L, 6, D]`` supported) plus the branch projections:
    ``proj_in`` (only in the block of DiT layer 0) and ``proj_out`` (every block)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str | None, cross_attn_norm: bool,
                 eps: float, *, has_proj_in: bool):  # fmt: skip
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.proj_in = nn.Linear(dim, dim) if has_proj_in else None
        self.proj_out = nn.Linear(dim, dim)


def _transformer_config(transformer_or_config: WanTransformer3DModel | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(transformer_or_config, WanTransformer3DModel):
        return transformer_or_config.config
    return transformer_or_config


class MemoryBranch(nn.Module):
    """The side branch: ``vace_patch_embedding`` and ``vace_blocks`` (diffusers-VACE-like state-dict
    names). A fresh branch has zero ``proj_out`` (Mirage's scratch init), so it changes nothing."""

    def __init__(self, config: BranchConfig, *, dim: int, ffn_dim: int, num_heads: int,
                 patch_size: tuple[int, int, int] = (1, 2, 2), qk_norm: str | None = "rms_norm_across_heads",
                 cross_attn_norm: bool = True, eps: float = 1e-6):  # fmt: skip
        super().__init__()
        self.config = config
        patch_size = tuple(int(p) for p in patch_size)
        self.vace_patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.vace_blocks = nn.ModuleList(
            BranchBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, has_proj_in=(layer == 0))
            for layer in config.layers
        )
        for block in self.vace_blocks:
            nn.init.zeros_(block.proj_out.weight)
            nn.init.zeros_(block.proj_out.bias)

    @property
    def device(self) -> torch.device:  # where its weights are (diffusers pipelines ask each component)
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def for_transformer(
        cls, transformer_or_config: WanTransformer3DModel | Mapping[str, Any], config: BranchConfig
    ) -> MemoryBranch:
        """A fresh branch whose blocks match ``transformer_or_config`` (a ``WanTransformer3DModel`` or
        its config: dim, heads, ffn, qk_norm, cross_attn_norm, eps, patch size). Builds on the current
        default device (``with torch.device("meta"):`` for a shape-only branch)."""
        cfg = _transformer_config(transformer_or_config)
        num_layers = int(cfg["num_layers"])
        if config.layers[-1] >= num_layers:
            raise ValueError(f"branch layers {config.layers} exceed the transformer's {num_layers} blocks")
        return cls(
            config,
            dim=int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"]),
            ffn_dim=int(cfg["ffn_dim"]),
            num_heads=int(cfg["num_attention_heads"]),
            patch_size=tuple(cfg["patch_size"]),
            qk_norm=cfg["qk_norm"],
            cross_attn_norm=bool(cfg["cross_attn_norm"]),
            eps=float(cfg["eps"]),
        )

    def forward(
        self,
        tokens: Tensor,  # [B, L, D] patch-embedded latent tokens of the non-reference frames, before any block
        context: Tensor,  # [B, in_channels, F, h, w] context video latents (F * h * w / patch <= L tokens)
        encoder_hidden_states: Tensor,  # [B, S, D] text tokens, already through the text embedder
        timestep_proj: Tensor,  # [B or 1, L, 6, D] per-token modulation of those tokens
        rotary_emb: tuple[Tensor, Tensor],  # (cos, sin), each [1, L, 1, head_dim], of those tokens
    ) -> list[Tensor]:
        """The hints, one ``[B, L, D]`` per block, in block order."""
        B, L, D = tokens.shape
        # 1. Patch-embed the context, tokens in (f, h, w) order as the latent's, zero-padded to L
        c = self.vace_patch_embedding(context)  # [B, D, F', h', w']
        c = c.flatten(2).transpose(1, 2)  # [B, F' * h' * w', D]
        if c.shape[1] > L:
            raise ValueError(
                f"the branch context has {c.shape[1]} tokens (context {tuple(context.shape)}) but the latent only {L}"
            )
        c = torch.cat([c, c.new_zeros(B, L - c.shape[1], D)], dim=1)  # [B, L, D]

        # 2. Run the blocks on the running context; every block gives a hint
        hints = []
        for block in self.vace_blocks:
            if block.proj_in is not None:
                c = block.proj_in(c) + tokens  # [B, L, D]
            c = block(c, encoder_hidden_states, timestep_proj, rotary_emb)  # [B, L, D]
            hints.append(block.proj_out(c))  # [B, L, D]
        return hints


def rotary_embedding(
    transformer: WanTransformer3DModel,
    hidden_states: Tensor,  # [B, C, F_all, H, W] (only the shape is used)
    num_ref_frames: int = 0,
) -> tuple[Tensor, Tensor]:
    """RoPE (cos, sin), each ``[1, L_all, 1, head_dim]``, in token order. Reference frames (the first
    ``num_ref_frames``) take time positions ``-R .. -1`` and height positions ``h' .. 2h' - 1``; the
    other frames are exactly ``transformer.rope`` of themselves (positions ``0 .. F - 1``)."""
    rope = transformer.rope
    p_t, p_h, p_w = rope.patch_size
    _, _, F_all, H, W = hidden_states.shape
    r, f, h, w = num_ref_frames // p_t, (F_all - num_ref_frames) // p_t, H // p_h, W // p_w
    needed = {"frames": f, "height": h, "width": w}  # positions 0 .. n - 1 of each axis
    if r:
        needed.update({"reference frames": r + 1, "height": 2 * h})  # rows 1 .. r of time, h .. 2h - 1 of height
    short = {k: v for k, v in needed.items() if v > rope.max_seq_len}
    if short:
        raise ValueError(
            f"the transformer's RoPE tables have {rope.max_seq_len} positions (rope_max_seq_len) but the latent "
            f"{tuple(hidden_states.shape)} with {num_ref_frames} reference frames needs positions {short}"
        )
    cos, sin = rope(hidden_states[:, :, num_ref_frames:])  # [1, f * h * w, 1, head_dim] each
    if r == 0:
        return cos, sin

    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    t_cos, h_cos, w_cos = rope.freqs_cos.split(split, dim=1)  # [max_seq_len, d_axis] each, row = position
    t_sin, h_sin, w_sin = rope.freqs_sin.split(split, dim=1)
    rows = torch.arange(r, 0, -1, device=t_cos.device)  # position -r + i is row r - i with the sin negated
    parts_cos = [t_cos[rows].view(r, 1, 1, -1), h_cos[h : 2 * h].view(1, h, 1, -1), w_cos[:w].view(1, 1, w, -1)]
    parts_sin = [-t_sin[rows].view(r, 1, 1, -1), h_sin[h : 2 * h].view(1, h, 1, -1), w_sin[:w].view(1, 1, w, -1)]
    ref_cos = torch.cat([p.expand(r, h, w, -1) for p in parts_cos], dim=-1)  # [r, h, w, head_dim]
    ref_sin = torch.cat([p.expand(r, h, w, -1) for p in parts_sin], dim=-1)
    ref_cos = ref_cos.reshape(1, r * h * w, 1, -1)  # [1, r * h * w, 1, head_dim] in (f, h, w) order
    ref_sin = ref_sin.reshape(1, r * h * w, 1, -1)
    return torch.cat([ref_cos, cos], dim=1), torch.cat([ref_sin, sin], dim=1)  # [1, L_all, 1, head_dim] each


def branched_forward(
    transformer: WanTransformer3DModel,
    branch: MemoryBranch | None,
    hidden_states: Tensor,  # [B, C, F_all, H, W] latents: R reference frames, then the others
    timestep: Tensor,  # [B or 1, L_all] one timestep per token, L_all = F_all * H * W / patch
    encoder_hidden_states: Tensor,  # [B, S, text_dim] text encoder output
    *,
    context: Tensor | None = None,  # [B, branch.config.in_channels, F_ctx, H, W], F_ctx <= F_all - R
    num_ref_frames: int = 0,
) -> Tensor:
    """The transformer's velocity ``[B, C, F_all, H, W]`` with the branch's hints and reference frames.

    The reference frames are kept in the output (the caller slices them off). With ``branch=None``
    (or ``context=None``) and ``num_ref_frames=0`` this is exactly ``transformer(...)``."""
    # 1. Check inputs
    B, C, F_all, H, W = hidden_states.shape
    p_t, p_h, p_w = (int(p) for p in transformer.config.patch_size)
    R = int(num_ref_frames)
    if not 0 <= R < F_all or R % p_t:
        raise ValueError(f"num_ref_frames={num_ref_frames} must be in [0, {F_all}) and a multiple of {p_t}")
    f_all, h, w = F_all // p_t, H // p_h, W // p_w
    L_all, ref_tokens = f_all * h * w, (R // p_t) * h * w
    if timestep.ndim != 2 or timestep.shape[1] != L_all or timestep.shape[0] not in (1, B):
        raise ValueError(f"timestep must be [{B} or 1, {L_all}] (one per token), got {tuple(timestep.shape)}")
    use_branch = branch is not None and context is not None
    if use_branch:
        want = (B, branch.config.in_channels)
        if context.ndim != 5 or tuple(context.shape[:2]) != want or tuple(context.shape[3:]) != (H, W):
            raise ValueError(
                f"context must be [{B}, {branch.config.in_channels}, F, {H}, {W}], got {tuple(context.shape)}"
            )
        if branch.config.layers[-1] >= len(transformer.blocks):
            num_blocks = len(transformer.blocks)
            raise ValueError(f"branch layers {branch.config.layers} exceed the transformer's {num_blocks} blocks")

    # 2. RoPE of every token (reference frames at negative time, shifted height)
    rotary_emb = rotary_embedding(transformer, hidden_states, R)  # (cos, sin), each [1, L_all, 1, head_dim]

    # 3. Patch-embed the latents
    x = transformer.patch_embedding(hidden_states)  # [B, D, f_all, h, w]
    x = x.flatten(2).transpose(1, 2).contiguous()  # [B, L_all, D] in (f, h, w) order

    # 4. Per-token time and text embeddings
    temb, timestep_proj, encoder_hidden_states, _ = transformer.condition_embedder(
        timestep.flatten(), encoder_hidden_states, None, timestep_seq_len=L_all
    )  # temb [B, L_all, D], timestep_proj [B, L_all, 6 * D], encoder_hidden_states [B, S, D]
    timestep_proj = timestep_proj.unflatten(2, (6, -1))  # [B, L_all, 6, D]

    # 5. The branch's hints, from the non-reference tokens before any block
    hints, slot = None, {}
    if use_branch:
        cos, sin = rotary_emb
        hints = branch(
            x[:, ref_tokens:], context, encoder_hidden_states, timestep_proj[:, ref_tokens:],
            (cos[:, ref_tokens:], sin[:, ref_tokens:]),
        )  # fmt: skip  # list of [B, L_all - ref_tokens, D]
        slot = {layer: k for k, layer in enumerate(branch.config.layers)}

    # 6. Main blocks; hint k is added to the non-reference tokens after block layers[k]
    for i, block in enumerate(transformer.blocks):
        x = block(x, encoder_hidden_states, timestep_proj, rotary_emb)  # [B, L_all, D]
        if i in slot:
            x = torch.cat([x[:, :ref_tokens], x[:, ref_tokens:] + hints[slot[i]] * branch.config.scale], dim=1)

    # 7. Output norm and projection on every token (reference frames included), as diffusers
    shift, scale = (transformer.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
    shift, scale = shift.squeeze(2).to(x.device), scale.squeeze(2).to(x.device)  # [B, L_all, D] each
    x = (transformer.norm_out(x.float()) * (1 + scale) + shift).type_as(x)  # [B, L_all, D]
    x = transformer.proj_out(x)  # [B, L_all, p_t * p_h * p_w * C_out]

    # 8. Unpatchify: [B, (f h w), (p_t p_h p_w c)] -> [B, c, f * p_t, h * p_h, w * p_w]
    x = x.reshape(B, f_all, h, w, p_t, p_h, p_w, -1)  # [B, f, h, w, p_t, p_h, p_w, c]
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, c, f, p_t, h, p_h, w, p_w]
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # [B, c, F_all, H, W]
