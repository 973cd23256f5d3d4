"""Fewer passes over memory in the Wan transformer block and the Wan VAE: our options, off by default
(``SpeedSettings(fused=True)``, ``SpeedSettings(vae_fused=True)``), measured by ``benchmarks/speed.py``.

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

In the VAE, about half of a decode's GPU time went to element-wise kernels and copies (H100, bf16).
Two of them are folded away:

* **RMS norms in one kernel.** Each ``WanRMS_norm`` runs in eager as seven passes over a whole
  activation (a float32 copy, the norm, the division, a cast back, the scale, the weight, the bias);
  ``OneKernelRMSNorm`` compiles it into one kernel (a reduction over the channels, then one write),
  rounding once at the end instead of after each step.
* **Spatial padding in the convolution.** ``WanCausalConv3d`` zero-pads its input with ``F.pad`` (a
  strided copy of the whole activation) before an unpadded convolution; ``PadInConvCausalConv3d``
  pads only the time axis that way (where the frame cache does not fill it) and hands the spatial
  padding to the convolution, which reads zeros there without a copy. The same function; the sums
  may be taken in another order.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["GeluInEpilogue", "OneKernelRMSNorm", "OnePassRopeProcessor", "fuse_blocks", "fuse_vae", "linear_gelu_tanh"]
# and PadInConvCausalConv3d, made on first use (it subclasses diffusers' class; importing diffusers is slow)


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
    return type(module) is nn.Linear and _own_forward(module)


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


def _rms_norm_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [B, C, N] normalized over C (``F.normalize``), times weight [C, 1], plus bias [C, 1]; in x's dtype."""
    wide = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 input
    y = F.normalize(x.to(wide), dim=1) * weight.to(wide)  # [B, C, N]
    return (y if bias is None else y + bias.to(wide)).to(x.dtype)


@functools.cache
def _compiled_rms_norm_channels():  # compiled when first used (importing this module loads no compiler)
    return torch.compile(_rms_norm_channels, dynamic=True)  # a graph per dtype, view-ness, bias; past dynamo's limit, eager


class OneKernelRMSNorm(nn.Module):
    """diffusers' ``WanRMS_norm`` (channels first) in one compiled kernel. Same parameters (``gamma``,
    ``bias``) and state-dict keys; the output differs by the rounding of x's dtype (none in float32
    beyond the order of two products)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        if not norm.channel_first:
            raise ValueError("OneKernelRMSNorm normalizes over the channels (dim 1): channel_first=True only")
        self.gamma = norm.gamma  # [C, 1, 1(, 1)]
        self.bias = norm.bias  # [C, 1, 1(, 1)] or 0.0
        self.scale = norm.scale  # sqrt(C)
        self.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, *spatial]
        B, C = x.shape[:2]
        weight = self.gamma.reshape(C, 1) * self.scale  # [C, 1]
        bias = self.bias.reshape(C, 1) if isinstance(self.bias, torch.Tensor) else None  # [C, 1]
        return _compiled_rms_norm_channels()(x.reshape(B, C, -1), weight, bias).view(x.shape)


def _pad_in_conv_class():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    class PadInConvCausalConv3d(WanCausalConv3d):
        """diffusers' ``WanCausalConv3d`` with its spatial zero padding done by the convolution itself
        (a subclass: diffusers counts its causal convolutions to size the frame cache)."""

        @classmethod
        def from_conv(cls, conv: nn.Module) -> "PadInConvCausalConv3d":
            pw, _, ph, _, pt2, _ = conv._padding  # (w, w, h, h, 2t, 0)
            with torch.device("meta"):
                new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, (pt2 // 2, ph, pw))
            new.weight, new.bias = conv.weight, conv.bias
            new.train(conv.training)
            if new._padding != conv._padding or (new.dilation, new.groups) != (conv.dilation, conv.groups):
                raise ValueError(f"cannot rebuild {conv}: padding {conv._padding}, dilation {conv.dilation}, groups {conv.groups}")
            return new

        def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:  # [B, C, T, H, W]
            time_pad = self._padding[4]  # frames before the first (causal), filled by the cache where it has them
            if cache_x is not None and time_pad > 0:
                x = torch.cat([cache_x.to(x.device), x], dim=2)
                time_pad -= cache_x.shape[2]
            if time_pad != 0:
                x = F.pad(x, (0, 0, 0, 0, time_pad, 0))
            return F.conv3d(x, self.weight, self.bias, self.stride, (0, self._padding[2], self._padding[0]), self.dilation, self.groups)

    PadInConvCausalConv3d.__qualname__ = "PadInConvCausalConv3d"  # pickled by name: mirage.fused.PadInConvCausalConv3d
    return PadInConvCausalConv3d


def __getattr__(name: str):  # PadInConvCausalConv3d subclasses diffusers' class: defined when first asked for
    if name == "PadInConvCausalConv3d":
        globals()[name] = _pad_in_conv_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _own_forward(module: nn.Module) -> bool:
    """No hook on the module and no forward put in its place (diffusers' layerwise casting and group
    offloading, accelerate's hooks): a module that has them is kept, since a new one would drop them."""
    return "forward" not in module.__dict__ and not module._forward_hooks and not module._forward_pre_hooks


def fuse_vae(vae: nn.Module, norms: bool = True, convolutions: bool = True) -> dict[str, int]:
    """Replace, in place, every channels-first ``WanRMS_norm`` of ``vae`` (an ``AutoencoderKLWan``) by
    ``OneKernelRMSNorm`` and every zero-padded ``WanCausalConv3d`` by ``PadInConvCausalConv3d`` (either
    alone with ``norms`` or ``convolutions`` False), except modules with hooks or a replaced forward
    (fuse before adding those); returns how many of each."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    conv_class = __getattr__("PadInConvCausalConv3d")
    done = {"norms": 0, "convolutions": 0}
    for parent in list(vae.modules()):
        for name, child in list(parent.named_children()):
            if not _own_forward(child):
                continue
            if norms and type(child).__name__ == "WanRMS_norm" and child.channel_first:
                setattr(parent, name, OneKernelRMSNorm(child))
                done["norms"] += 1
            elif convolutions and type(child) is WanCausalConv3d and child.padding_mode == "zeros":
                setattr(parent, name, conv_class.from_conv(child))
                done["convolutions"] += 1
    return done
