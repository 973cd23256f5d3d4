"""Fewer passes over memory in the Wan transformer block: our option, off by default
(``SpeedSettings(fused=True)``), measured by ``benchmarks/speed.py``.

diffusers' ``WanTransformerBlock`` spends about 24 ms of a 170 ms compiled forward (one chunk, H100)
in element-wise kernels that read and write whole activations. Two of them are folded away here,
each computing the same function:

* **RoPE in one pass.** ``WanAttnProcessor`` writes the rotated pairs by two strided slice assignments
  into an empty tensor; ``OnePassRopeProcessor`` stacks them (the same values, bit for bit in eager),
  which the compiler writes as one contiguous store fused with the q/k RMS norm.
* **GELU in the product's epilogue.** The feed-forward's first product (3072 -> 14336) and its tanh
  GELU become one cuBLASLt call (``torch._addmm_activation``, GELU epilogue): the 227 MB activation
  is written once instead of written, read and written again. The activation is computed on the
  float32 accumulator before rounding to bf16, so it differs from diffusers' (rounded, then GELU) by
  bf16 rounding. On the CPU it is the two ops. A wrapped projection (a LoRA adapter, FP8 weights)
  keeps the two ops too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["GeluInEpilogue", "OnePassRopeProcessor", "fuse_blocks", "linear_gelu_tanh"]


@torch.library.custom_op("mirage::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias, approximate="tanh")``; on CUDA one cuBLASLt product with its GELU
    epilogue (opaque to the compiler, which would split it again)."""
    if not x.is_cuda:
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)  # [N, out]
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class GeluInEpilogue(nn.Module):
    """diffusers' ``GELU(approximate="tanh")`` (``FeedForward.net[0]``) with the activation in the
    product's epilogue. Same parameter (``proj``) and state-dict keys. A quantized weight (a tensor
    subclass, as torchao's FP8) keeps the two ops: quantize first, then fuse (``speed.apply`` does),
    since that is told here, where the weight is real (under torch.compile or torch.export it is a fake
    tensor, and the subclass is not seen). An adapter put around ``proj`` later, a hook on it or a
    forward put in its place keep the two ops too (``_bare_linear``)."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj
        self.epilogue = proj.bias is not None and not is_traceable_wrapper_subclass(proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.epilogue and _bare_linear(self.proj)):
            return F.gelu(self.proj(x), approximate="tanh")
        return linear_gelu_tanh(x, self.proj.weight, self.proj.bias)

    def extra_repr(self) -> str:
        return f"epilogue={self.epilogue}"


def _bare_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose forward is its own: no adapter around it, no hook on it, no forward put in
    its place (diffusers' hooks, as layerwise casting and group offloading, and accelerate's do that)."""
    return (type(module) is nn.Linear and "forward" not in module.__dict__
            and not module._forward_hooks and not module._forward_pre_hooks)  # fmt: skip


class OnePassRopeProcessor:
    """diffusers' ``WanAttnProcessor`` (text context; TI2V has no image context), with RoPE's rotated
    pairs stacked instead of assigned through two strided slices."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):  # fmt: skip
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            raise NotImplementedError("OnePassRopeProcessor has no image context (add_k_proj): keep WanAttnProcessor there")
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)  # [B, S, H*D]
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))  # [B, S, H, D]
        if rotary_emb is not None:
            query, key = (_rope(t, *rotary_emb) for t in (query, key))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend,
                                    parallel_config=self._parallel_config if encoder_hidden_states is None else None)  # fmt: skip
        out = out.flatten(2, 3).type_as(query)  # [B, S, H*D]
        return attn.to_out[1](attn.to_out[0](out))


def _rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x [B, S, H, D] by the angles whose cos and sin are in
    freqs_* [1, S, 1, D] (each value repeated for the pair), as diffusers' Wan RoPE."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, H, D/2] each
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]  # [1, S, 1, D/2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)  # [B, S, H, D]


def fuse_blocks(blocks: list[nn.Module]) -> int:
    """Give each ``WanTransformerBlock`` in ``blocks`` the one-pass RoPE and the GELU epilogue, in place
    (blocks of another kind, or with an image context, are left as they are); returns how many."""
    from diffusers.models.activations import GELU
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    done = 0
    for block in blocks:
        if type(block).__name__ != "WanTransformerBlock" or block.attn1.add_k_proj is not None or block.attn2.add_k_proj is not None:
            continue
        for attn in (block.attn1, block.attn2):
            if type(attn.processor) is WanAttnProcessor:  # (not a processor someone else put there, nor a subclass)
                kept = attn.processor
                attn.set_processor(OnePassRopeProcessor())
                attn.processor._attention_backend, attn.processor._parallel_config = kept._attention_backend, kept._parallel_config
        act = block.ffn.net[0]
        if isinstance(act, GELU) and act.approximate == "tanh":
            block.ffn.net[0] = GeluInEpilogue(act.proj)
        done += 1
    return done
