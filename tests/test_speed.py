"""Speed settings (mirage.speed) on the tiny transformer on the CPU: every setting computes the same
function as eager, the VAE setting casts the VAE. Timings are benchmarks/speed.py's, on the GPU; the
ahead-of-time cycle is tests/test_aot.py."""

from __future__ import annotations

import pickle

import pytest
import torch

from mirage import speed
from mirage.testing import TINY_TRANSFORMER_CONFIG, subclass_weight


def _inputs(seed: int = 0, frames: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, TINY_TRANSFORMER_CONFIG["in_channels"], frames, 4, 6, generator=g),
                timestep=torch.full((1, frames * 2 * 3), 500.0),
                encoder_hidden_states=torch.randn(1, 8, TINY_TRANSFORMER_CONFIG["text_dim"], generator=g),
                return_dict=False)  # fmt: skip


def _model():
    return speed.random_transformer(TINY_TRANSFORMER_CONFIG, "cpu", torch.float32)


def test_defaults_change_nothing_and_the_choice_follows_the_device():
    model, x = _model(), _inputs()
    with torch.no_grad():
        before = model(**x)[0]
        assert torch.equal(speed.apply(model, speed.SpeedSettings())(**x)[0], before)
    assert speed.choose("cuda", zero_gpu=False) == speed.SpeedSettings(compile="regional", fused=True, vae_dtype="bfloat16",
                                                                       vae_fused=True)  # fmt: skip
    assert speed.choose("cuda", zero_gpu=True) == speed.SpeedSettings(vae_dtype="bfloat16")  # no torch.compile on ZeroGPU
    assert speed.choose("cpu", zero_gpu=False) == speed.SpeedSettings()
    assert speed.describe(speed.SpeedSettings(compile="regional", attention="native")) == "regional compilation, attention native"
    assert speed.describe(speed.choose("cuda", zero_gpu=True)) == "eager, VAE in bfloat16"


def test_the_vae_setting_casts_the_vae_and_only_when_asked():
    """The VAE runs in the setting's dtype (encode and decode follow its weights); none given: as loaded."""
    from mirage.codecs import WanVAECodec
    from mirage.testing import TINY_VAE_CONFIG

    model, codec = _model(), WanVAECodec.from_config(TINY_VAE_CONFIG)
    speed.apply(model, speed.SpeedSettings(), vae=codec.vae)
    assert codec.dtype == torch.float32
    speed.apply(model, speed.SpeedSettings(vae_dtype="bfloat16"), vae=codec.vae)
    assert codec.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in codec.vae.parameters())
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1  # [B, 3, T, H, W]
    latents = codec.encode(video)  # [1, C, F, h, w] float32, normalised
    assert latents.dtype == torch.float32 and codec.decode(latents).dtype == torch.bfloat16


def test_an_attention_backend_is_the_models_own_not_the_processs():
    """diffusers' ``set_attention_backend`` also sets the process's default; ``speed.apply`` keeps that
    default, so another model (the pixel run's, a test's reference) computes as before."""
    other, x = _model(), _inputs()
    with torch.no_grad():
        before = other(**x)[0]
        speed.apply(_model(), speed.SpeedSettings(attention="_native_math"))
        assert torch.equal(other(**x)[0], before)


def test_every_builtin_attention_backend_here_computes_the_same():
    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
        for backend in speed.available_attention_backends("cpu"):
            out = speed.apply(model, speed.SpeedSettings(attention=backend))(**x)[0]
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="built into PyTorch"):
        speed.apply(model, speed.SpeedSettings(attention="flash_hub"))  # a kernel download: refused


def test_the_fused_blocks_compute_diffusers_function_and_keep_its_weights():
    """One-pass RoPE and the GELU epilogue (on the CPU: the two ops) give diffusers' output bit for bit
    in eager float32, with the same state dict; a wrapped projection (an adapter) keeps working."""
    from mirage.fused import GeluInEpilogue, OnePassRopeProcessor, linear_gelu_tanh

    model, x = _model(), _inputs(frames=5)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(**x)[0]
        speed.apply(model, speed.SpeedSettings(fused=True))
        assert all(isinstance(b.attn1.processor, OnePassRopeProcessor) and isinstance(b.ffn.net[0], GeluInEpilogue)
                   for b in model.blocks)  # fmt: skip
        assert list(model.state_dict()) == keys
        assert torch.equal(model(**x)[0], ref)
        # the custom op's own function, and its shape under the compiler's fake tensors
        a, w, b = torch.randn(2, 7, 12), torch.randn(20, 12), torch.randn(20)
        assert torch.equal(linear_gelu_tanh(a, w, b), torch.nn.functional.gelu(a @ w.T + b, approximate="tanh"))
        torch.library.opcheck(linear_gelu_tanh, (a, w, b))
        # an adapter around the projection (what PEFT does): the two ops through it
        act = model.blocks[0].ffn.net[0]
        act.proj = torch.nn.Sequential(act.proj)
        assert torch.equal(model(**x)[0], ref)
    assert speed.describe(speed.SpeedSettings(fused=True)) == "eager, fused RoPE and GELU (ours)"


