"""A GPU node simulated on a CPU machine, for the tests of what only a GPU would break.

torch says CUDA is there; `Module.to("cuda")` (and `.cuda()`) marks a model and its submodules as placed
on the GPU while their tensors stay on the CPU; Lightning's single-device strategy places the
LightningModule there at setup, as it would on a GPU node; `Module.cpu()` and `.to("cpu")` (what
Lightning's teardown does after every fit) take the mark off. The device's properties give its memory. A global forward pre-hook records, for
every forward pass of a whole model (a transformers model), whether it was placed: on a GPU node, a pass
of an unplaced model is one that ran on the CPU.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from transformers import PreTrainedModel


def _stage() -> str:
    try:
        from simu_lightning.utils.devices import current_stage
    except ImportError:  # the label is only for the failure message
        return "?"
    return current_stage()


class FakeGpu:
    def __init__(self, monkeypatch, total_memory: int = 80 * 2**30):
        self.placed: weakref.WeakSet = weakref.WeakSet()
        self.forwards: list[tuple[str, str, bool]] = []  # (stage, model class, placed)
        real_to, real_cpu = nn.Module.to, nn.Module.cpu
        fake = self

        def to(module, *args, **kwargs):
            device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
            if device is not None and device.type == "cuda":
                fake.place(module)
                return real_to(module, dtype) if dtype is not None else module
            if device is not None:
                fake.take_off(module)
            return real_to(module, *args, **kwargs)

        def cpu(module):
            fake.take_off(module)
            return real_cpu(module)

        monkeypatch.setattr(nn.Module, "to", to)
        monkeypatch.setattr(nn.Module, "cpu", cpu)
        monkeypatch.setattr(nn.Module, "cuda", lambda module, device=None: fake.place(module) or module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        properties = SimpleNamespace(name="Fake GPU", total_memory=total_memory)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        # Lightning's setup moves the module to its root device: the GPU, on a GPU node
        monkeypatch.setattr(SingleDeviceStrategy, "model_to_device", lambda strategy: fake.place(strategy.model))
        self._hook = nn.modules.module.register_module_forward_pre_hook(self._record)

    def place(self, module: nn.Module) -> None:
        self.placed.update(module.modules())

    def take_off(self, module: nn.Module) -> None:
        for sub in module.modules():
            self.placed.discard(sub)

    def _record(self, module, args) -> None:
        if isinstance(module, PreTrainedModel):
            self.forwards.append((_stage(), type(module).__name__, module in self.placed))

    def on_cpu(self) -> list[tuple[str, str]]:
        """(stage, model class) of every forward pass that ran off the GPU."""
        return sorted({(stage, kind) for stage, kind, placed in self.forwards if not placed})

    def close(self) -> None:
        self._hook.remove()
