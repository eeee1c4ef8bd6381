"""The plan of a run: every setting the stages read, built (and so checked) from the composed config
before any work, so that a bad value costs seconds rather than a fine-tuning run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.pipeline import checks
from simu_lightning.pipeline.building import build, with_resolved_precision
from simu_lightning.unlearning.methods import Method
from simu_lightning.unlearning.stopping import StoppingRule
from simu_lightning.utils.cache import cache_root

log = logging.getLogger(__name__)

# the settings a tuned file usually sets, named when a run starts (the rest are in config.yaml)
TUNED_SHOWN = ("method.optimizer.lr", "optim.rho", "trainer.max_epochs", "data.batch_size", "unlearning.stop_when")


@dataclass(frozen=True)
class RunPlan:
    cfg: DictConfig  # the composed configuration, for the nodes stages build late (benchmark, model, trainer)
    out: Path
    cache_dir: Path
    seed: int
    mode: str
    evaluation: EvaluationSettings
    attribution: AttributionSettings
    method: Method
    loss: object
    stop_when: StoppingRule | None
    robustness: object | None  # robustness.Robustness
    requests: object | None = None  # unlearning.requests.Requests: continual requests (None: one)

    @classmethod
    def of(cls, cfg: DictConfig) -> RunPlan:
        cfg = with_resolved_precision(cfg)
        checks.check(cfg)
        return cls(
            cfg=cfg,
            out=Path(cfg.paths.output_dir),
            cache_dir=cache_root(cfg.paths.cache_dir),
            seed=cfg.seed,
            mode=cfg.get("mode", "unlearn"),
            evaluation=build(cfg.evaluation),
            attribution=build(cfg.attribution),
            method=build(cfg.method),
            loss=build(cfg.loss),
            stop_when=StoppingRule.parse((cfg.get("unlearning") or {}).get("stop_when")),
            robustness=build(cfg.robustness) if cfg.get("robustness") else None,
            requests=build(requests) if (requests := (cfg.get("unlearning") or {}).get("requests")) else None,
        )


def tuned_file() -> str | None:
    """The conf/tuned/ file this run took hyperparameters from (the defaults list's optional
    `tuned: ${benchmark}_${model}_${loss}`), or None when there is none or no Hydra run around it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    runtime = HydraConfig.get().runtime
    name = runtime.choices.get("tuned")  # named even when no such file exists: it is optional
    for source in runtime.config_sources:
        if source.provider == "main" and source.path.startswith("file://"):
            if name and (Path(source.path.removeprefix("file://")) / "tuned" / f"{name}.yaml").exists():
                return f"conf/tuned/{name}.yaml"
    return None


def log_tuned(cfg: DictConfig) -> None:
    """Say which tuned file set this run's hyperparameters: a reader of method/simu.yaml never sees them."""
    from omegaconf import OmegaConf

    if (tuned := tuned_file()) is None:
        return
    values = ", ".join(f"{key} {OmegaConf.select(cfg, key)}" for key in TUNED_SHOWN)
    log.info("tuned hyperparameters from %s (command-line overrides win): %s", tuned, values)
