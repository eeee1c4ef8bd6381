"""A plan that does not fit: refused in one line naming the changes of settings that would make it fit,
each checked by planning again; and the longest rows that fit."""

from __future__ import annotations

import dataclasses

from hydra.utils import get_class

from simu_lightning.optim.compact import CompactState
from simu_lightning.utils.errors import SimuError
from simu_lightning.memory.plan import GiB, PARTS, MemoryPlan, plan_setup


def check_fits(plan: MemoryPlan, device_bytes: int, where: str = "the GPU") -> None:
    """Refuse, in one line, a plan that does not fit `device_bytes`, naming the settings (and values) that
    would make it fit, each checked by planning again."""
    if plan.fits(device_bytes):
        return
    parts = ", ".join(
        f"{label} {getattr(plan, name) / GiB:.1f}" for name, label in PARTS.items() if getattr(plan, name)
    )
    fixes = alternatives(plan, device_bytes)
    advice = (
        "fits with " + ", or ".join(fixes)
        if fixes
        else "no change tried fits (activation checkpointing, bf16, FSDP over up to 8 GPUs, a smaller batch)"
    )
    raise SimuError(
        f"memory plan: {plan.total / GiB:.1f} GiB per GPU > {device_bytes / GiB:.1f} GiB on {where} "
        f"({parts} GiB); {advice}"
    )


def alternatives(plan: MemoryPlan, device_bytes: int) -> list[str]:
    """The changes of settings with which the plan fits `device_bytes`: each alone, or, when none does,
    each with activation checkpointing. Devices and batch size: the fewest devices, the largest batch."""
    found = _fixes(plan, device_bytes, {})
    if not found and not plan.settings.activation_checkpointing:
        on = {"activation_checkpointing": True}
        found = [f"parallel.activation_checkpointing=true with {fix}" for fix in _fixes(plan, device_bytes, on)]
    return found


def _fixes(plan: MemoryPlan, device_bytes: int, base: dict) -> list[str]:
    setup, s = plan.setup, plan.settings

    def fits(**changes) -> bool:
        changed = dataclasses.replace(setup, **base, **changes)
        return plan_setup(changed, s.length, s.device, device_bytes, s.critical_share).fits(device_bytes)

    options = []
    if not base and not s.activation_checkpointing:
        options.append(("parallel.activation_checkpointing=true", {"activation_checkpointing": True}))
    if s.precision == "32-true" and s.device == "cuda":
        options.append(("trainer.precision=bf16-mixed", {"precision": "bf16-mixed"}))
    if setup.fsdp and setup.mixed_precision is None and s.device == "cuda":
        options.append(("parallel.mixed_precision=bf16", {"mixed_precision": "bf16"}))
    if not s.compact_state and issubclass(get_class(setup.method["optimizer"]["_target_"]), CompactState):
        optimizer = {**setup.method["optimizer"], "compact_state": True}
        options.append(("optim.compact_state=true", {"method": {**setup.method, "optimizer": optimizer}}))
    found = [label for label, changes in options if fits(**changes)]
    for devices in (2, 4, 8):
        if devices > setup.devices and setup.batch_size % (devices * setup.num_nodes) == 0:
            if fits(devices=devices, fsdp=True):
                found.append(f"trainer.devices={devices}" + ("" if setup.fsdp else " with trainer=fsdp"))
                break
    batch = setup.batch_size // 2
    while batch >= setup.processes:
        if batch % setup.processes == 0 and fits(batch_size=batch):
            found.append(f"data.batch_size={batch}")
            break
        batch //= 2
    return found


def longest_length(plan: MemoryPlan, device_bytes: int) -> int:
    """The longest rows (up to model.max_length, or the plan's length if longer) with which the plan's
    settings fit; 0 when none do."""
    s = plan.settings

    def fits(length: int) -> bool:
        return plan_setup(plan.setup, length, s.device, device_bytes, s.critical_share).fits(device_bytes)

    low, high = 0, max(s.length, plan.setup.max_length)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
