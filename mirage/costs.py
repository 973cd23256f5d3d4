"""What one chunk of one memory costs on a GPU, predicted from what the GPU it runs on has measured.

A Space's GPU call is aborted when it outlives the duration it asked for, so each chunk's call asks
for a duration predicted here. The model is the H100's (measured with random weights at full size,
``benchmarks/results/pipeline_*_cuda_h100.json``) times a *factor* for the GPU the process has:

* a transformer call on ``L`` latent frames at 704x1280 (``L`` = the chunk's own, plus references and
  preceding latents) with a side branch of ``b`` blocks costs ``(A L + B L^2)(1 + b / 30)`` seconds on
  the H100 (linear layers, then attention; the branch's blocks are DiT blocks);
* the rest of a chunk (decode, depth, memory read and update, the branch inputs, and in the app the
  readout decoded for the page, ``"display"``) costs a number of seconds per pixel frame, more for the pixel memory, which rasterizes and encodes every frame;
* the first chunk of a run also encodes the prompt and the image and estimates the image's depth.

Before a GPU has measured anything, its factor is a conservative prior per GPU kind (``PRIORS``);
every chunk's stage times update it (``observe``), so later calls ask for what this GPU needs. A
call asks for ``margin`` times the prediction plus a fixed start-up allowance, never more than the
cap; a GPU no prior knows asks for the cap until it has measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .families import BranchFamily
from .frames import num_latent_frames

__all__ = ["ChunkCost", "GpuPrior", "PRIORS", "prior_for", "CostModel", "h100_call_seconds"]

# H100 (bf16, SDPA, 704x1280): 0.265 s per call on 9 latent frames (5.3 s / 20 steps, guidance 1), and
# 1.55 s on Spatia's 31 with its 8 blocks (3.1 s per step with guidance); Mirage's 15 with its 15
# blocks: 0.72 s measured, 0.73 s predicted.
_A, _B = 0.0262, 0.000425
# s per pixel frame with the VAE in float32 (in bf16, as the app runs it on CUDA, a decode takes 1.7 s: an
# over-prediction until this GPU has measured): decode 2.8 + depth 0.63 (+ RGB read 1.05) / 33
_REST_PER_FRAME = {"latent": 0.105, "rgb": 0.137}
_DISPLAY_PER_FRAME = 0.085  # s per pixel frame: the readout decoded for the page, 2.8 / 33
_START = 1.0  # s: the prompt (UMT5-XXL), the image's latent and its depth, once per run (0.17 s measured, cached prompt)
_REST_STAGES = ("project", "rasterize", "encode", "condition", "decode", "depth", "update", "display")  # charted stages but denoise


def h100_call_seconds(latent_frames: int, branch_blocks: int = 0) -> float:
    """Seconds of one Wan2.2-TI2V-5B transformer call on the H100 at 704x1280 (module docstring)."""
    L = latent_frames
    return (_A * L + _B * L * L) * (1 + branch_blocks / 30)


@dataclass(frozen=True)
class ChunkCost:
    """What one chunk of one memory does."""

    calls: int  # transformer calls (steps, twice with guidance)
    latent_frames: int  # latent frames in each call: the chunk's own, references and preceding latents
    branch_blocks: int  # blocks of the side branch that runs with each call (0: none)
    frames: int  # pixel frames of the chunk
    memory: str  # "latent" or "rgb"
    first: bool  # the run's first chunk: also the prompt, the image's latent and its depth
    pixels: int = 704 * 1280  # H x W (costs scale with the pixels per frame)
    display: bool = True  # the readout is also decoded for the page (the app's chunks; not the library's)

    @property
    def rest_per_frame(self) -> float:
        """H100 seconds per pixel frame of everything but the transformer calls."""
        return _REST_PER_FRAME[self.memory] + (_DISPLAY_PER_FRAME if self.display else 0.0)

    @classmethod
    def of(cls, memory: str, frame_range: tuple[int, int], index: int, steps: int, guidance: float,
           family: BranchFamily | None = None, size: tuple[int, int] = (704, 1280), display: bool = True) -> "ChunkCost":  # fmt: skip
        """Chunk ``index`` (0-based) of a run over pixel frames ``frame_range`` of ``size`` (H, W),
        with ``steps`` sampling steps (two transformer calls each when ``guidance > 1``) and the side
        branch of ``family`` (None: the bare model); every reference and preceding latent the family
        may add counted (an upper bound); ``display``: the app decodes the readout for the page too."""
        start, stop = frame_range
        extra = family.extra_latents if family is not None and index > 0 else 0
        return cls(steps * (2 if guidance > 1 else 1), num_latent_frames(stop - start) + extra,
                   family.blocks if family is not None else 0, stop - start, memory, index == 0, size[0] * size[1], display)  # fmt: skip


@dataclass(frozen=True)
class GpuPrior:
    """How much slower than the H100 a GPU kind is, before it has measured (an upper bound)."""

    name: str
    factor: float  # seconds here / seconds on the H100
    source: str  # why this number


PRIORS: tuple[GpuPrior, ...] = (
    GpuPrior("H100", 1.0, "measured here (benchmarks/results)"),
    GpuPrior("H200", 1.0, "the H100's compute and more memory bandwidth: not slower"),
    GpuPrior("RTX PRO 6000 Blackwell, half (ZeroGPU large)", 3.6,
             "about a third of an H100's bf16 matrix throughput and memory bandwidth, plus 20%"),
    GpuPrior("RTX PRO 6000 Blackwell", 1.8, "a whole card: twice the half card's throughput"),
    GpuPrior("L40S", 3.0, "about 360 bf16 TFLOP/s dense against the H100's 800 measured, plus 30%"),
    GpuPrior("A10G", 9.0, "about 125 bf16 TFLOP/s dense, plus 40%"),
)  # fmt: skip


def prior_for(device_name: str, half: bool = False) -> GpuPrior | None:
    """The prior of a CUDA device name (``torch.cuda.get_device_name``), or None for a GPU kind no prior
    knows. ``half``: a ZeroGPU ``large`` slice (half a card)."""
    name = device_name.upper()
    if "BLACKWELL" in name and "6000" in name:
        return PRIORS[2] if half else PRIORS[3]
    for prior in (PRIORS[0], PRIORS[1], PRIORS[4], PRIORS[5]):
        if prior.name.upper() in name:
            return prior
    return None


@dataclass
class CostModel:
    """Seconds one chunk's GPU call needs on this process's GPU (module docstring)."""

    prior: GpuPrior | None  # None: a GPU no prior knows
    cap: float = 120.0  # the longest call the platform grants, seconds
    margin: float = 1.25  # asked for: margin x predicted
    allowance: float = 10.0  # s per call for its start and the run crossing the process boundary
    granted_per_second: float = 1.0  # seconds the platform grants per second asked (ZeroGPU on a half Blackwell card: 1.5)
    factor: float | None = None  # measured: transformer seconds here / on the H100 (None: not yet)
    rest_factor: float | None = None  # measured: the rest of a chunk here / on the H100
    observed: list[dict] = field(default_factory=list)  # what each observed chunk measured

    @property
    def measured(self) -> bool:
        return self.factor is not None

    def _factors(self) -> tuple[float, float] | None:
        if self.measured:
            return self.factor, self.rest_factor
        return None if self.prior is None else (self.prior.factor, self.prior.factor)

    def predict(self, cost: ChunkCost) -> float | None:
        """Seconds the chunk takes here (None on an unknown GPU that has not measured yet)."""
        factors = self._factors()
        if factors is None:
            return None
        call, rest = factors
        scale = cost.pixels / (704 * 1280)
        seconds = cost.calls * h100_call_seconds(cost.latent_frames, cost.branch_blocks) * call * scale
        seconds += cost.frames * cost.rest_per_frame * rest * scale + (_START * rest if cost.first else 0.0)
        return seconds

    def needed(self, cost: ChunkCost) -> float | None:
        """Seconds of this GPU the call must be granted: ``margin`` x the prediction + ``allowance``."""
        predicted = self.predict(cost)
        return None if predicted is None else self.margin * predicted + self.allowance

    def request(self, cost: ChunkCost) -> int:
        """Seconds to ask for, in the platform's terms (it grants ``granted_per_second`` times what is
        asked), at most the cap (the cap on a GPU that has not measured and that no prior knows)."""
        needed = self.needed(cost)
        if needed is None:
            return int(self.cap)
        return int(min(self.cap, math.ceil(needed / self.granted_per_second)))

    def fits(self, cost: ChunkCost) -> bool:
        """Whether the chunk fits the cap (True where it cannot be known yet: the call then asks for the cap)."""
        needed = self.needed(cost)
        return needed is None or needed <= self.cap * self.granted_per_second

    def observe(self, cost: ChunkCost, timings: dict[str, float]) -> None:
        """Learn from one chunk's stage seconds (``denoise`` and the rest): the factors become the
        largest seen so far, so a call never asks for less than the slowest chunk needed."""
        scale = cost.pixels / (704 * 1280)
        denoise = float(timings.get("denoise", 0.0))
        rest = sum(float(v) for k, v in timings.items() if k in _REST_STAGES)
        call = denoise / (cost.calls * h100_call_seconds(cost.latent_frames, cost.branch_blocks) * scale)
        other = rest / (cost.frames * cost.rest_per_frame * scale)
        self.factor = max(self.factor or 0.0, call)
        self.rest_factor = max(self.rest_factor or 0.0, other)
        self.observed.append({"cost": cost, "timings": dict(timings), "call_factor": call, "rest_factor": other})

    def describe(self, cost: ChunkCost) -> str:
        """One line for the page: where the numbers come from and what one chunk costs here."""
        predicted = self.predict(cost)
        if predicted is None:
            return "an unknown GPU: the first call asks for the longest duration, later ones what it measured"
        source = "measured on this GPU" if self.measured else f"prior for {self.prior.name} ({self.prior.source})"
        return f"one {cost.frames}-frame chunk of the {cost.memory} memory ≈ {predicted:.0f} s ({source})"
