"""The plan of a run: every setting the stages read, built (and so checked) from the composed config
before any work, so that a bad value costs seconds rather than a fine-tuning run. This module and
building.py are the only ones that read the Hydra config: the stages read the plan, and the values they
derive (the run's device, the evaluation settings for this model, the output folder) are computed here
once, as litgpt's TrainArgs computes its own."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.data.datamodule import DataSettings
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.memory.setup import Setup
from simu_lightning.models.settings import ModelSettings
from simu_lightning.pipeline import checks
from simu_lightning.pipeline.building import TrainerSettings, build, memory_setup, rebased, with_resolved_precision
from simu_lightning.unlearning.methods import Method
from simu_lightning.unlearning.stopping import StoppingRule
from simu_lightning.utils.cache import cache_root
from simu_lightning.utils.errors import SimuError

log = logging.getLogger(__name__)

# the settings a tuned file usually sets, named when a run starts (the rest are in config.yaml)
TUNED_SHOWN = ("method.optimizer.lr", "optim.rho", "trainer.max_epochs", "data.batch_size", "unlearning.stop_when")


@dataclass(frozen=True)
class ProgressSettings:
    """`progress`: a log line every n steps of the fit (0: never), and every n seconds of a long phase."""

    every_n_steps: int = 10
    every_seconds: float = 30


@dataclass(frozen=True)
class RunPlan:
    out: Path  # the run's folder
    cache_dir: Path
    seed: int
    mode: str  # unlearn | evaluate | attribute | prepare (checks.MODES)
    model: ModelSettings
    trainer: TrainerSettings
    data: DataSettings
    evaluation: EvaluationSettings
    attribution: AttributionSettings
    method: Method
    loss: object
    stop_when: StoppingRule | None
    robustness: object | None  # robustness.Robustness
    benchmark: partial  # stage 1 calls it: the benchmark's loader with its settings
    parallel: dict  # parallel.* (FSDP2, mixed precision, activation checkpointing), as configured
    optim: dict  # optim.*: what the methods' optimisers read through interpolation (rho, fused, ...)
    objective: dict | None  # what a search maximises (objective.*), or None
    progress: ProgressSettings
    checkpoint_every_n_epochs: int | None  # None or 0: no checkpoints
    loggers: tuple[dict, ...]  # the loggers' nodes, resolved (pipeline/building.loggers builds them)
    rerun: bool  # run again in a folder that holds results.json
    config: dict  # the resolved configuration, as config.yaml and the dashboards record it; no stage reads it
    robustness_key: dict | None  # the attack stage's settings, as its baselines' cache key holds them
    memory: Setup | str  # what a memory plan reads (memory/), or why there can be none
    tuned_note: str | None = None  # which conf/tuned/ file set this run's hyperparameters
    requests: object | None = None  # unlearning.requests.Requests: continual requests (None: one)

    @classmethod
    def of(cls, cfg: DictConfig) -> RunPlan:
        cfg = with_resolved_precision(cfg)
        requests = (cfg.get("unlearning") or {}).get("requests")
        trainer = TrainerSettings.of(cfg.trainer)
        plan = cls(
            out=Path(cfg.paths.output_dir),
            cache_dir=cache_root(cfg.paths.cache_dir),
            seed=cfg.seed,
            mode=cfg.get("mode", "unlearn"),
            model=ModelSettings.of(plain(cfg.model)),
            trainer=trainer,
            data=DataSettings.of(plain(cfg.data)),
            evaluation=build(cfg.evaluation),
            attribution=build(cfg.attribution),
            method=build(cfg.method),
            loss=build(cfg.loss),
            stop_when=StoppingRule.parse((cfg.get("unlearning") or {}).get("stop_when")),
            robustness=build(cfg.robustness) if cfg.get("robustness") else None,
            benchmark=build(cfg.benchmark, _partial_=True),
            parallel=plain(cfg.get("parallel")),
            optim=plain(cfg.get("optim")),
            objective=plain(cfg.get("objective")) or None,
            progress=ProgressSettings(**plain(cfg.get("progress"))),
            checkpoint_every_n_epochs=(cfg.get("checkpoint") or {}).get("every_n_epochs"),
            loggers=tuple(plain(node) for node in (cfg.get("logger") or {}).values() if node and "_target_" in node),
            rerun=bool(cfg.get("rerun", False)),
            config=resolved_config(cfg),
            robustness_key=plain(cfg.robustness) if cfg.get("robustness") else None,
            memory=memory_setup_or_why(cfg) if trainer.device.type == "cuda" else "planned on a CUDA device only",
            tuned_note=tuned_note(cfg),
            requests=build(requests) if requests else None,
        )
        checks.check(plan)
        return plan

    def evaluation_for(self, benchmark) -> EvaluationSettings:
        """The settings every evaluation of this run's model on `benchmark` runs with (its length, the
        benchmark's generation length unless evaluation.max_new_tokens sets one)."""
        return self.evaluation.for_model(self.model.max_length, benchmark.max_new_tokens)

    def at(self, out: Path) -> RunPlan:
        """The same run writing into `out`, without checkpoints (a continual request's own folder: a
        sequence started again starts from the target): the trainer's and the loggers' folders move too."""
        return dataclasses.replace(
            self,
            out=out,
            trainer=self.trainer.at(out, self.out),
            loggers=tuple(rebased(node, self.out, out) for node in self.loggers),
            checkpoint_every_n_epochs=None,
            config={**rebased(self.config, self.out, out), "checkpoint": {"every_n_epochs": None}},
        )


def plain(node) -> dict:
    """A config node as plain, resolved data ({} for a missing node)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def resolved_config(cfg: DictConfig) -> dict:
    """The whole configuration, resolved, as config.yaml records it (Hydra's own node left out)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)


def memory_setup_or_why(cfg: DictConfig) -> Setup | str:
    """What the memory planner reads of this run (a GPU run plans its memory before the fit), or why
    there can be no plan (an architecture the planner does not model: the run starts without one)."""
    try:
        return memory_setup(cfg)
    except SimuError as unplanned:
        return str(unplanned)


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


def tuned_note(cfg: DictConfig) -> str | None:
    """Which tuned file set this run's hyperparameters, and their values: a reader of method/simu.yaml
    never sees them."""
    if (tuned := tuned_file()) is None:
        return None
    values = ", ".join(f"{key} {OmegaConf.select(cfg, key)}" for key in TUNED_SHOWN)
    return f"tuned hyperparameters from {tuned} (command-line overrides win): {values}"
