"""The attack stage (`robustness`), as two hand-offs of frozen records: `attack_target` before unlearning
(each family's baselines on the target and the retain model, cached for the next run of a sweep) and
`attack_unlearned` after it (each family on the unlearned model, reading what its baselines found). The
families keep nothing between the two: what `before` found and `after` reads travels in AttackBaselines.
mode=evaluate attacks a checkpoint with the same `attack_unlearned`, without baselines."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from simu_lightning.evaluation import Evaluator
from simu_lightning.evaluation.before_cache import attack_baselines_path
from simu_lightning.models.target import load_retain_model
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.robustness import AttackContext
from simu_lightning.utils.cache import source_identity
from simu_lightning.utils.devices import stage
from simu_lightning.utils.files import atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackBaselines:
    """What the attacks found before unlearning (on the target, and on the retain model)."""

    results: dict  # {attack: {split: {metric: value}}}
    rows: list[dict]  # per-example rows, `stage` = the attack's name
    found: dict  # {family: what its attack on the unlearned model reads} (JSON; MIA: the retain model's scores)
    seconds: float

    def to_json(self) -> dict:
        return {"results": self.results, "rows": self.rows, "families": self.found}

    @classmethod
    def from_json(cls, data: dict, seconds: float) -> AttackBaselines:
        return cls(data["results"], data["rows"], data["families"], seconds)


@dataclass(frozen=True)
class Attacked:
    """Every attack's findings (the baselines' first, then the unlearned model's) and their rows."""

    results: dict
    rows: list[dict]
    seconds: float  # the attacks on the unlearned model


def baselines_cache(plan: RunPlan, models, evaluator: Evaluator) -> Path | None:
    """Where the attacks' baselines on this target are cached (None: evaluation.cache_before=false)."""
    if not plan.evaluation.cache_before:
        return None
    retain = models.target.retain_model
    return attack_baselines_path(
        plan.cache_dir,
        models.target.target_id,
        source_identity(retain, plan.cache_dir) if retain else None,
        evaluator,
        plan.model.dtype,
        plan.trainer.cache_devices,
        plan.robustness_key,
    )


def attack_target(plan: RunPlan, models, evaluator: Evaluator) -> AttackBaselines | None:
    """The attack families' baselines on the target, on the device the fit will use; read from the cache
    when a run of this target already made them (none depends on the seed or the method)."""
    if plan.robustness is None:
        return None
    start = time.perf_counter()
    cached = baselines_cache(plan, models, evaluator)
    if cached is not None and cached.exists():
        log.info("reusing the cached attack baselines on the target (%s)", cached.parent)
        return AttackBaselines.from_json(json.loads(cached.read_text()), time.perf_counter() - start)
    context = AttackContext(models.model, evaluator, plan.trainer.single_process(plan.out))
    retain_model = None
    if plan.robustness.needs_retain_model and models.target.retain_model is not None:
        retain_model, _ = load_retain_model(models.target, plan.model.dtype)
    found = plan.robustness.before(context, retain_model)
    baselines = AttackBaselines(context.results, context.rows, found, time.perf_counter() - start)
    if cached is not None:
        with atomic(cached.parent, keep_existing=True) as tmp:
            tmp.mkdir()
            (tmp / cached.name).write_text(json.dumps(baselines.to_json()))
    return baselines


@stage("attacks")
def attack_unlearned(plan: RunPlan, baselines: AttackBaselines | None, evaluator: Evaluator, model) -> Attacked | None:
    """Every family on copies of `model` (the unlearned model, or mode=evaluate's checkpoint), each reading
    what its baselines found; their findings after the baselines'."""
    if plan.robustness is None:
        return None
    start = time.perf_counter()
    context = AttackContext(
        model,
        evaluator,
        plan.trainer.single_process(plan.out),
        results=copy.deepcopy(baselines.results) if baselines else {},
        rows=list(baselines.rows) if baselines else [],
    )
    plan.robustness.after(context, baselines.found if baselines else {})
    return Attacked(context.results, context.rows, time.perf_counter() - start)
