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


def launch_rank() -> int:
    """This process's rank as its launcher set it (torchrun, SLURM, Lightning's own launcher), known before
    any process group exists: the variables Lightning reads, in its order."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