def test_the_fused_blocks_compile_whole():
    """Regional compilation with ``fullgraph=True`` takes the fused blocks (no graph break at the custom
    op or the projection check) and computes the same function; the product with its GELU stays one op
    there and in the block's export (what an AoT package is compiled from)."""
    from torch._inductor.utils import run_and_get_code

    from mirage import aot

    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
        speed.apply(model, speed.SpeedSettings(compile="regional", fused=True))
        (out, *_), code = run_and_get_code(model, **x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert "linear_gelu_tanh" in "".join(code)
        eager = speed.apply(_model(), speed.SpeedSettings(fused=True))
        exported = torch.export.export(eager.blocks[0], *aot._block_call(eager, x))
    assert [str(n.target) for n in exported.graph.nodes].count("mirage.linear_gelu_tanh.default") == 1


def test_a_quantized_weight_keeps_the_two_ops(monkeypatch):
    """A weight that is a tensor subclass when the blocks are fused (as torchao's FP8 weights are: apply
    quantizes first) never reaches the custom op: the choice is made once, on the real weight."""
    from torch.testing._internal.two_tensor import TwoTensor

    from mirage import fused

    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
        for block in model.blocks:
            subclass_weight(block.ffn.net[0].proj)
        monkeypatch.setattr(fused, "linear_gelu_tanh", lambda *a: pytest.fail("the custom op got a subclass weight"))
        speed.apply(model, speed.SpeedSettings(fused=True))
        assert not any(b.ffn.net[0].epilogue for b in model.blocks)
        out = model(**x)[0]
    torch.testing.assert_close(out.a if isinstance(out, TwoTensor) else out, ref)


def test_fp8_quantizes_before_fusing(monkeypatch):
    """``speed.apply`` quantizes the blocks' linear layers before fusing, so the FP8 product keeps its
    own kernel (the GELU epilogue is chosen on the real, quantized weight). torchao's quantization is
    stood in for by one that makes the weights a tensor subclass, as torchao's Float8 weights are."""
    from torch.testing._internal.two_tensor import TwoTensor

    def quantize_fp8(blocks):
        for block in blocks:
            for m in block.modules():
                if isinstance(m, torch.nn.Linear):
                    subclass_weight(m)

    monkeypatch.setattr(speed, "quantize_fp8", quantize_fp8)
    model = speed.apply(_model(), speed.SpeedSettings(fp8=True, fused=True))
    assert all(isinstance(b.ffn.net[0].proj.weight, TwoTensor) and not b.ffn.net[0].epilogue for b in model.blocks)


def test_a_projection_with_a_hook_or_a_replaced_forward_keeps_the_two_ops():
    """The epilogue calls the product itself, so it is used only on a bare ``nn.Linear``: a forward hook
    on the projection still runs, and diffusers' layerwise casting (weights stored in float8, cast in
    a forward it puts in place) computes what it computes on diffusers' blocks."""
    x = _inputs()
    with torch.no_grad():
        model = speed.apply(_model(), speed.SpeedSettings(fused=True))
        seen = []
        handle = model.blocks[0].ffn.net[0].proj.register_forward_hook(lambda *a: seen.append(1))
        model(**x)
        handle.remove()
        assert seen == [1]
        plain, fused_model = _model(), speed.apply(_model(), speed.SpeedSettings(fused=True))
        for m in (plain, fused_model):
            m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        assert torch.equal(fused_model(**x)[0], plain(**x)[0])


def test_fusing_keeps_foreign_processors_and_the_parallel_config_and_refuses_an_image_context():
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

    from mirage.fused import OnePassRopeProcessor, fuse_blocks

    model = _model()
    class Custom(WanAttnProcessor):  # (it may compute something else: left as it is)
        pass

    model.blocks[0].attn2.set_processor(Custom())
    custom = model.blocks[0].attn2.processor
    model.blocks[1].attn1.processor._parallel_config = "a parallel config"
    assert fuse_blocks(list(model.blocks)) == len(model.blocks)
    assert model.blocks[0].attn2.processor is custom and isinstance(model.blocks[0].attn1.processor, OnePassRopeProcessor)
    assert model.blocks[1].attn1.processor._parallel_config == "a parallel config"
    attn = WanAttention(dim=8, heads=2, dim_head=4, added_kv_proj_dim=8, processor=OnePassRopeProcessor())
    with pytest.raises(NotImplementedError, match="image context"):
        attn(torch.randn(1, 3, 8), torch.randn(1, 5, 8))


def test_one_pass_rope_is_diffusers_rope_with_the_attention_backend_kept():
    """The RoPE rotation against diffusers' processor on its own (a wrong pair order or sign fails)."""
    from mirage.fused import OnePassRopeProcessor

    model = _model()
    speed.apply(model, speed.SpeedSettings(attention="_native_math"))
    attn = model.blocks[0].attn1
    diffusers_processor = attn.processor
    h = torch.randn(1, 6, attn.inner_dim)  # [B, S, H*D]
    angles = torch.rand(1, 6, 1, attn.inner_dim // attn.heads // 2) * 6.28  # [1, S, 1, D/2]
    rope = (angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))  # [1, S, 1, D] each
    with torch.no_grad():
        ref = diffusers_processor(attn, h, rotary_emb=rope)
        speed.apply(model, speed.SpeedSettings(fused=True))
        assert isinstance(attn.processor, OnePassRopeProcessor) and attn.processor._attention_backend == "_native_math"
        assert torch.equal(attn.processor(attn, h, rotary_emb=rope), ref)


def _wan_rms_norm(dim: int, images: bool, bias: bool, seed: int = 0):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    norm, g = WanRMS_norm(dim, images=images, bias=bias), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return norm


def _fresh_compile():
    """Forget the fused norm's compiled graphs (one shared function: dynamo compiles it 8 times, then
    runs it eager), so that what follows runs through the compiler."""
    from mirage.fused import _compiled_rms_norm_channels

    torch._dynamo.reset()
    _compiled_rms_norm_channels.cache_clear()


def test_the_one_kernel_vae_norm_is_diffusers_norm():
    """``OneKernelRMSNorm`` computes ``WanRMS_norm``, compiled, for video and image inputs, with and
    without bias, batches of one (the app's) and two, whole tensors and slices, with and without grad,
    in float32 and float64 (to their rounding) and in bf16 and fp16 (within their rounding, which it
    does once). Past dynamo's eight graphs it runs eager, still right. Same state-dict keys."""
    from mirage.fused import OneKernelRMSNorm

    g = torch.Generator().manual_seed(1)
    for images, bias, batch in ((False, False, 1), (True, True, 2), (False, True, 1)):
        norm = _wan_rms_norm(24, images, bias)
        fused = OneKernelRMSNorm(norm)
        assert fused.state_dict().keys() == norm.state_dict().keys()
        x = torch.randn((batch, 24, 5, 4) if images else (batch, 24, 3, 5, 4), generator=g) * 3  # [B, C, (T,) H, W]
        _fresh_compile()  # the eight calls below compile (dynamo's eight graphs)
        calls = [(torch.float32, 1e-6, False), (torch.float32, 1e-6, True), (torch.bfloat16, 2e-2, False), (torch.float16, 2e-3, False)]
        for dtype, tol, grad in calls if batch == 1 else calls[:3] + [(torch.float64, 1e-12, False)]:
            n, f = norm.to(dtype), fused.to(dtype)
            for inp in (x.to(dtype), x.to(dtype)[..., 1:]):
                with torch.set_grad_enabled(grad):
                    out, ref = f(inp), n(inp)
                assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
                torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # (it did compile)
    for _ in range(3):  # more variants than dynamo compiles: the rest run eager, not an error
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            torch.testing.assert_close(fused.to(dtype)(x.to(dtype)), norm.to(dtype)(x.to(dtype)), rtol=2e-2, atol=2e-2)
            x = x[..., 1:]


def test_the_pad_in_conv_causal_convolution_is_diffusers():
    """``PadInConvCausalConv3d`` computes ``WanCausalConv3d`` with no cache, a one-frame and a two-frame
    cache, for unequal paddings on each axis (a swapped axis shows), strides and a time-only kernel;
    it is still a ``WanCausalConv3d`` (diffusers counts them) and keeps the parameters."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    from mirage.fused import PadInConvCausalConv3d

    g = torch.Generator().manual_seed(0)
    for kernel, stride, padding in (((3, 3, 3), 1, (1, 2, 0)), ((3, 1, 1), 1, (1, 0, 0)), ((3, 3, 3), (1, 2, 2), (1, 1, 1)), (1, 1, 0)):
        conv = WanCausalConv3d(4, 5, kernel, stride, padding)
        fused = PadInConvCausalConv3d.from_conv(conv)
        assert isinstance(fused, WanCausalConv3d) and fused.weight is conv.weight and fused.bias is conv.bias
        x = torch.randn(2, 4, 3, 6, 7, generator=g)  # [B, C, T, H, W]
        for cache in (None, torch.randn(2, 4, 1, 6, 7, generator=g), torch.randn(2, 4, 2, 6, 7, generator=g)):
            torch.testing.assert_close(fused(x, cache), conv(x, cache), rtol=1e-5, atol=1e-5)


def test_the_fused_vae_setting_keeps_the_codec_and_its_weights():
    """``SpeedSettings(vae_fused=True)`` puts ``OneKernelRMSNorm`` in place of every norm of the VAE and
    ``PadInConvCausalConv3d`` in place of every causal convolution, encoder and decoder, keeps its state
    dict and the cache size diffusers counted, and the codec encodes and decodes as before."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    from mirage.codecs import WanVAECodec
    from mirage.testing import TINY_VAE_CONFIG, randomize_parameters

    codec = WanVAECodec.from_config(TINY_VAE_CONFIG)
    randomize_parameters(codec.vae, 0, 0.3)  # gamma away from 1, so that a lost weight shows
    _fresh_compile()  # the codec's norms run compiled (an earlier test may have spent dynamo's graphs)
    norms = sum(type(m).__name__ == "WanRMS_norm" for m in codec.vae.modules())
    convs = sum(type(m).__name__ == "WanCausalConv3d" for m in codec.vae.modules())
    keys, counts = codec.vae.state_dict().keys(), dict(codec.vae._cached_conv_counts)
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [B, 3, T, H, W]
    latents, frames = codec.encode(video), codec.decode(torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1)))
    speed.apply(_model(), speed.SpeedSettings(vae_fused=True), vae=codec.vae)
    kinds = [type(m).__name__ for m in codec.vae.modules()]
    assert norms > 0 and kinds.count("OneKernelRMSNorm") == norms and "WanRMS_norm" not in kinds
    assert convs > 0 and kinds.count("PadInConvCausalConv3d") == convs and "WanCausalConv3d" not in kinds
    assert codec.vae.state_dict().keys() == keys and counts == {
        part: sum(isinstance(m, WanCausalConv3d) for m in getattr(codec.vae, part).modules()) for part in ("encoder", "decoder")}
    torch.testing.assert_close(codec.encode(video), latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(codec.decode(torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1))), frames,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert speed.describe(speed.SpeedSettings(vae_fused=True)) == "eager, fused VAE norms and padding (ours)"
    assert not any(m.training for m in codec.vae.modules())  # as the eval() VAE it came in
    again = pickle.loads(pickle.dumps(codec.vae))  # (the convolutions' class is pickled by name)
    assert [type(m).__name__ for m in again.modules()] == kinds
    torch.testing.assert_close(WanVAECodec(again).encode(video), latents, rtol=1e-5, atol=1e-5)


