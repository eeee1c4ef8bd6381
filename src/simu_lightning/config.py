"""Checks of the composed configuration that Hydra's schema cannot express, run before any work so
that a bad setting costs seconds, not a fine-tuning run."""
from __future__ import annotations

from omegaconf import DictConfig

from simu_lightning.attribution.callback import check_steps
from simu_lightning.attribution.neurons import check_threshold
from simu_lightning.errors import SimuError

METHODS = ("fo", "so", "simu")


def check(cfg: DictConfig) -> None:
    if cfg.method.name not in METHODS:
        raise SimuError(f"unknown method {cfg.method.name!r}: choose one of {', '.join(METHODS)} (method=...)")
    check_threshold(cfg.attribution.t)
    check_steps(cfg.attribution.m)
    if cfg.data.batch_size < 1:
        raise SimuError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
