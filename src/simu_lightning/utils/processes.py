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


def process_count(trainer) -> int:
    """How many processes a trainer config runs (devices x nodes)."""
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        import torch

        gpus = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if gpus else 1
    elif isinstance(devices, str):
        devices = int(devices) if devices.isdigit() else len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, int):
        devices = len(devices)
    return int(devices) * int(trainer.get("num_nodes", 1) or 1)
