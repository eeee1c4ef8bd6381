"""Where a model computes, and in which precision. One rule: every model that a stage scores is on the run's
device first.

Lightning's single-device strategy moves the LightningModule to the CPU in its teardown, which runs
after every fit and before `on_fit_end` (lightning.pytorch.strategies.Strategy.teardown). So on a GPU
node the model that a fit leaves behind, and every copy made of it, sits on the CPU until a stage puts
it back: `on_device` is how every stage does.

`resolved_precision` is the trainer precision a device runs (`auto`: bf16-mixed on a CUDA GPU, 32-true on a
CPU), shared by the run and the memory planner. `ForwardDevices` records the device of every forward pass
of a whole model, by stage: the device check (perf/device_check.sh, through SIMU_FORWARD_DEVICES) asserts
that no stage ran on the CPU.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

RECORD_ENV = "SIMU_FORWARD_DEVICES"  # a JSON file: {stage: {device type: forward passes}}

_stage: contextvars.ContextVar[str] = contextvars.ContextVar("simu_stage", default="")


def is_sharded(model: nn.Module) -> bool:
    """Whether the model's parameters are FSDP2 shards (DTensors)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def on_device(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """`model` on `device` (moved in place, as `Module.to` does; None: left where it is). A sharded
    model stays where the strategy put its shards: every process holds its own."""
    if device is None or is_sharded(model):
        return model
    return model.to(device)


def resolved_precision(
    precision: str, device_type: str, mixed_precision: str | None = None, sharded: bool = False, bf16: bool = True
) -> str:
    """trainer.precision as it runs. `auto`: bf16-mixed on a CUDA GPU with bf16 (bf16 matmuls under autocast,
    float32 weights, gradients and optimiser state), 32-true elsewhere (a CPU's figures stay float32's). On
    one device parallel.mixed_precision=bf16 asks for bf16-mixed too (sharded, it is FSDP2's bf16 gathers)."""
    if mixed_precision == "bf16" and not sharded and precision in ("auto", "32-true", "32"):
        return "bf16-mixed"
    if precision == "auto":
        return "bf16-mixed" if device_type == "cuda" and bf16 else "32-true"
    return precision


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Label the forward passes inside with the stage `name`, nested in the enclosing stage's label
    ("unlearn/after"), for `ForwardDevices`; also a decorator of a stage function."""
    outer = _stage.get()
    token = _stage.set(f"{outer}/{name}" if outer else name)
    try:
        yield
    finally:
        _stage.reset(token)


def current_stage() -> str:
    return _stage.get() or "run"


class ForwardDevices:
    """Counts, by stage and device type, the forward passes of whole models (transformers' models; a pass
    counts once, not again for the base model inside a causal LM, nor for any submodule). Global forward
    hooks, on only while entered."""

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self._handles = []
        self._depth = 0  # whole models entered and not yet left (a causal LM holds its base model)

    @staticmethod
    def _whole(module: nn.Module) -> bool:
        from transformers import PreTrainedModel

        return isinstance(module, PreTrainedModel)

    def _enter(self, module: nn.Module, args) -> None:
        if not self._whole(module):
            return
        self._depth += 1
        parameter = next(module.parameters(), None)
        if self._depth == 1 and parameter is not None:
            self.counts[current_stage()][parameter.device.type] += 1

    def _leave(self, module: nn.Module, args, output) -> None:
        if self._whole(module):
            self._depth -= 1

    def __enter__(self) -> ForwardDevices:
        hooks = nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._enter),
            hooks.register_module_forward_hook(self._leave, always_call=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: dict(counts) for name, counts in self.counts.items()}

    def off_device(self, device_type: str) -> dict[str, dict[str, int]]:
        """The stages that ran forward passes on another device type than `device_type`, and how many."""
        return {
            name: {kind: n for kind, n in counts.items() if kind != device_type}
            for name, counts in self.as_dict().items()
            if set(counts) - {device_type}
        }


@contextmanager
def recorded_forwards() -> Iterator[ForwardDevices | None]:
    """When SIMU_FORWARD_DEVICES names a file, record every forward pass's device and add the counts
    to that file at the end (several runs of one check add up); otherwise record nothing."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        yield None
        return
    with ForwardDevices() as recorder:
        try:
            yield recorder
        finally:
            file = Path(path)
            total = json.loads(file.read_text()) if file.exists() else {}
            for name, counts in recorder.as_dict().items():
                for kind, n in counts.items():
                    total.setdefault(name, {})[kind] = total.get(name, {}).get(kind, 0) + n
            file.write_text(json.dumps(total, indent=1, sort_keys=True))
