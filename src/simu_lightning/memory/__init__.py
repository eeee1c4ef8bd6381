"""Will it fit? The memory an unlearning run holds per GPU, planned from its config (plan.py), and the
command that prints it: `python -m simu_lightning.memory model=llama2_7b method=simu [--json]`."""

from simu_lightning.memory.fits import alternatives, check_fits, longest_length
from simu_lightning.memory.parameters import critical_count
from simu_lightning.memory.plan import CUDA_CONTEXT, GiB, MemoryPlan, plan_memory, resolve_activation_checkpointing
from simu_lightning.memory.setup import resolve_precision

__all__ = [
    "CUDA_CONTEXT",
    "GiB",
    "MemoryPlan",
    "alternatives",
    "check_fits",
    "critical_count",
    "longest_length",
    "plan_memory",
    "resolve_activation_checkpointing",
    "resolve_precision",
]
