"""Model CPU offload for the chunked loop: one model on the accelerator at a time, weights kept in
pinned host memory.

diffusers' ``enable_model_cpu_offload`` (accelerate's ``cpu_offload_with_hook``) moves a model back
to the CPU whenever the next model of its chain runs: a device-to-host copy into fresh pageable
memory, and later a host-to-device copy from pageable memory. A long video runs the same models
chunk after chunk (VAE, transformer, VAE, depth, ...), so the 10 GB transformer would travel out and
back in every chunk at pageable-copy speed. At inference the weights never change, so here the host
copy is made once, in pinned (page-locked) memory: *releasing* a model re-points its parameters at
their pinned copies (no copy at all, the device memory is simply freed), and *activating* it is one
asynchronous host-to-device copy per tensor at full bus bandwidth.

``PinnedOffload`` gives every managed module an ``_hf_hook`` object, the attribute diffusers reads
to find the execution device (``DiffusionPipeline._execution_device``, ``WanVAECodec.device``) and
to trigger a move before ``encode`` / ``decode`` (``diffusers.utils.apply_forward_hook``), plus a
forward pre-hook; whichever module is about to run is activated and the others are released.
Modify weights (e.g. fuse a LoRA) before enabling it: later changes would be lost on release.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["PinnedOffload", "execution_device"]


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` runs: the offload hook's execution device when it is offloaded (its weights
    then rest on the host between calls; accelerate's hooks and ``PinnedOffload`` both say so in
    ``_hf_hook.execution_device``), else where its weights are."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else next(module.parameters()).device


class _Hook:
    """What diffusers looks for on an offloaded module: ``execution_device`` and ``pre_forward``."""

    def __init__(self, owner: "PinnedOffload", name: str) -> None:
        self.owner, self.name = owner, name
        self.execution_device = owner.device

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        self.owner.activate(self.name)
        return args, kwargs


class PinnedOffload:
    """Keep ``modules`` on the host (pinned when a CUDA device is the target) and move exactly one
    of them to ``device`` when it is about to run (see the module docstring). A name may stand for
    several modules that run together (the transformer and its side branch): they move as one."""

    def __init__(self, modules: dict[str, nn.Module | Sequence[nn.Module | None] | None], device: torch.device | str) -> None:
        self.device = torch.device(device)
        groups = {name: [m] if isinstance(m, nn.Module) or m is None else list(m) for name, m in modules.items()}
        self.modules = {name: [m for m in group if m is not None] for name, group in groups.items()}
        self.modules = {name: group for name, group in self.modules.items() if group}
        self.active: str | None = None
        pin = self.device.type == "cuda"
        self._host: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # name -> (param or buffer, host copy)
        self._handles = []
        for name, group in self.modules.items():
            pairs = []
            for module in group:
                module.to("cpu")
                for t in list(module.parameters()) + list(module.buffers()):
                    host = t.data.pin_memory() if pin else t.data
                    t.data = host
                    pairs.append((t, host))
                module._hf_hook = _Hook(self, name)
                self._handles.append(module.register_forward_pre_hook(lambda m, args, name=name: self.activate(name)))
            self._host[name] = pairs

    def activate(self, name: str) -> None:
        """Release the active module (free its device copy) and copy ``name``'s weights to the device."""
        if name == self.active:
            return
        self.release()
        for t, host in self._host[name]:
            t.data = host.to(self.device, non_blocking=True)
        self.active = name

    def release(self) -> None:
        """Point the active module's tensors back at their host copies (no copy: weights are constant)."""
        if self.active is not None:
            for t, host in self._host[self.active]:
                t.data = host
            self.active = None

    def remove(self, device: torch.device | str | None = None) -> None:
        """Undo: remove the hooks and move every module to ``device`` (default: stay on the host)."""
        self.release()
        for handle in self._handles:
            handle.remove()
        for group in self.modules.values():
            for module in group:
                del module._hf_hook
                if device is not None:
                    module.to(device)
        self._handles, self.modules, self._host = [], {}, {}
