"""What a trained side branch receives for a chunk, built from either memory: the branch context,
reference latents and preceding latents (``BranchInputs``), in the two layouts that exist for
Wan2.2-TI2V-5B (``/work``'s reference notes; README "Trained conditioning").

* **Mirage** (microsoft/LatentSpatialMemory): context ``[96, F + P]`` = the memory readout of the
  chunk's ``F`` target latent frames, then the readouts the ``P <= 2`` preceding latents were
  generated with, concatenated along channels with the VAE latent of an all-white video (a
  constant "score"); the preceding latents (the two before the previous chunk's last) follow the
  target in the sequence; up to 4 reference latents (earlier generated latents whose visible
  voxels overlap the target views', IoU >= 0.04 at 0.1 m voxels) precede it.
* **Spatia** (ZhaoJingjing713/Spatia): context ``[96, F]`` = the memory readout (for the pixel
  memory: its rasterized frames encoded by the VAE) concatenated with the VAE latent of the hole
  score video (1 - the render's coverage: 1 where the memory shows nothing, 0 where it fully does,
  soft at the discs' edges under Spatia's own render; in ``[0, 1]``); up to 7 reference
  latents, earlier decoded frames each encoded alone (path frame 0: the input image), one per target camera (every 12th frame)
  chosen by the Hungarian assignment of shared visible points; no preceding latents (the history
  is the chunk's pinned first latents); the LoRA is used from the second chunk on.

Both memories go through the same builder: what differs between them is only their readout (tokens
read on the latent grid, or frames rasterized and encoded) and its visibility, as everywhere else.
Mirage's references are chosen as its reference code chooses them: among the generated latents,
each once, with the voxels each saw in the memory right after it was made (kept with the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .cameras import Cameras
from .chunks import Chunk, history_frames
from .families import FAMILIES, BranchKind
from .geometry import project_points
from .memory import SpatialMemory, voxel_keys
from .paths import CameraPath

__all__ = [
    "BranchInputs",
    "visible_points",
    "voxel_iou",
    "mirage_references",
    "seen_voxels",
    "spatia_references",
    "MirageConditioner",
    "SpatiaConditioner",
    "make_conditioner",
]

Encode = Callable[[Tensor], Tensor]  # [1, 3, T, H, W] -> [1, C, F, h, w]


@dataclass
class BranchInputs:
    """What the side branch and the transformer receive for one chunk besides the noisy latents."""

    context: Tensor  # [1, 96, F + P, h, w] branch context of the target frames, then the preceding ones
    references: Tensor  # [1, C, R, h, w] clean reference latents placed before the target (R may be 0)
    preceding: Tensor  # [1, C, P, h, w] clean latents placed after the target (P may be 0)
    use_lora: bool = True  # whether the LoRA adapter is active for this chunk


def visible_points(points: Tensor, cameras: Cameras, height: int, width: int, near: float = 1e-6) -> Tensor:
    """``[V, N]`` bool: the points that project inside each camera's ``height x width`` grid in front
    of it (no occlusion test), as Mirage's reference selection counts them. points ``[N, 3]``."""
    uv, z = project_points(points, cameras.K.to(points.device), cameras.cam_from_world.to(points.device))  # [V, N, 2], [V, N]
    u, v = uv[..., 0], uv[..., 1]
    return (z > near) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def voxel_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two sets of voxel keys (1-D int64 tensors)."""
    a, b = a.unique(), b.unique()
    inter = int(torch.isin(a, b).sum())
    union = a.numel() + b.numel() - inter
    return inter / union if union else 0.0


def mirage_references(
    points: Tensor,  # [N, 3] the memory's points now
    targets: Cameras,  # [F] the chunk's latent-aligned cameras on the latent grid
    candidate_keys: list[Tensor],  # M voxel-key sets: what each earlier latent saw when it was made
    height: int,
    width: int,
    *,
    max_references: int = FAMILIES["mirage"].max_references,
    threshold: float = FAMILIES["mirage"].reference_rule["threshold"],
    voxel_size: float = FAMILIES["mirage"].reference_rule["voxel_size"],
) -> list[int]:
    """Indices of at most ``max_references`` candidates whose voxels overlap the voxels the targets see
    now (IoU >= ``threshold``), the best first, ties in candidate order (Mirage's rule)."""
    if not candidate_keys or points.shape[0] == 0:
        return []
    target = voxel_keys(points, voxel_size)[visible_points(points, targets, height, width).any(0)]  # the targets' voxels
    scores = [voxel_iou(target, keys.to(points.device)) for keys in candidate_keys]
    order = sorted((j for j, v in enumerate(scores) if v >= threshold), key=lambda j: -scores[j])  # stable
    return order[:max_references]


def seen_voxels(points: Tensor, cameras: Cameras, height: int, width: int,
                voxel_size: float = FAMILIES["mirage"].reference_rule["voxel_size"]) -> list[Tensor]:  # fmt: skip
    """The voxel keys of the points each camera sees (``visible_points``), one set per camera, on the CPU."""
    keys = voxel_keys(points, voxel_size)  # [N]
    return [keys[row].unique().cpu() for row in visible_points(points, cameras, height, width)]


def spatia_references(
    memory: SpatialMemory,
    targets: Cameras,  # [K] target cameras at pixel size
    candidates: Cameras,  # [M] cameras of the earlier decoded frames at pixel size
    *,
    max_references: int = FAMILIES["spatia"].max_references,
) -> list[int]:
    """One candidate frame per target camera (at most ``max_references``), chosen by the Hungarian
    assignment that maximises the points both see in front (a z-buffer of the memory from each
    camera), in target order (Spatia's rule)."""
    from scipy.optimize import linear_sum_assignment

    if len(candidates) == 0 or memory.num_points == 0:
        return []
    shown = [_shown(memory.point_ids(targets[i : i + 1])) for i in range(len(targets))]  # each [n_i] point ids
    past = [_shown(memory.point_ids(candidates[j : j + 1])) for j in range(len(candidates))]
    overlap = torch.tensor([[float(torch.isin(a, b).sum()) for b in past] for a in shown])  # [K, M]
    rows, cols = linear_sum_assignment(overlap.numpy(), maximize=True)
    chosen = [int(j) for i, j in sorted(zip(rows, cols)) if overlap[i, j] > 0]
    return chosen[:max_references]


def _shown(ids: Tensor) -> Tensor:  # [1, rows, cols] point ids (-1 empty) -> [n] the distinct ids shown
    return ids[ids >= 0].unique()


class MirageConditioner:
    """Mirage's branch inputs for each chunk (module docstring); one per generation run."""

    def __init__(self, memory: SpatialMemory, path: CameraPath, encode: Encode, *, temporal_stride: int = 4,
                 max_references: int = FAMILIES["mirage"].max_references,
                 max_preceding: int = FAMILIES["mirage"].max_preceding, cache: dict | None = None) -> None:  # fmt: skip
        self.memory, self.path, self.encode = memory, path, encode
        self.ts, self.max_references, self.max_preceding = temporal_stride, max_references, max_preceding
        self._white = cache if cache is not None else {}  # (frames, H, W) -> [1, C, F, h, w] the constant score latent

    def keep_frame(self, t: int) -> bool:
        """No decoded frame is read by later chunks (the references are latents)."""
        return False

    def score(self, latent_frames: int, height: int, width: int, device) -> Tensor:  # -> [1, C, F, h, w]
        key = (latent_frames, height, width)
        if key not in self._white:
            white = torch.ones(1, 3, (latent_frames - 1) * self.ts + 1, height, width, device=device)  # [-1, 1] white
            self._white[key] = self.encode(white).float().cpu()  # kept with the run, between chunks
        return self._white[key].to(device)

    def __call__(self, chunk: Chunk) -> BranchInputs:
        device = chunk.pinned.device
        readout = chunk.readout.latents[None].to(device, torch.float32)  # [1, C, F, h, w]
        C, h, w = readout.shape[1], readout.shape[3], readout.shape[4]
        preceding = torch.zeros(1, C, 0, h, w, device=device)
        preceding_readout = preceding
        if chunk.history and self.max_preceding > 0:
            last = chunk.history[-1]  # the latents before its last one (the last is this chunk's frame 0)
            n = min(self.max_preceding, last.latents.shape[1] - 1)
            sl = slice(last.latents.shape[1] - 1 - n, last.latents.shape[1] - 1)
            preceding = last.latents[None, :, sl].to(device)  # [1, C, P, h, w]
            preceding_readout = last.readout_latents[None, :, sl].to(device, torch.float32)  # what they were generated with
        scene = torch.cat([readout, preceding_readout], dim=2)  # [1, C, F + P, h, w]
        score = self.score(scene.shape[2], chunk.cameras.height, chunk.cameras.width, device)  # [1, C, F + P, h, w]
        references = self._references(chunk, C, h, w, device)
        use_lora = chunk.index >= FAMILIES["mirage"].lora_from_chunk
        return BranchInputs(torch.cat([scene, score], dim=1), references, preceding, use_lora)

    def _references(self, chunk: Chunk, C: int, h: int, w: int, device) -> Tensor:  # -> [1, C, R, h, w]
        """As the reference (mirage_pipeline.py, select_reference_frames): the candidates are the generated
        latents, each once (a later chunk's pinned first latent is the previous chunk's last), each with
        the voxels it saw in the memory right after the update of the chunk that made it."""
        if not chunk.history or self.max_references == 0:
            return torch.zeros(1, C, 0, h, w, device=device)
        P = chunk.pinned.shape[2]  # a later chunk's first P latents repeat earlier ones
        own = [slice(0, None) if i == 0 else slice(P, None) for i in range(len(chunk.history))]
        latents = torch.cat([c.latents[:, s] for c, s in zip(chunk.history, own)], dim=1)  # [C, M, h, w] each latent once
        grid = lambda c: _reference_grid(c.rescaled(w, h), self.memory.config.spatial_stride)  # noqa: E731
        seen = self._visible_when_generated(chunk, own, grid, h, w)  # M key sets
        chosen = mirage_references(self.memory.points, grid(chunk.latent_cameras), seen, h, w,
                                   max_references=self.max_references)  # fmt: skip
        return latents[:, chosen][None].to(device)

    def _visible_when_generated(self, chunk: Chunk, own: list[slice], grid, h: int, w: int) -> list[Tensor]:
        """The voxel keys each earlier latent saw when it was made, kept with the run (``cache``): the
        memory now is the memory right after the last chunk's update, so that chunk's latents are
        recorded now (again after an undo); earlier ones were recorded in their turn."""
        sets = self._white.setdefault("visible", [])
        counts = [len(range(*s.indices(c.latents.shape[1]))) for c, s in zip(chunk.history, own)]
        del sets[sum(counts[:-1]):]  # the last chunk's (recorded now) and any of chunks undone since
        for record, s in list(zip(chunk.history, own))[len(_chunks_of(sets, counts)):]:
            a, b = record.frame_range
            sets += seen_voxels(self.memory.points, grid(self.path[a:b][:: self.ts][s]), h, w)  # the chunk's own latents
        return sets


class SpatiaConditioner:
    """Spatia's branch inputs for each chunk (module docstring); one per generation run."""

    def __init__(self, memory: SpatialMemory, path: CameraPath, encode: Encode, *, temporal_stride: int = 4,
                 max_references: int = FAMILIES["spatia"].max_references,
                 reference_every: int = int(FAMILIES["spatia"].reference_rule["reference_every"]),
                 target_every: int = int(FAMILIES["spatia"].reference_rule["target_every"]),
                 cache: dict | None = None) -> None:  # fmt: skip
        self.memory, self.path, self.encode = memory, path, encode
        self.ts, self.max_references = temporal_stride, max_references
        self.reference_every, self.target_every = reference_every, target_every

    def keep_frame(self, t: int) -> bool:
        """The decoded path frames later rounds may take as references (every ``reference_every``-th)."""
        return t % self.reference_every == 0

    def __call__(self, chunk: Chunk) -> BranchInputs:
        device = chunk.pinned.device
        readout = chunk.readout.latents[None].to(device, torch.float32)  # [1, C, F, h, w]
        C, h, w = readout.shape[1], readout.shape[3], readout.shape[4]
        holes = 1 - chunk.readout.pixel_coverage.to(device).float()  # [T, H, W] 1 where the memory shows nothing (soft edges)
        score = self.encode(holes[None, None].expand(1, 3, *holes.shape)).float()  # the hole score in [0, 1]
        references = self._references(chunk, C, h, w, device)
        preceding = torch.zeros(1, C, 0, h, w, device=device)
        use_lora = chunk.index >= FAMILIES["spatia"].lora_from_chunk
        return BranchInputs(torch.cat([readout, score], dim=1), references, preceding, use_lora)

    def _references(self, chunk: Chunk, C: int, h: int, w: int, device) -> Tensor:  # -> [1, C, R, h, w]
        if not chunk.history or self.max_references == 0:
            return torch.zeros(1, C, 0, h, w, device=device)
        start = chunk.frame_range[0]  # frames [start, start + overlap) are this chunk's history: not references
        pool = list(range(0, start, self.reference_every))  # the earlier frames, every reference_every-th
        if not pool:
            return torch.zeros(1, C, 0, h, w, device=device)
        targets = chunk.cameras[:: self.target_every]
        chosen = spatia_references(self.memory, targets, self.path[torch.tensor(pool)], max_references=self.max_references)
        if not chosen:
            return torch.zeros(1, C, 0, h, w, device=device)
        frames = [pool[j] for j in chosen]
        images = history_frames(chunk.history, frames).to(device)  # [3, R, H, W] decoded earlier
        image = chunk.history[0].latents[None, :, :1].to(device)  # [1, C, 1, h, w] chunk 0's pinned latent: the input image's
        # path frame 0 is the input image itself, not its decode (Spatia's all_hist_frames begins with the image)
        return torch.cat([image if t == 0 else self.encode(images[None, :, r : r + 1]).float() for r, t in enumerate(frames)], dim=2)


def _chunks_of(sets: list, counts: list[int]) -> list[int]:  # -> the chunks whose latents all have a key set
    done, total = [], 0
    for c in counts:
        if total + c > len(sets):
            break
        total += c
        done.append(c)
    return done


def _reference_grid(cameras: Cameras, stride: int) -> Cameras:
    """Cameras on the latent grid as the official Mirage code has them: OpenCV intrinsics (pixel centres
    at integers, ours - 1/2) scaled by 1/stride, i.e. ours with the principal point 1/(2 stride) lower."""
    K = cameras.K.clone()  # [V, 3, 3]
    K[:, :2, 2] -= 0.5 / stride
    return Cameras(K, cameras.cam_from_world, cameras.width, cameras.height)


CONDITIONERS = {"mirage": MirageConditioner, "spatia": SpatiaConditioner}
assert set(CONDITIONERS) == set(FAMILIES)


def make_conditioner(kind: BranchKind, memory: SpatialMemory, path: CameraPath, encode: Encode, **kwargs):
    """The branch-input builder of a checkpoint family."""
    if kind not in CONDITIONERS:
        raise ValueError(f"branch kind must be one of {tuple(FAMILIES)}, got {kind!r}")
    return CONDITIONERS[kind](memory, path, encode, **kwargs)
