"""Tests for mirage.codecs: the Wan2.2 VAE codec (real diffusers class, tiny
random config) and the weight-free orthogonal-projection codec."""

from __future__ import annotations

import math
import socket

import accelerate
import huggingface_hub
import numpy as np
import pytest
import scipy.fft
import torch
from diffusers import AutoencoderKLWan

from mirage.codecs import (
    WAN22_MODEL_ID,
    WAN22_VAE_CONFIG,
    OfflineCodec,
    VideoCodec,
    WanVAECodec,
)
from mirage.testing import TINY_VAE_CONFIG

TINY = TINY_VAE_CONFIG  # Wan2.2 structure (residual, patch 2, 12 in/out channels, z 48, /16, /4) at a tiny width
H, W = 32, 48  # -> h, w = 2, 3


def rand_video(T: int, B: int = 1, seed: int = 0, dtype=torch.float32) -> torch.Tensor:  # -> [B, 3, T, H, W]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, T, H, W, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.fixture(scope="module")
def wan() -> WanVAECodec:
    return WanVAECodec.from_config(TINY, seed=0)


# ----------------------------------------------------------------------------- Wan2.2 config


def test_wan22_config_builds_full_size_on_meta():
    assert WAN22_MODEL_ID == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert len(WAN22_VAE_CONFIG["latents_mean"]) == 48 and len(WAN22_VAE_CONFIG["latents_std"]) == 48
    assert WAN22_VAE_CONFIG["latents_mean"][19] == 0.5109 and WAN22_VAE_CONFIG["latents_std"][39] == 1.6887
    with accelerate.init_empty_weights():
        vae = AutoencoderKLWan(**WAN22_VAE_CONFIG)
    assert all(p.device.type == "meta" for p in vae.parameters())  # no memory was allocated
    cfg = vae.config
    assert (cfg.z_dim, cfg.scale_factor_spatial, cfg.scale_factor_temporal, cfg.patch_size) == (48, 16, 4, 2)
    assert cfg.is_residual and cfg.base_dim == 160 and cfg.decoder_base_dim == 256
    assert vae.encoder.conv_in.in_channels == 12 and vae.decoder.conv_out.out_channels == 12
    assert vae.decoder.conv_in.out_channels == 256 * 4
    codec = WanVAECodec(vae)
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (48, 16, 4)
    assert codec.latent_shape(33, 704, 1280) == (48, 9, 44, 80)
    assert isinstance(codec, VideoCodec) and codec.needs_weights


# ----------------------------------------------------------------------------- Wan codec, tiny


