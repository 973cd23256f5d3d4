"""Per-stage wall-clock timers with CUDA synchronisation, shared by the memories and the pipeline."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

__all__ = ["StageTimer", "synchronize"]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work on ``device`` so that wall-clock times mean something."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Records seconds per named stage, one record (a dict) per call.

    ``with timer.record("read") as rec:`` opens a record; ``with timer.stage("project"):`` inside it
    adds time to a stage. ``history`` keeps every record; ``last`` is the newest one.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.history: list[dict[str, float]] = []
        self._open: dict[str, float] | None = None

    @contextmanager
    def record(self, call: str):
        rec: dict[str, float] = {}
        self._open = rec
        try:
            yield rec
        finally:
            self._open = None
            self.history.append({"call": call, **rec})  # type: ignore[dict-item]

    @contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            dt = time.perf_counter() - t0
            if self._open is not None:
                self._open[name] = self._open.get(name, 0.0) + dt

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def totals(self, call: str | None = None) -> dict[str, float]:
        """Sum of each stage over all records (of one call kind if given)."""
        out: dict[str, float] = {}
        for rec in self.history:
            if call is not None and rec.get("call") != call:
                continue
            for k, v in rec.items():
                if k != "call":
                    out[k] = out.get(k, 0.0) + float(v)
        return out
