"""Where this process stands among the run's processes (torch.distributed, torchrun, SLURM)."""

from __future__ import annotations

import os

import torch.distributed as dist


def is_launched_externally() -> bool:
    """Started as one of several processes by torchrun or SLURM (rather than launched by Lightning at fit)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
