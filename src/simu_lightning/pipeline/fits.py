"""Will it fit? Before the fit, a GPU run plans its memory per GPU at the batch's real length (memory/),
prints the plan, and refuses in one line when it would not fit, naming the settings that would; the plan
also resolves parallel.activation_checkpointing=auto (on when the run would not fit without it). A CPU
run plans nothing: `python -m simu_lightning.memory` plans any run for a GPU from a CPU machine."""

from __future__ import annotations

import logging

import torch

from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.memory import check_fits, plan_memory
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.utils.errors import SimuError

log = logging.getLogger(__name__)


def longest_row(data: UnlearningDataModule) -> int:
    """Tokens in the longest encoded row the unlearning batches can hold."""
    rows = [*data.forget, *data.retain, *(data.alternate if data.alternates else [])]
    return max(len(row["input_ids"]) for row in rows)


def parallel_settings(plan: RunPlan, data: UnlearningDataModule) -> dict:
    """The run's `parallel` settings, activation checkpointing resolved: on a CUDA run from its memory plan
    (which must fit the device), elsewhere off unless set."""
    parallel = dict(plan.parallel)
    device = plan.trainer.device
    if device.type != "cuda":
        parallel["activation_checkpointing"] = parallel.get("activation_checkpointing") is True
        return parallel
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        if isinstance(plan.memory, str):
            raise SimuError(plan.memory)
        memory = plan_memory(plan.memory, length=longest_row(data), device_bytes=total)
    except SimuError as unplanned:  # an architecture the planner does not model: run unplanned, say so
        log.warning("no memory plan (%s): the run starts without one", unplanned)
        parallel["activation_checkpointing"] = parallel.get("activation_checkpointing") is True
        return parallel
    for line in memory.lines(total):
        log.info(line)
    check_fits(memory, total, where=str(device))
    parallel["activation_checkpointing"] = memory.settings.activation_checkpointing
    return parallel