@pytest.mark.parametrize("T", [1, 5, 9])
def test_wan_shapes(wan, T):
    B = 2 if T == 5 else 1
    x = rand_video(T, B=B)
    z = wan.encode(x)
    F = (T - 1) // 4 + 1
    assert z.shape == (B, 48, F, H // 16, W // 16) and z.dtype == torch.float32
    assert tuple(z.shape[1:]) == wan.latent_shape(T, H, W)
    y = wan.decode(z)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_wan_causal_frame_mapping(wan):
    x = rand_video(9)
    z = wan.encode(x)
    late = x.clone()
    late[:, :, 5:9] = rand_video(9, seed=1)[:, :, 5:9]  # pixel frames of latent frame 2
    z_late = wan.encode(late)
    assert torch.equal(z_late[:, :, :2], z[:, :, :2])
    assert (z_late[:, :, 2] - z[:, :, 2]).abs().max() > 1e-3
    mid = x.clone()
    mid[:, :, 1:5] = rand_video(9, seed=2)[:, :, 1:5]  # pixel frames of latent frame 1
    z_mid = wan.encode(mid)
    assert torch.equal(z_mid[:, :, 0], z[:, :, 0])
    assert (z_mid[:, :, 1] - z[:, :, 1]).abs().max() > 1e-3
    first = x.clone()
    first[:, :, 0] = -first[:, :, 0]
    assert (wan.encode(first)[:, :, 0] - z[:, :, 0]).abs().max() > 1e-3


def test_wan_normalization_matches_hand_computation(wan):
    x = rand_video(5)
    with torch.no_grad():
        raw = wan.vae.encode(x).latent_dist.mode()  # [1, 48, 2, 2, 3]
    mean = torch.tensor(WAN22_VAE_CONFIG["latents_mean"], dtype=torch.float64).view(1, 48, 1, 1, 1)
    std = torch.tensor(WAN22_VAE_CONFIG["latents_std"], dtype=torch.float64).view(1, 48, 1, 1, 1)
    expected = (raw.double() - mean) / std
    z = wan.encode(x)
    torch.testing.assert_close(z.double(), expected, rtol=1e-5, atol=1e-5)
    assert (z - raw).abs().max() > 0.1  # the normalization is not the identity


def test_wan_decode_unnormalizes(wan):
    x = rand_video(5)
    with torch.no_grad():
        raw = wan.vae.encode(x).latent_dist.mode()
        expected = wan.vae.decode(raw).sample  # [1, 3, 5, H, W]
    torch.testing.assert_close(wan.decode(wan.encode(x)), expected, rtol=1e-4, atol=1e-5)


def test_wan_casts_input_and_tiling_passthrough():
    codec = WanVAECodec.from_config(TINY, seed=0)
    x = rand_video(5)
    z32 = codec.encode(x)
    z64 = codec.encode(x.double())  # cast to the vae dtype
    assert z64.dtype == torch.float32 and torch.equal(z32, z64)
    assert codec.to("cpu", torch.float32) is codec
    assert codec.enable_tiling(tile_sample_min_height=512, tile_sample_min_width=512) is codec
    assert codec.vae.use_tiling and codec.vae.tile_sample_min_height == 512
    torch.testing.assert_close(codec.encode(x), z32)  # input smaller than a tile: same path


def test_wan_from_config_seeded_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = WanVAECodec.from_config(TINY, seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)  # global RNG not consumed
    b = WanVAECodec.from_config(TINY, seed=0)
    c = WanVAECodec.from_config(TINY, seed=1)
    pa, pb, pc = (next(m.vae.encoder.conv_in.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    with pytest.raises(ValueError, match="latents_mean has 48 entries, expected z_dim=8"):
        WanVAECodec.from_config({**TINY, "z_dim": 8})
    small = WanVAECodec.from_config({**TINY, "z_dim": 4, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4})
    assert small.encode(rand_video(1)).shape == (1, 4, 1, 2, 3)


def test_wan_from_pretrained_local_roundtrip(tmp_path, wan):
    wan.vae.save_pretrained(tmp_path / "model" / "vae")
    loaded = WanVAECodec.from_pretrained(tmp_path / "model", device="cpu")
    x = rand_video(5)
    torch.testing.assert_close(loaded.encode(x), wan.encode(x))
    direct = WanVAECodec.from_pretrained(str(tmp_path / "model" / "vae"), subfolder=None)
    assert direct.latent_channels == 48


def test_wan_from_pretrained_missing(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="weights.*no_such_model"):
        WanVAECodec.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="weights.*empty"):
        WanVAECodec.from_pretrained(empty)
    # hub id, offline, empty cache: a clear error and not a single connection attempt
    connects: list = []
    offline_before = huggingface_hub.constants.HF_HUB_OFFLINE

    def no_network(self, *args, **kwargs):
        connects.append(args)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="weights: .Wan-AI/Wan2.2-TI2V-5B-Diffusers. is not in the Hugging Face cache"):
        WanVAECodec.from_pretrained(WAN22_MODEL_ID, cache_dir=tmp_path / "hf_cache")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        WanVAECodec.from_pretrained(WAN22_MODEL_ID, cache_dir=tmp_path / "hf_cache", local_files_only=True)
    assert connects == []
    assert huggingface_hub.constants.HF_HUB_OFFLINE is offline_before  # restored after the call


# ----------------------------------------------------------------------------- bad inputs, both codecs


@pytest.mark.parametrize("kind", ["wan", "offline"])
def test_bad_inputs(kind, wan):
    codec = wan if kind == "wan" else OfflineCodec()
    with pytest.raises(ValueError, match=r"\(3, 5, 32, 48\)"):
        codec.encode(torch.zeros(3, 5, H, W))
    with pytest.raises(ValueError, match="got 4 "):
        codec.encode(torch.zeros(1, 4, 5, H, W))
    with pytest.raises(ValueError, match="got 6"):
        codec.encode(torch.zeros(1, 3, 6, H, W))
    with pytest.raises(ValueError, match="40x48"):
        codec.encode(torch.zeros(1, 3, 5, 40, W))
    with pytest.raises(ValueError, match="int64"):
        codec.encode(torch.zeros(1, 3, 5, H, W, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(1, 16, 2, 2, 3\)"):
        codec.decode(torch.zeros(1, 16, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\(48, 2, 2, 3\)"):
        codec.decode(torch.zeros(48, 2, 2, 3))
    with pytest.raises(ValueError, match="20x48"):
        codec.latent_shape(5, 20, 48)


# ----------------------------------------------------------------------------- offline codec


def reference_offline_encode(video: np.ndarray) -> tuple[np.ndarray, list]:  # [3, T, H, W] -> [48, F, h, w]
    """Slow, obviously-correct reference with scipy's DCT, looping over latent frames and patches.

    Returns the latents with channels in ``keep`` order: (colour, (fy, fx)) for fy + fx <= 7 (Y)
    and <= 2 (Cb, Cr), each block by anti-diagonal then fy ascending.
    """
    y = np.array([0.299, 0.587, 0.114])
    rows = []
    for v in (y, np.array([0, 0, 1.0]) - y, np.array([1.0, 0, 0]) - y):  # Y, Cb ~ B-Y, Cr ~ R-Y; Gram-Schmidt
        for u in rows:
            v = v - (v @ u) * u
        rows.append(v / np.linalg.norm(v))
    colour = np.stack(rows)  # [3, 3]

    def freqs(smax: int) -> list[tuple[int, int]]:
        return [(fy, s - fy) for s in range(smax + 1) for fy in range(s + 1)]

    keep = [(0, f) for f in freqs(7)] + [(1, f) for f in freqs(2)] + [(2, f) for f in freqs(2)]
    _, T, Hh, Ww = video.shape
    F = (T - 1) // 4 + 1
    out = np.zeros((48, F, Hh // 16, Ww // 16))
    for k in range(F):
        frames = [0] if k == 0 else list(range(4 * k - 3, 4 * k + 1))
        ycc = np.einsum("ij,jhw->ihw", colour, video[:, frames].mean(axis=1))  # [3, H, W]
        for i in range(Hh // 16):
            for j in range(Ww // 16):
                patch = ycc[:, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16]  # [3, 16, 16]
                coeffs = scipy.fft.dctn(patch, axes=(1, 2), norm="ortho")  # [3, fy, fx]
                out[:, k, i, j] = [coeffs[c][f] for c, f in keep]
    return out / 16, keep


def test_offline_matches_slow_reference():
    codec = OfflineCodec()
    x = rand_video(9, dtype=torch.float64)
    z = codec.encode(x)[0].numpy()  # [48, 3, 2, 3]
    ref, keep = reference_offline_encode(x[0].numpy())
    order = [(c, (fy, fx)) for c, fy, fx in codec.channels]  # the codec's channel layout
    assert sorted(order) == sorted(keep)
    np.testing.assert_allclose(z, ref[[keep.index(key) for key in order]], atol=1e-12)
    # JPEG zigzag inside each colour block: Y first, then Cb, then Cr
    zigzag10 = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
    assert codec.channels[:10] == [(0, fy, fx) for fy, fx in zigzag10]
    assert codec.channels[36:42] == [(1, fy, fx) for fy, fx in zigzag10[:6]]
    assert codec.channels[42:] == [(2, fy, fx) for fy, fx in zigzag10[:6]]


@pytest.mark.parametrize("T", [1, 5, 9])
def test_offline_shapes(T):
    codec = OfflineCodec()
    assert isinstance(codec, VideoCodec) and not codec.needs_weights
    x = rand_video(T, B=2)
    z = codec.encode(x)
    assert z.shape == (2, 48, (T - 1) // 4 + 1, 2, 3) and z.dtype == torch.float32
    assert tuple(z.shape[1:]) == codec.latent_shape(T, H, W)
    assert codec.decode(z).shape == x.shape
    assert codec.latent_shape(33, 704, 1280) == (48, 9, 44, 80)


def test_offline_basis_orthonormal():
    B = OfflineCodec().basis  # [48, 768]
    torch.testing.assert_close(B @ B.T, torch.eye(48, dtype=torch.float64), rtol=0, atol=1e-12)


def test_offline_is_orthogonal_projection():
    codec = OfflineCodec(clamp=False)
    x = rand_video(9, B=2, seed=3, dtype=torch.float64)
    z = codec.encode(x)
    px = codec.decode(z)
    torch.testing.assert_close(codec.encode(px), z, rtol=0, atol=1e-12)  # encode(decode(encode)) == encode
    torch.testing.assert_close(codec.decode(codec.encode(px)), px, rtol=0, atol=1e-12)  # idempotent
    zr = torch.randn_like(z)
    torch.testing.assert_close(codec.encode(codec.decode(zr)), zr, rtol=0, atol=1e-12)  # encode o decode = id
    # residual is orthogonal to the subspace, hence least squares (Pythagoras)
    other = codec.decode(zr)
    assert abs(((x - px) * other).sum().item()) < 1e-9
    torch.testing.assert_close((x**2).sum(), (px**2).sum() + ((x - px) ** 2).sum())
    for seed in range(3):
        cand = codec.decode(z + 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype))
        assert ((x - cand) ** 2).sum() > ((x - px) ** 2).sum()


def test_offline_exact_on_subspace():
    g = torch.Generator().manual_seed(4)
    B_, F, h, w = 1, 3, H // 16, W // 16  # T = 9 pixel frames
    cells = torch.rand(B_, 3, F, h, w, generator=g) * 2 - 1  # one RGB colour per patch per latent frame
    per_frame = cells[:, :, [0, 1, 1, 1, 1, 2, 2, 2, 2]]  # [B, 3, T, h, w] constant over each group
    x = per_frame.repeat_interleave(16, dim=3).repeat_interleave(16, dim=4)  # [B, 3, T, H, W]
    codec = OfflineCodec()
    torch.testing.assert_close(codec.decode(codec.encode(x)), x, rtol=0, atol=1e-5)
    # DC channel 0 is the patch mean of Y (orthonormal colour row) scaled by 1/16 * 16 = 1
    y_row = torch.tensor([0.299, 0.587, 0.114]) / torch.tensor([0.299, 0.587, 0.114]).norm()
    torch.testing.assert_close(codec.encode(x)[:, 0], torch.einsum("c,bcfhw->bfhw", y_row, cells), rtol=0, atol=1e-5)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:  # values in [-1, 1], peak-to-peak 2
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())


def test_offline_psnr_on_smooth_video():
    t = torch.linspace(0, 1, 9)[:, None, None]
    yy = torch.linspace(0, 1, 64)[None, :, None]
    xx = torch.linspace(0, 1, 96)[None, None, :]
    r = 0.6 * torch.sin(2 * math.pi * (xx + 0.3 * yy) + 0.2 * t)
    g = 0.5 * torch.cos(3 * math.pi * yy - 0.1 * t) * torch.cos(math.pi * xx)
    b = 0.4 * torch.sin(math.pi * (xx - yy)) + 0.2
    x = torch.stack([r, g + 0 * t, b + 0 * t])[None]  # [1, 3, 9, 64, 96]
    codec = OfflineCodec()
    rec = codec.decode(codec.encode(x))
    p_codec = psnr(rec, x)
    p_zero = psnr(torch.zeros_like(x), x)
    p_mean = psnr(x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x), x)
    assert p_codec > 40 and p_codec > p_mean + 25 and p_codec > p_zero + 25, (p_codec, p_mean, p_zero)


def test_offline_deterministic_dtypes_and_bound():
    x = rand_video(5, B=2, seed=5)
    a, b = OfflineCodec(), OfflineCodec()
    za = a.encode(x)
    assert torch.equal(za, b.encode(x)) and torch.equal(a.decode(za), b.decode(za))
    assert torch.equal(za, a.encode(x))
    torch.testing.assert_close(a.encode(x.double()).float(), za, rtol=0, atol=1e-6)
    zb = a.encode(x.bfloat16())
    assert zb.dtype == torch.bfloat16 and a.decode(zb).dtype == torch.bfloat16
    torch.testing.assert_close(zb.float(), za, rtol=0, atol=0.05)
    extreme = torch.sign(rand_video(9, seed=6))  # +-1 everywhere: largest inputs
    assert a.encode(extreme).abs().max() <= math.sqrt(3) + 1e-6


def test_offline_clamp():
    x = torch.ones(1, 3, 9, H, W)
    x[..., (torch.arange(W) % 16) < 8] = -1  # a +-1 step edge in every patch: Gibbs overshoot
    x = x + 0.2 * rand_video(9, seed=7).clamp(-1, 0)  # keep it in [-1, 1]
    clamped, free = OfflineCodec(), OfflineCodec(clamp=False)
    z = clamped.encode(x)
    assert free.decode(z).abs().max() > 1.1  # the projection leaves [-1, 1] ...
    out = clamped.decode(z)
    assert out.min() >= -1 and out.max() <= 1  # ... and decode clamps it
    torch.testing.assert_close(out, free.decode(z).clamp(-1, 1))
    small = 0.3 * x  # its projection stays inside [-1, 1], so clamping changes nothing
    assert free.decode(free.encode(small)).abs().max() < 1
    torch.testing.assert_close(clamped.decode(clamped.encode(small)), free.decode(free.encode(small)))
    # clamping never increases the error against a target in [-1, 1]
    assert ((out - x) ** 2).sum() <= ((free.decode(z) - x) ** 2).sum()
