"""Will it fit? What an unlearning run holds per GPU, planned from the composed config before any weight
is loaded, so that a run that cannot fit refuses at start-up in one line (`check_fits`).

Counted per process, in bytes:
1. weights, as loaded (model.dtype; bf16 under a *-true 16-bit precision), sharded under FSDP;
2. gradients of the trainable parameters, in the parameters' dtype, sharded likewise;
3. optimiser state: the optimiser's moments per trainable parameter (float32 in the masked optimisers,
   with a float32 master copy of a bf16 parameter; like the parameter in torch's own); a masked down
   projection (or, under a head mask, q/k/v/o) with compact state keeps them for its critical columns
   only. How many neurons are critical is known only after the attribution, so the plan assumes a share
   (`critical_share`) and reports the worst case (every neuron critical) beside it;
4. the frozen copy of the target that some losses need (NPO, RMU, ...): its weights;
5. activations: the peak of the step's passes (activations.py) or of the optimiser's update;
6. under FSDP2 the parameters all-gathered for the layers in flight (two decoder layers, and the root's
   embeddings and head, which stay gathered from the forward to the backward) and the unsharded gradients
   of the unit being reduced with their float32 reduce-scatter buffer; under DDP its gradient buckets;
7. on a GPU, the CUDA context and the allocator's reserve (CUDA_CONTEXT).

The parts are summed: a first-order step runs its forward while the last step's gradients are still held
(UnlearningModule zeroes them just before the backward), so its peak is that sum; a second-order step
frees them before the GNB pass, so its total is high by up to the gradients.

FSDP2 pads a parameter's dim 0 to a multiple of the shard count: every rank holds ceil(dim0 / shards)
rows, the figure used for every sharded tensor. Shards are the devices of one node (HSDP replicates across
nodes, distributed.parallelize). The optimisers' 0-d step counters stay on the CPU (torch's AdamW unless
capturable, Sophia always) and are left out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from simu_lightning.memory.activations import (
    Batches,
    Pass,
)
from simu_lightning.utils.errors import SimuError
from simu_lightning.memory.parameters import Model, ParameterCounts, _loss_class
from simu_lightning.memory.setup import Setup, positive_count, resolve_precision

GiB = 2**30
CUDA_CONTEXT = GiB  # the CUDA context, cuBLAS workspaces and what the caching allocator keeps in reserve
PARTS = {  # the plan's byte counts, in the order they are printed, and their labels
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_state": "optimiser state",
    "frozen_copy": "frozen copy",
    "activations": "activations",
    "parallel_buffers": "FSDP / DDP buffers",
    "cuda_context": "CUDA context",
}


def resolve_activation_checkpointing(
    setup: Setup,
    *,
    length: int | None = None,
    device_bytes: int | None = None,
    critical_share: float = 0.1,
) -> bool:
    """parallel.activation_checkpointing; "auto": on when the plan without it does not fit `device_bytes`
    (never on a CPU, where no device size is given)."""
    if setup.activation_checkpointing != "auto":
        return setup.activation_checkpointing
    if device_bytes is None:
        return False
    unchecked = dataclasses.replace(setup, activation_checkpointing=False)
    return not plan_setup(unchecked, length, "cuda", device_bytes, critical_share).fits(device_bytes)


@dataclass(frozen=True)
class PlanSettings:
    """What the plan assumed."""

    model: str
    method: str
    optimizer: str
    loss: str
    device: str
    precision: str
    compute: str  # fp32, autocast or bf16 (Numerics.mode)
    activation_checkpointing: bool
    attention: str
    length: int
    forget_rows: int  # per process
    retain_rows: int  # per process
    processes: int
    shards: int
    mixed_precision: str | None
    critical_share: float
    compact_state: bool


@dataclass(frozen=True)
class MemoryPlan:
    settings: PlanSettings
    parameters: ParameterCounts
    weights: int
    gradients: int
    optimizer_state: int
    frozen_copy: int
    activations: int
    parallel_buffers: int
    cuda_context: int
    optimizer_state_worst: int  # every neuron (and head) critical
    hessian_pass: Pass | None  # Sophia's GNB estimate
    loss_pass: Pass
    update: int  # the optimiser step's temporaries
    setup: Setup = field(compare=False, repr=False)

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in PARTS)

    def fits(self, device_bytes: int) -> bool:
        return self.total <= device_bytes

    def to_dict(self) -> dict:
        """The plan as JSON-ready values: every byte and parameter count an integer; `bytes` sums to `total`."""
        passes = {"loss": dataclasses.asdict(self.loss_pass), "update": self.update}
        if self.hessian_pass is not None:
            passes["hessian_estimate"] = dataclasses.asdict(self.hessian_pass)
        return {
            "total": self.total,
            "bytes": {name: getattr(self, name) for name in PARTS},
            "optimizer_state_worst_case": self.optimizer_state_worst,
            "parameters": dataclasses.asdict(self.parameters),
            "settings": dataclasses.asdict(self.settings),
            "passes": passes,
        }

    def lines(self, device_bytes: int | None = None) -> list[str]:
        """The plan as a table, with whether it fits `device_bytes`."""
        s, p = self.settings, self.parameters
        rows = f"{s.forget_rows} forget + {s.retain_rows} retain rows x {s.length} tokens per process"
        processes = f"{s.processes} process{'es' if s.processes > 1 else ''}"
        sharding = f"FSDP over {s.shards}" if s.shards > 1 else "unsharded"
        lines = [
            f"memory plan per GPU: model {s.model}, method {s.method} ({s.optimizer}), loss {s.loss}",
            f"  {s.device}, precision {s.precision} (computing {s.compute}), activation checkpointing "
            f"{'on' if s.activation_checkpointing else 'off'}, attention {s.attention}",
            f"  {rows}, {processes}, {sharding}, critical share {s.critical_share:g} (assumed), "
            f"compact state {'on' if s.compact_state else 'off'}",
            f"  parameters {p.total:,}, trainable {p.trainable:,} "
            f"(attention {p.attention:,}, down projections {p.down_proj:,})",
        ]
        for name, label in PARTS.items():
            note = ""
            if name == "optimizer_state":
                note = f"  (every neuron critical: {gib(self.optimizer_state_worst)})"
            if name == "activations":
                note = f"  ({self.peak_phase()})"
            lines.append(f"  {label:<20}{gib(getattr(self, name)):>12}{note}")
        verdict = ""
        if device_bytes is not None:
            verdict = f" of {gib(device_bytes)}: {'fits' if self.fits(device_bytes) else 'does NOT fit'}"
        lines.append(f"  {'total':<20}{gib(self.total):>12}{verdict}")
        return lines

    def peak_phase(self) -> str:
        phases = {"loss pass": self.loss_pass.total, "optimiser update": self.update}
        if self.hessian_pass is not None:
            phases["GNB pass"] = self.hessian_pass.total
        return "peak of " + ", ".join(f"{name} {gib(value)}" for name, value in phases.items())

    def __str__(self) -> str:
        return "\n".join(self.lines())


def gib(value: int) -> str:
    return f"{value / GiB:.2f} GiB"


def plan_memory(
    setup: Setup,
    *,
    length: int | None = None,
    device_bytes: int | None = None,
    critical_share: float = 0.1,
    device: str | None = None,
) -> MemoryPlan:
    """The memory plan of a run's Setup (pipeline/building.py's memory_setup), for rows of `length` tokens (the longest encoded row;
    None: model.max_length). A plan for a GPU (`device_bytes` given, or `device="cuda"`) resolves
    precision "auto" to bf16-mixed and counts the CUDA context; activation checkpointing "auto" is on
    when the plan without it does not fit `device_bytes`."""
    if not 0 < critical_share <= 1:
        raise SimuError(f"memory plan: the critical share must be in (0, 1], got {critical_share}")
    device = device or ("cuda" if device_bytes is not None else _run_device(setup.accelerator))
    return plan_setup(setup, length, device, device_bytes, critical_share)


def _run_device(accelerator: str) -> str:
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def plan_setup(
    setup: Setup, length: int | None, device: str, device_bytes: int | None, critical_share: float
) -> MemoryPlan:
    """The plan of `setup` (see `plan_memory`)."""
    checkpointing = setup.activation_checkpointing
    if checkpointing == "auto":
        unchecked = dataclasses.replace(setup, activation_checkpointing=False)
        off = plan_setup(unchecked, length, device, device_bytes, critical_share)
        if device_bytes is None or off.fits(device_bytes):
            return off
        checkpointing = True
    length = setup.max_length if length is None else positive_count(length, "length")
    precision = resolve_precision(setup.precision, device, setup.mixed_precision, setup.fsdp)
    model = Model.of(setup, precision, critical_share)
    weights = model.sharded(model.names, setup.shards)
    frozen = weights if _loss_class(setup.loss).needs_frozen_target else 0
    numerics = model.numerics(setup, precision)
    forget = math.ceil(setup.batch_size / setup.processes)
    batches = Batches(forget, forget * setup.retain_per_forget, length)
    hessian, loss = model.passes(setup, numerics, batches, bool(checkpointing))
    update = model.update_bytes(setup, device)
    settings = PlanSettings(
        model=setup.name,
        method=model.method.name,
        optimizer=model.optimizer.__name__,
        loss=setup.loss.rsplit(".", 1)[-1],
        device=device,
        precision=precision,
        compute=numerics.mode,
        activation_checkpointing=bool(checkpointing),
        attention=setup.shape.attn_implementation,
        length=length,
        forget_rows=batches.forget,
        retain_rows=batches.retain,
        processes=setup.processes,
        shards=setup.shards,
        mixed_precision=setup.mixed_precision if setup.fsdp else None,
        critical_share=critical_share,
        compact_state=model.compact,
    )
    return MemoryPlan(
        settings=settings,
        parameters=model.counts(),
        weights=weights,
        gradients=model.sharded(model.trainable, setup.shards),
        optimizer_state=model.state_bytes(setup, critical_share),
        frozen_copy=frozen,
        activations=max(loss.total, hessian.total if hessian else 0, update),
        parallel_buffers=model.parallel_bytes(setup, numerics),
        cuda_context=CUDA_CONTEXT if device == "cuda" else 0,
        optimizer_state_worst=model.state_bytes(setup, 1.0),
        hessian_pass=hessian,
        loss_pass=loss,
        update=update,
        setup=setup,
    )
