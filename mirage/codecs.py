"""Video codecs: pixel videos ``[B, 3, T, H, W]`` in ``[-1, 1]`` <-> latents ``[B, C, F, h, w]``.

Two codecs share the small ``VideoCodec`` interface:

* ``WanVAECodec`` wraps the Wan2.2 VAE (diffusers ``AutoencoderKLWan``: 48 channels, spatial
  stride 16, temporal stride 4) and normalizes latents exactly as diffusers' Wan pipelines do.
* ``OfflineCodec`` needs no weights: a fixed orthonormal colour x 2D-DCT basis with the same
  latent shape and causal frame mapping, so everything downstream runs without downloads.

Causal frame mapping (``CONVENTIONS.md``): ``T = 4N + 1`` pixel frames give ``F = N + 1`` latent
frames; latent frame 0 is pixel frame 0 and latent frame ``k >= 1`` covers pixel frames
``4k-3 .. 4k``.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from . import weights
from .frames import check_num_frames, num_latent_frames
from .offload import execution_device

__all__ = [
    "VideoCodec",
    "WanVAECodec",
    "OfflineCodec",
    "WAN22_MODEL_ID",
    "WAN22_VAE_CONFIG",
    "WAN22_VAE_LAYOUT",
]

WAN22_MODEL_ID = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"  # the VAE lives in its subfolder "vae"
WAN22_VAE_LAYOUT: weights.Layout = {"vae": "model"}  # what WanVAECodec.from_pretrained needs of a checkpoint

# The Wan2.2 VAE as configured in `WAN22_MODEL_ID`/vae/config.json (diffusers AutoencoderKLWan kwargs).
WAN22_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    "latents_mean": [
        -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
        0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
        0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
        -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
        0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
    ],
    "latents_std": [
        0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
        0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
        0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
        0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
        0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
    ],
}


@runtime_checkable
class VideoCodec(Protocol):
    name: str  # short identifier, e.g. "wan2.2-vae"
    latent_channels: int  # C
    spatial_stride: int  # H / h
    temporal_stride: int  # (T - 1) / (F - 1)
    needs_weights: bool  # True when the codec cannot run without downloaded weights

    def encode(self, video: Tensor) -> Tensor: ...  # [B, 3, T, H, W] in [-1, 1] -> [B, C, F, h, w]

    def decode(self, latents: Tensor) -> Tensor: ...  # [B, C, F, h, w] -> [B, 3, T, H, W] in [-1, 1]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...


# ----------------------------------------------------------------------------- checks


def _check_video(video: Tensor, spatial_stride: int, temporal_stride: int) -> None:  # video [B, 3, T, H, W]
    if not isinstance(video, Tensor):
        raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
    if video.ndim != 5:
        raise ValueError(f"video must be 5-D [B, 3, T, H, W], got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"video must be a float tensor in [-1, 1], got dtype {video.dtype}")
    B, C, T, H, W = video.shape
    if C != 3:
        raise ValueError(f"video must have 3 channels (dim 1), got {C} in shape {tuple(video.shape)}")
    check_num_frames(T, temporal_stride)
    if H % spatial_stride != 0 or W % spatial_stride != 0 or H == 0 or W == 0:
        raise ValueError(f"video height and width must be positive multiples of {spatial_stride}, got {H}x{W}")


def _check_latents(latents: Tensor, channels: int) -> None:  # latents [B, C, F, h, w]
    if not isinstance(latents, Tensor):
        raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if latents.ndim != 5:
        raise ValueError(f"latents must be 5-D [B, C, F, h, w], got shape {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise ValueError(f"latents must be a float tensor, got dtype {latents.dtype}")
    if latents.shape[1] != channels:
        raise ValueError(f"latents must have {channels} channels (dim 1), got shape {tuple(latents.shape)}")


def _latent_shape(codec: VideoCodec, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    s = codec.spatial_stride
    if height <= 0 or width <= 0 or height % s != 0 or width % s != 0:
        raise ValueError(f"height and width must be positive multiples of {s}, got {height}x{width}")
    F = num_latent_frames(num_frames, codec.temporal_stride)
    return (codec.latent_channels, F, height // s, width // s)


# ----------------------------------------------------------------------------- Wan2.2 VAE


class WanVAECodec:
    """The Wan2.2 VAE behind the ``VideoCodec`` interface.

    ``encode`` takes the posterior mode (deterministic) and normalizes like diffusers' Wan
    pipelines, in float32: ``(z - latents_mean) * (1 / latents_std)``, returning float32 latents;
    ``decode`` inverts that in the VAE dtype (as diffusers does) and clamps the output to ``[-1, 1]``.
    """

    name = "wan2.2-vae"
    needs_weights = True

    def __init__(self, vae: Any) -> None:  # vae: diffusers AutoencoderKLWan
        from diffusers import AutoencoderKLWan

        if not isinstance(vae, AutoencoderKLWan):
            raise ValueError(f"vae must be a diffusers AutoencoderKLWan, got {type(vae).__name__}")
        cfg = vae.config
        if cfg.scale_factor_spatial is None or cfg.scale_factor_temporal is None:
            raise ValueError(
                f"vae config needs scale_factor_spatial/temporal, got "
                f"{cfg.scale_factor_spatial!r}/{cfg.scale_factor_temporal!r}"
            )
        for key in ("latents_mean", "latents_std"):
            if len(cfg[key]) != cfg.z_dim:
                raise ValueError(f"vae config {key} has {len(cfg[key])} entries, expected z_dim={cfg.z_dim}")
        self.vae = vae
        self.latent_channels: int = int(cfg.z_dim)
        self.spatial_stride: int = int(cfg.scale_factor_spatial)
        self.temporal_stride: int = int(cfg.scale_factor_temporal)

    # --- construction

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any] | None = None,
        seed: int = 0,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "WanVAECodec":
        """Random weights; ``config`` keys override ``WAN22_VAE_CONFIG``.

        The weights are initialised on ``device`` (CPU by default; the full-size init took 24 s on
        16 CPU cores) from ``seed``, so they depend on the seed and the device type. The global
        RNG state is left untouched.
        """
        from diffusers import AutoencoderKLWan

        kwargs = copy.deepcopy(WAN22_VAE_CONFIG)
        kwargs.update(copy.deepcopy(config or {}))
        build_device = torch.device("cpu" if device is None else device)
        rng_devices = [build_device] if build_device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), build_device:
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**kwargs)
        vae = vae.to(dtype=torch_dtype).eval()
        return cls(vae)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike = WAN22_MODEL_ID,
        subfolder: str | None = "vae",
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "WanVAECodec":
        """Load from a hub id, a local diffusers folder or the HF cache (``mirage.weights.resolve``).

        ``torch_dtype`` defaults to float32, the released VAE's dtype (diffusers' Wan pipelines also
        normalise its latents in float32). ``local_files_only=None`` means "only local files when
        ``HF_HUB_OFFLINE`` is set"; then no network is ever tried. Raises ``FileNotFoundError``
        naming the path/id when the weights cannot be found.
        """
        from diffusers import AutoencoderKLWan

        layout: weights.Layout = {subfolder or ".": "model"}
        hint = (
            f"Download them where there is network (`hf download {WAN22_MODEL_ID} --include 'vae/*'`), or pass a "
            f"local folder holding a diffusers AutoencoderKLWan (config.json + safetensors)."
        )
        root = weights.resolve(path_or_id, layout, what="The Wan2.2 VAE", hint=hint,
                               local_files_only=local_files_only, cache_dir=cache_dir)  # fmt: skip
        folder = root / subfolder if subfolder else root
        with weights.offline_mode():
            vae = AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=torch_dtype, local_files_only=True)
        return cls(vae.to(device=device).eval())

    # --- device / options

    @property
    def device(self) -> torch.device:
        """Where encode/decode run (``mirage.offload.execution_device``: the offload hook's device
        when model CPU offload is on, else where the weights are)."""
        return execution_device(self.vae)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "WanVAECodec":
        self.vae.to(device=device, dtype=dtype)
        return self

    def enable_tiling(self, **kwargs: Any) -> "WanVAECodec":
        """Spatially tiled encode/decode (``AutoencoderKLWan.enable_tiling`` kwargs)."""
        self.vae.enable_tiling(**kwargs)
        return self

    def _norm_stats(self, device: torch.device) -> tuple[Tensor, Tensor]:  # -> [1, C, 1, 1, 1] float32 each
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1).to(device)  # [1, C, 1, 1, 1]
        inv_std = (1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32)).view(1, -1, 1, 1, 1).to(device)  # [1, C, 1, 1, 1]
        return mean, inv_std

    # --- codec

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return _latent_shape(self, num_frames, height, width)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:  # video [B, 3, T, H, W] in [-1, 1] -> [B, C, F, h, w]
        _check_video(video, self.spatial_stride, self.temporal_stride)
        x = video.to(device=self.device, dtype=self.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()  # [B, C, F, h, w] raw latents, float32
        mean, inv_std = self._norm_stats(z.device)
        return (z - mean) * inv_std  # normalised in float32, as diffusers' Wan pipelines do

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # latents [B, C, F, h, w] -> [B, 3, T, H, W] in [-1, 1]
        _check_latents(latents, self.latent_channels)
        z = latents.to(device=self.device, dtype=self.dtype)
        mean, inv_std = (x.to(z.dtype) for x in self._norm_stats(z.device))
        raw = z / inv_std + mean  # [B, C, F, h, w], in the VAE dtype as diffusers' Wan pipelines un-normalize
        video = self.vae.decode(raw, return_dict=False)[0]  # [B, 3, T, H, W]
        return video.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- offline codec


def _zigzag(n: int, count: int) -> list[tuple[int, int]]:
    """First ``count`` (row, col) frequencies of an ``n x n`` block in JPEG zigzag order."""
    order: list[tuple[int, int]] = []
    for s in range(2 * n - 1):  # anti-diagonal row + col = s
        rows = range(max(0, s - n + 1), min(s, n - 1) + 1)
        rows = rows if s % 2 == 1 else reversed(rows)  # JPEG: odd diagonals go down, even go up
        order.extend((r, s - r) for r in rows)
    return order[:count]


def _dct_matrix(n: int) -> Tensor:  # -> [n, n] float64, row k = k-th orthonormal DCT-II basis vector
    k = torch.arange(n, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :]
    D = torch.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    D[0] /= math.sqrt(2.0)
    return D


def _colour_matrix() -> Tensor:  # -> [3, 3] float64 orthonormal rows (Y, Cb, Cr) acting on RGB
    """BT.601 YCbCr directions (Y = .299R+.587G+.114B, Cb ~ B-Y, Cr ~ R-Y), Gram-Schmidt orthonormalised."""
    y = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    cb = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - y
    cr = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - y
    rows = []
    for v in (y, cb, cr):
        for u in rows:
            v = v - (v @ u) * u
        rows.append(v / v.norm())
    return torch.stack(rows)


class OfflineCodec:
    """A weight-free, deterministic codec with the Wan2.2 VAE's latent shape (48, /16, causal /4).

    Basis (all orthonormal, so ``decode(encode(x))`` is the least-squares projection of ``x``):

    * colour: orthonormalised BT.601 Y, Cb, Cr directions (``_colour_matrix``, an orthogonal 3x3);
    * space: the orthonormal 2D DCT-II of each 16x16 patch, keeping the lowest frequencies in
      JPEG zigzag order: the 36 coefficients with ``fy + fx <= 7`` for Y (channels 0..35), the 6
      with ``fy + fx <= 2`` for Cb (36..41) and for Cr (42..47); ``channels`` lists each
      channel's ``(colour, fy, fx)``;
    * time: latent frame 0 is pixel frame 0, latent frame ``k >= 1`` is the mean of pixel frames
      ``4k-3 .. 4k`` and decode repeats it over them (the orthogonal projection onto frames that are
      constant over each latent frame's pixel frames).

    Latents are the coefficients times ``1 / 16`` (one scale for every channel; decode undoes it),
    so the DC channels are patch means and every latent lies in ``[-sqrt(3), sqrt(3)]`` for inputs
    in ``[-1, 1]``. ``decode`` clamps to ``[-1, 1]`` unless ``clamp=False``; for targets in
    ``[-1, 1]`` clamping can only lower the error. Works on any device and float dtype.
    """

    name = "offline-dct"
    needs_weights = False
    latent_channels = 48
    spatial_stride = 16
    temporal_stride = 4
    luma_channels = 36  # Y coefficients with fy + fx <= 7
    chroma_channels = 6  # Cb and Cr coefficients each, fy + fx <= 2
    scale = 1.0 / 16  # latents = scale * orthonormal coefficients

    def __init__(self, clamp: bool = True) -> None:
        self.clamp = clamp  # decode output clamped to [-1, 1]
        P = self.spatial_stride
        D = _dct_matrix(P)  # [P, P]
        colour = _colour_matrix()  # [3, 3]
        counts = (self.luma_channels, self.chroma_channels, self.chroma_channels)
        # (colour 0=Y 1=Cb 2=Cr, fy, fx) of each latent channel, in channel order
        self.channels: list[tuple[int, int, int]] = [
            (c, fy, fx) for c, count in enumerate(counts) for fy, fx in _zigzag(P, count)
        ]
        rows = []
        for c, fy, fx in self.channels:
            patch = torch.outer(D[fy], D[fx])  # [P, P] basis image
            rows.append(colour[c][:, None, None] * patch)  # [3, P, P]
        self.basis = torch.stack(rows).reshape(self.latent_channels, 3 * P * P)  # [48, 3*P*P] orthonormal rows
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _basis(self, like: Tensor) -> Tensor:  # -> [48, 3*P*P] in like's device/dtype
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.basis.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "OfflineCodec":
        """No state to move: the basis follows each input's device and dtype."""
        return self

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return _latent_shape(self, num_frames, height, width)

    def encode(self, video: Tensor) -> Tensor:  # video [B, 3, T, H, W] in [-1, 1] -> [B, 48, F, h, w]
        _check_video(video, self.spatial_stride, self.temporal_stride)
        B, _, T, H, W = video.shape
        P, S = self.spatial_stride, self.temporal_stride
        h, w, F = H // P, W // P, (T - 1) // S + 1
        rest = video[:, :, 1:].reshape(B, 3, F - 1, S, H, W).mean(dim=3)  # [B, 3, F-1, H, W] group means
        frames = torch.cat([video[:, :, :1], rest], dim=2)  # [B, 3, F, H, W]
        patches = frames.reshape(B, 3, F, h, P, w, P)  # [B, 3, F, h, py, w, px]
        patches = patches.permute(0, 2, 3, 5, 1, 4, 6).reshape(B, F, h, w, 3 * P * P)  # [B, F, h, w, 3*py*px]
        coeffs = patches @ self._basis(video).T  # [B, F, h, w, 48]
        return (coeffs * self.scale).permute(0, 4, 1, 2, 3).contiguous()  # [B, 48, F, h, w]

    def decode(self, latents: Tensor) -> Tensor:  # latents [B, 48, F, h, w] -> [B, 3, T, H, W]
        _check_latents(latents, self.latent_channels)
        B, _, F, h, w = latents.shape
        P, S = self.spatial_stride, self.temporal_stride
        coeffs = latents.permute(0, 2, 3, 4, 1) / self.scale  # [B, F, h, w, 48]
        patches = coeffs @ self._basis(latents)  # [B, F, h, w, 3*py*px]
        patches = patches.reshape(B, F, h, w, 3, P, P).permute(0, 4, 1, 2, 5, 3, 6)  # [B, 3, F, h, py, w, px]
        frames = patches.reshape(B, 3, F, h * P, w * P)  # [B, 3, F, H, W]
        rest = frames[:, :, 1:, None].expand(B, 3, F - 1, S, h * P, w * P)  # [B, 3, F-1, S, H, W]
        video = torch.cat([frames[:, :, :1], rest.reshape(B, 3, (F - 1) * S, h * P, w * P)], dim=2)  # [B, 3, T, H, W]
        return video.clamp(-1.0, 1.0) if self.clamp else video
