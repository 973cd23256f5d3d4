"""Probe: one compiled WanTransformerBlock at one chunk (7,920 tokens), variants of where the time goes.

    python benchmarks/block_probe.py --out /tmp/block_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage import speed  # noqa: E402
from mirage.fused import GeluInEpilogue  # noqa: E402
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG  # noqa: E402


class Processor:
    """WanAttnProcessor's math; options: rope by stack, q/k/v made contiguous [B, H, S, D]."""

    def __init__(self, rope_stack=False, contiguous=False):
        self.rope_stack, self.contiguous = rope_stack, contiguous

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            cos, sin = rotary_emb

            def rope(x):
                x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
                c, s = cos[..., 0::2], sin[..., 1::2]
                if self.rope_stack:
                    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2).type_as(x)
                out = torch.empty_like(x)
                out[..., 0::2] = x1 * c - x2 * s
                out[..., 1::2] = x1 * s + x2 * c
                return out.type_as(x)

            q, k = rope(q), rope(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.contiguous:
            q, k, v = (t.contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def block_inputs(config, device, dtype, tokens=7920):
    g = torch.Generator(device).manual_seed(0)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    hd = config["attention_head_dim"]
    ang = torch.rand(1, tokens, 1, hd // 2, generator=g, device=device) * 6.28
    cos = torch.cos(ang).repeat_interleave(2, -1)
    sin = torch.sin(ang).repeat_interleave(2, -1)
    return (torch.randn(1, tokens, d, generator=g, device=device, dtype=dtype),
            torch.randn(1, 512, d, generator=g, device=device, dtype=dtype),
            torch.randn(1, tokens, 6, d, generator=g, device=device, dtype=dtype) * 0.1,
            (cos, sin))  # fmt: skip


def cuda_ms(fn, reps=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path)
    p.add_argument("--full", action="store_true", help="also the whole forward with the best variant")
    args = p.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    config = TI2V_5B_TRANSFORMER_CONFIG
    model = speed.random_transformer(config, dev, dtype)
    block = model.blocks[0]
    x = block_inputs(config, dev, dtype)
    rows = []
    with torch.no_grad():
        ref = block(*x)

        # attention alone, layouts
        H, D, S = 24, 128, 7920
        g = torch.Generator(dev).manual_seed(1)
        bshd = [torch.randn(1, S, H, D, generator=g, device=dev, dtype=dtype) for _ in range(3)]
        kv_txt = [torch.randn(1, 512, H, D, generator=g, device=dev, dtype=dtype) for _ in range(2)]
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for bk in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            for name, qkv in (("BSHD permuted", [t.transpose(1, 2) for t in bshd]),
                              ("BHSD contiguous", [t.transpose(1, 2).contiguous() for t in bshd])):
                try:
                    with sdpa_kernel(bk):
                        ms = cuda_ms(lambda: F.scaled_dot_product_attention(*qkv))
                    rows.append({"what": f"self-attention {bk.name} {name}", "ms": ms, "x30": ms * 30})
                except Exception as e:  # noqa: BLE001
                    rows.append({"what": f"self-attention {bk.name} {name}", "error": str(e)[:200]})
                print(json.dumps(rows[-1]), flush=True)
            try:
                q = bshd[0].transpose(1, 2)
                with sdpa_kernel(bk):
                    ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, *(t.transpose(1, 2) for t in kv_txt)))
                rows.append({"what": f"cross-attention {bk.name} BSHD permuted", "ms": ms, "x30": ms * 30})
            except Exception as e:  # noqa: BLE001
                rows.append({"what": f"cross-attention {bk.name}", "error": str(e)[:200]})
            print(json.dumps(rows[-1]), flush=True)

        # matmul floor
        a = torch.randn(S, 3072, device=dev, dtype=dtype)
        w = torch.randn(14336, 3072, device=dev, dtype=dtype)
        bias = torch.randn(14336, device=dev, dtype=dtype)
        rows.append({"what": "linear 3072->14336", "ms": cuda_ms(lambda: F.linear(a, w, bias))})
        rows.append({"what": "linear + gelu tanh (eager)", "ms": cuda_ms(lambda: F.gelu(F.linear(a, w, bias), approximate="tanh"))})
        rows.append({"what": "_addmm_activation gelu", "ms": cuda_ms(lambda: torch._addmm_activation(bias, a, w.t(), use_gelu=True))})
        e = (torch._addmm_activation(bias, a, w.t(), use_gelu=True).float() - F.gelu(F.linear(a, w, bias).float(), approximate="tanh")).abs().max()
        rows[-1]["max_abs_vs_fp32_gelu_tanh"] = float(e)
        e = (torch._addmm_activation(bias, a, w.t(), use_gelu=True).float() - F.gelu(F.linear(a, w, bias).float())).abs().max()
        rows[-1]["max_abs_vs_fp32_gelu_exact"] = float(e)
        for r in rows[-3:]:
            print(json.dumps(r), flush=True)

    def variant(name, proc=None, gelu=False, inductor=None, x=x):
        import copy
        torch._dynamo.reset()
        b = copy.deepcopy(block)
        if proc is not None:
            b.attn1.set_processor(proc)
            b.attn2.set_processor(proc)
        if gelu:
            b.ffn.net[0] = GeluInEpilogue(b.ffn.net[0].proj)
        with torch.no_grad():
            eager = b(*x)
        cfg = inductor or {}
        with torch._inductor.config.patch(cfg):
            c = torch.compile(b, fullgraph=True)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = c(*x)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            with torch.no_grad():
                ms = cuda_ms(lambda: c(*x))
        d = lambda o: float((o.float() - ref.float()).pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt())  # noqa: E731
        rows.append({"what": f"block: {name}", "first_s": first, "ms": ms, "x30": ms * 30,
                     "eager_rel_rms": d(eager), "compiled_rel_rms": d(out)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    with torch.no_grad():
        ms = cuda_ms(lambda: block(*x))
    rows.append({"what": "block: eager", "ms": ms, "x30": ms * 30})
    print(json.dumps(rows[-1]), flush=True)
    variant("compiled (diffusers)")
    variant("compiled, coordinate descent", inductor={"coordinate_descent_tuning": True})
    variant("processor as diffusers (own)", proc=Processor())
    variant("processor, contiguous BHSD", proc=Processor(contiguous=True))
    variant("processor, rope by stack", proc=Processor(rope_stack=True))
    variant("GELU epilogue (cuBLASLt)", gelu=True)
    variant("rope stack + GELU epilogue", proc=Processor(rope_stack=True), gelu=True)
    variant("rope stack + GELU epilogue + coord descent", proc=Processor(rope_stack=True), gelu=True,
            inductor={"coordinate_descent_tuning": True})
    xb = (x[0], x[1], x[2][:, :1].expand_as(x[2]), x[3])  # one temb row for every token: the upper bound of a compact temb
    variant("temb broadcast (reads one row; upper bound)", x=xb)
    variant("temb broadcast + rope stack + GELU epilogue", proc=Processor(rope_stack=True), gelu=True, x=xb)
    if args.full:
        from benchmarks.speed import inputs as model_inputs

        xm = model_inputs(config, 9, 44, 80, dev, dtype)
        with torch.no_grad():
            ref_full = model(**xm)[0]

        def whole(name, proc=None, gelu=False):
            torch._dynamo.reset()
            m = speed.random_transformer(config, dev, dtype)
            for b in m.blocks:
                if proc is not None:
                    b.attn1.set_processor(proc)
                    b.attn2.set_processor(proc)
                if gelu:
                    b.ffn.net[0] = GeluInEpilogue(b.ffn.net[0].proj)
            m.compile_repeated_blocks(fullgraph=True)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = m(**xm)[0]
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            with torch.no_grad():
                ms = cuda_ms(lambda: m(**xm), reps=10)
            rel = float((out.float() - ref_full.float()).pow(2).mean().sqrt() / ref_full.float().pow(2).mean().sqrt())
            rows.append({"what": f"forward, regional: {name}", "first_s": first, "ms": ms, "rel_rms_vs_eager": rel})
            print(json.dumps(rows[-1]), flush=True)

        whole("diffusers")
        whole("rope stack + GELU epilogue", Processor(rope_stack=True), True)
        whole("rope stack + contiguous + GELU epilogue", Processor(rope_stack=True, contiguous=True), True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