def test_the_fused_vae_keeps_modules_with_hooks():
    """A norm or convolution with a hook or a replaced forward (as diffusers' layerwise casting and
    group offloading put there, or a user's hook) is kept as diffusers' module, so the hook still
    runs; the rest are fused."""
    from mirage.codecs import WanVAECodec
    from mirage.fused import fuse_vae
    from mirage.testing import TINY_VAE_CONFIG

    codec = WanVAECodec.from_config(TINY_VAE_CONFIG)
    seen = []
    codec.vae.decoder.conv_in.register_forward_pre_hook(lambda m, a: seen.append("conv"))
    codec.vae.decoder.norm_out.register_forward_hook(lambda m, a, o: seen.append("norm"))
    out_conv, out_forward = codec.vae.decoder.conv_out, codec.vae.decoder.conv_out.forward
    out_conv.forward = lambda *a, **k: seen.append("forward") or out_forward(*a, **k)  # as diffusers' hooks replace it
    z = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    ref = codec.decode(z)
    done = fuse_vae(codec.vae)
    assert [type(m).__name__ for m in (codec.vae.decoder.conv_in, codec.vae.decoder.norm_out, codec.vae.decoder.conv_out)] == [
        "WanCausalConv3d", "WanRMS_norm", "WanCausalConv3d"]  # fmt: skip
    assert done["norms"] > 0 and done["convolutions"] > 0
    seen.clear()
    torch.testing.assert_close(codec.decode(z), ref, rtol=1e-5, atol=1e-5)
    assert {"conv", "norm", "forward"} <= set(seen)

