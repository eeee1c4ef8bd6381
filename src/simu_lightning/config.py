"""Checks of the composed configuration that Hydra's schema cannot express, run before any work so
that a bad setting costs seconds, not a fine-tuning run. Each names the setting and what is valid."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from simu_lightning.attribution.callback import check_method, check_steps
from simu_lightning.attribution.neurons import check_threshold
from simu_lightning.attribution.selection import check_selection
from simu_lightning.distributed import is_launched_externally
from simu_lightning.errors import SimuError
from simu_lightning.unlearning.methods import check_trainable
from simu_lightning.unlearning.stopping import StoppingRule

MODES = ("unlearn", "evaluate", "attribute")
ONE_PROCESS = (
    "robustness: the attack stage runs in one process; unlearn with several, then attack the saved model: "
    "python run.py mode=evaluate model.source=<run>/unlearned_model robustness=standard"
)


def _positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise SimuError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check(cfg: DictConfig) -> None:
    if cfg.get("mode", "unlearn") not in MODES:
        raise SimuError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    check_trainable(cfg.method.get("trainable", "all"))
    check_threshold(cfg.attribution.t)
    check_steps(cfg.attribution.m)
    check_method(cfg.attribution.get("quadrature", "riemann"), cfg.attribution.get("mode", "layerwise"))
    check_selection(cfg.attribution.get("selection", "integrated_gradients"))
    if cfg.attribution.get("selection") == "planted" and not (cfg.benchmark.get("planted") or {}).get("fraction"):
        raise SimuError(
            "attribution.selection=planted is the oracle mask of a planted target: set benchmark.planted.fraction"
        )
    if not isinstance(cfg.attribution.get("exclude_retain", False), bool):
        raise SimuError(f"attribution.exclude_retain must be true or false, got {cfg.attribution.exclude_retain!r}")
    _positive("method.optimizer.lr", cfg.method.optimizer.get("lr"))
    _positive("data.batch_size", cfg.data.batch_size, integer=True)
    _positive("data.retain_per_forget", cfg.data.get("retain_per_forget", 1), integer=True)
    _positive("trainer.max_epochs", cfg.trainer.get("max_epochs"), integer=True)
    _positive("evaluation.batch_size", cfg.evaluation.batch_size, integer=True)
    every = cfg.evaluation.get("every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise SimuError(
            f"evaluation.every_n_steps must be null (each epoch's end), 0 (never) or a positive integer, got {every!r}"
        )
    dtype = cfg.evaluation.get("dtype")
    if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise SimuError(f"evaluation.dtype must be null or a torch dtype (bfloat16, float16, float32), got {dtype!r}")
    shots = cfg.evaluation.get("mmlu_num_fewshot", 5)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise SimuError(f"evaluation.mmlu_num_fewshot must be an integer >= 0, got {shots!r}")
    optim = cfg.get("optim") or {}
    rho = optim.get("rho", "auto")
    if rho != "auto" and (isinstance(rho, (bool, str)) or rho < 0):
        raise SimuError(f"optim.rho must be a number >= 0 or auto, got {rho!r}")
    if not 0 < optim.get("target_win_rate", 0.3) < 1:
        raise SimuError(f"optim.target_win_rate must be in (0, 1), got {optim.get('target_win_rate')!r}")
    _positive("optim.calibration_step", optim.get("calibration_step", 1), integer=True)
    if optim.get("fused", "auto") not in (True, False, "auto"):
        raise SimuError(f"optim.fused must be true, false or auto, got {optim.get('fused')!r}")
    StoppingRule.parse((cfg.get("unlearning") or {}).get("stop_when"))
    masked = cfg.method.get("critical_neuron_mask", False) and cfg.method.get("trainable", "all") != "attention"
    if cfg.get("mode") == "attribute" and not masked:
        raise SimuError(f"mode=attribute: method {cfg.method.name!r} selects no neurons (use method=simu)")
    if cfg.get("robustness") and several_processes(cfg):
        raise SimuError(ONE_PROCESS)


def several_processes(cfg: DictConfig) -> bool:
    """Whether the run uses several processes (a sharded or multi-device trainer, or torchrun / srun)."""
    trainer = cfg.trainer
    several = str(trainer.get("devices", 1)) not in ("1", "auto") or int(trainer.get("num_nodes", 1) or 1) > 1
    return several or is_launched_externally()
