"""`manifest.json`: what a run ran on and with, so that a figure can be traced back and reproduced."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("simu-lightning", "torch", "transformers", "lightning", "hydra-core", "datasets")
PROJECT = Path(__file__).resolve().parents[2]
SECRET = re.compile(r"(key|token|secret|password)", re.IGNORECASE)


def command_line(argv: list[str]) -> list[str]:
    """The command, with the value of any override whose name looks like a credential left out."""
    return [
        f"{arg.split('=', 1)[0]}=<redacted>" if "=" in arg and SECRET.search(arg.split("=", 1)[0]) else arg
        for arg in [Path(argv[0]).name, *argv[1:]]
    ]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_state(folder: Path = PROJECT) -> dict:
    """The commit of the checkout the code runs from and whether its tracked files differ from it
    (null when the code does not run from a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def devices() -> dict:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"kind": "cuda", "count": len(names), "names": names}
    return {
        "kind": "cpu",
        "count": 1,
        "names": [platform.processor() or platform.machine()],
        "cpu_cores": os.cpu_count(),
    }


def manifest(plan, world_size: int, cache_keys: dict[str, str | None]) -> dict:
    """Everything but the results: code, environment, hardware, the settings that fix the numbers."""
    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "git": git_state(),
        "command": command_line(sys.argv),
        "devices": devices(),
        "world_size": world_size,
        "global_batch": {
            "forget": plan.data.batch_size,
            "retain": plan.data.batch_size * plan.data.retain_per_forget,
        },
        "dtype": plan.model.dtype,
        "precision": plan.trainer.precision,
        "seeds": {"run": plan.seed, "target_finetune": plan.model.finetune_seed},
        "cache_keys": cache_keys,
    }
