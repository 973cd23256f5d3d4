"""A memory's cache as one safetensors file, and reading it back checked completely.

A file holds four tensors and the metadata that says what they are:

* ``points [N, 3]`` float32 world positions (finite), ``frame_ids [N]`` int32 in ``[0, frames_stored)``,
  ``axes [N, 2, 3]`` float16 footprint half-axes (finite), ``values [N, D]``: the latent memory's
  tokens (``D`` channels, the config's ``token_dtype``) or the pixel memory's colours (``[N, 3]`` uint8);
* metadata ``format = "mirage-memory"``, ``kind`` (``"latent"`` / ``"rgb"``), ``version``, ``config``
  (JSON: every ``MemoryConfig`` field, ``grid`` and ``frames_stored``) and ``size_history`` (JSON).

``load_memory_file`` returns a memory only when every part is as described; otherwise a
``ValueError`` names the file and the first problem found, so a bad file fails when it is loaded,
not later at a read. Version 3 files (written before ``MemoryConfig``: each memory's own settings
and its performance switches) are read as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .memory import CONFIG_KEYS, MEMORY_KINDS, MemoryConfig, make_memory

__all__ = ["FORMAT", "VERSION", "save_memory", "load_memory_file"]

FORMAT = "mirage-memory"
VERSION = "5"
TENSORS = ("points", "frame_ids", "axes", "values")
# Version 3: each memory saved its own settings, plus its performance switches (now never saved).
_V3_SETTINGS = {
    "latent": {"surface_tolerance", "voxel_size", "max_depth", "update_policy", "max_footprint_cells",
               "spatial_stride", "temporal_stride", "token_dtype"},
    "rgb": {"surface_tolerance", "voxel_size", "max_depth", "update_policy", "max_footprint_cells", "hole_value",
            "visible_fraction"},
}  # fmt: skip
_V3_PERFORMANCE = {"compact_footprints", "compile_reads"}
# settings added in version 5 (the reference readouts): older files read with their defaults
_ADDED_IN_5 = {"readout", "empty_latent", "point_radius", "points_per_pixel", "render_voxel", "render_voxel_step"}


def save_memory(memory, path: str | Path) -> Path:
    """Write ``memory`` (an initialized ``SpatialMemory``) to ``path``; returns the path."""
    if memory.grid is None:
        raise RuntimeError("the memory is empty: call initialize() first")
    rows, cols = memory.grid
    config = {k: getattr(memory.config, k) for k in CONFIG_KEYS}
    meta = {
        "format": FORMAT, "kind": memory.kind, "version": VERSION,
        "config": json.dumps({**config, "grid": [rows, cols], "frames_stored": memory.frames_stored}),
        "size_history": json.dumps(memory.size_history),
    }  # fmt: skip
    path = Path(path)
    save_file({k: v.contiguous().cpu() for k, v in memory.state_tensors().items()}, str(path), metadata=meta)
    return path


def load_memory_file(path: str | Path, kinds=MEMORY_KINDS, codec=None, device=None, **performance):
    """The memory saved at ``path`` if its kind is one of ``kinds`` and the file is whole (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no memory file at {path}")
    name = path.name

    def bad(problem: str) -> ValueError:
        return ValueError(f"{name}: {problem}")

    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{name} is not a safetensors file: {err}") from None
    kind = meta.get("kind")
    if meta.get("format") != FORMAT or kind not in kinds:
        what = " or ".join(kinds)
        raise ValueError(f"{name} is not a mirage {what} memory (format={meta.get('format')!r}, kind={kind!r})")
    version = meta.get("version")
    if version not in ("3", "4", VERSION):
        raise bad(f"unknown memory file version {version!r} (this code reads 3, 4 and {VERSION})")
    config, grid, frames_stored = _config(meta, kind, version, bad)
    history = _json(meta.get("size_history", "[]"), "size_history", bad)
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise bad("size_history must be a JSON list of records")
    missing, extra = [k for k in TENSORS if k not in keys], sorted(keys - set(TENSORS))
    if missing or extra:
        raise bad(f"tensors missing: {missing or 'none'}; unexpected: {extra or 'none'}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in TENSORS}
    except Exception as err:  # a truncated or corrupt tensor block
        raise bad(f"its tensors cannot be read: {err}") from None
    _check_tensors(tensors, kind, config, grid, frames_stored, history, bad)
    memory = make_memory(kind, config, codec=codec, device=device, **performance)  # ValueError: the codec's strides differ
    memory.load_state(tensors, grid, frames_stored, history)
    return memory


def _json(text: str, what: str, bad):
    try:
        return json.loads(text)
    except (TypeError, ValueError) as err:
        raise bad(f"its {what} is not JSON ({err})") from None


def _config(meta: dict, kind: str, version: str, bad) -> tuple[MemoryConfig, tuple[int, int], int]:
    if "config" not in meta:
        raise bad("no config in its metadata")
    raw = _json(meta["config"], "config", bad)
    if not isinstance(raw, dict):
        raise bad(f"its config must be a JSON object, got {type(raw).__name__}")
    expected = {"3": _V3_SETTINGS[kind], "4": set(CONFIG_KEYS) - _ADDED_IN_5}.get(version, set(CONFIG_KEYS))
    optional = set() if version == VERSION else _V3_PERFORMANCE  # version 3 saved some speed switches (never needed)
    given = set(raw) - {"grid", "frames_stored"} - optional
    missing, extra = sorted(expected - given), sorted(given - expected)
    missing += [k for k in ("grid", "frames_stored") if k not in raw]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
        raise bad(f"its config has {' and '.join(parts)}")
    grid, frames_stored = raw.pop("grid"), raw.pop("frames_stored")
    if not (isinstance(grid, list) and len(grid) == 2 and all(_positive_int(v) for v in grid)):
        raise bad(f"grid must be [rows, cols] of positive ints, got {grid!r}")
    if not (_positive_int(frames_stored) or frames_stored == 0):
        raise bad(f"frames_stored must be an int >= 0, got {frames_stored!r}")
    settings = {k: v for k, v in raw.items() if k not in _V3_PERFORMANCE}
    try:
        config = MemoryConfig(**settings)
    except (TypeError, ValueError) as err:
        raise bad(f"its config is not valid: {err}") from None
    return config, (int(grid[0]), int(grid[1])), int(frames_stored)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_tensors(tensors: dict, kind: str, config: MemoryConfig, grid: tuple[int, int], frames_stored: int,
                   history: list[dict], bad) -> None:  # fmt: skip
    points, frame_ids, axes, values = (tensors[k] for k in TENSORS)
    if points.dim() != 2 or points.shape[1] != 3 or points.dtype != torch.float32:
        raise bad(f"points must be [N, 3] float32, got {tuple(points.shape)} {points.dtype}")
    n = points.shape[0]
    if n == 0:
        raise bad("it holds no points (an initialized memory has at least one)")
    expect = {"frame_ids": ((n,), torch.int32), "axes": ((n, 2, 3), torch.float16)}
    if kind == "latent":
        dtype = getattr(torch, config.token_dtype) if config.token_dtype is not None else values.dtype
        if values.dim() != 2 or values.shape[1] < 1:
            raise bad(f"values must be [N, C] tokens, got {tuple(values.shape)}")
        expect["values"] = ((n, values.shape[1]), dtype)
    else:
        expect["values"] = ((n, 3), torch.uint8)
    for key, (shape, dtype) in expect.items():
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise bad(f"{key} must be {list(shape)} {str(dtype).removeprefix('torch.')} for {n} points, "
                      f"got {list(t.shape)} {str(t.dtype).removeprefix('torch.')}")  # fmt: skip
    for key, t in (("points", points), ("axes", axes)):
        finite = torch.isfinite(t.float()).reshape(n, -1).all(dim=1)
        if not finite.all():
            raise bad(f"{int((~finite).sum())} of {n} {key} are not finite (first at index {int((~finite).nonzero()[0])})")
    if kind == "latent" and values.is_floating_point() and not torch.isfinite(values.float()).all():
        raise bad(f"{int((~torch.isfinite(values.float())).any(dim=1).sum())} of {n} tokens are not finite")
    lo, hi = (int(frame_ids.min()), int(frame_ids.max()))
    if lo < 0 or hi >= frames_stored:
        raise bad(f"frame_ids must be in [0, frames_stored={frames_stored}), got {lo}..{hi}")
    if n > grid[0] * grid[1] * frames_stored:
        raise bad(f"{n} points cannot come from {frames_stored} frames of a {grid[0]}x{grid[1]} grid (one per cell at most)")
    if history and history[-1].get("num_points") != n:
        raise bad(f"its size history ends at {history[-1].get('num_points')!r} points, the file holds {n}")
