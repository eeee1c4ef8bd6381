"""Stage 3: what the unlearned model is compared with, all measured before unlearning: the retain model's
forget truth ratios (TOFU's forget quality), the base model (`evaluation.base`), a planted target's
clean model, and the attacks' baselines on the target (`robustness`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.evaluation import Evaluation, Evaluator
from simu_lightning.evaluation.before_cache import attack_baselines_path
from simu_lightning.evaluation.harness import harness_results
from simu_lightning.evaluation.retain_model import retain_model_rows
from simu_lightning.models.target import load_base, load_retain_model
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.prepare import Models
from simu_lightning.robustness import AttackContext
from simu_lightning.utils.cache import source_identity
from simu_lightning.utils.devices import on_device, stage
from simu_lightning.utils.files import atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baselines:
    evaluator: Evaluator  # every later evaluation goes through it
    retain_rows: list[dict]  # the retain model's forget truth ratios, one row per forget example
    base: Evaluation | None  # the model the target was fine-tuned from (evaluation.base)
    clean: Evaluation | None  # a planted target's clean model
    attacks: AttackContext | None  # the attacks' findings on the target (robustness)
    harness: dict | None  # lm-eval's tasks on the target (evaluation.lm_eval.tasks)
    seconds: dict[str, float]


def evaluator_of(plan: RunPlan, benchmark: Benchmark, models: Models, retain_rows: list[dict]) -> Evaluator:
    settings = plan.evaluation.for_model(plan.model.max_length, benchmark.max_new_tokens)
    ratios = [row["truth_ratio"] for row in retain_rows] or None
    return Evaluator(models.tokenizer, models.fmt, benchmark, settings, ratios, plan.trainer.device)


def evaluate_base(plan: RunPlan, models: Models, evaluator: Evaluator) -> Evaluation | None:
    """The model before it was fine-tuned into the target (what it knew to begin with); rank 0 alone
    reports it, so the other processes of a sharded run do not evaluate it too."""
    if not plan.evaluation.base or rank_zero_only.rank != 0:
        return None
    if models.target.base is None:
        log.info("evaluation.base: the target was not fine-tuned here, so there is no base model to evaluate")
        return None
    model, _ = load_base(models.target, plan.model.dtype)
    return evaluator(model, "base")


def evaluate_clean(plan: RunPlan, models: Models, evaluator: Evaluator) -> Evaluation | None:
    """On a planted target, the clean model (stage "clean"): what the planted target is measured against
    (on rank 0 alone, as the base model)."""
    if not models.target.planted or rank_zero_only.rank != 0:
        return None
    model, _ = load_retain_model(models.target, plan.model.dtype)
    return evaluator(model, "clean")


def attack_baselines_cache(plan: RunPlan, models: Models, evaluator: Evaluator) -> Path | None:
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


def attack_target(plan: RunPlan, models: Models, evaluator: Evaluator) -> AttackContext | None:
    """The attack families' baselines on the target, on the device the fit will use; read from the cache
    when a run of this target already made them (none depends on the seed or the method)."""
    if plan.robustness is None:
        return None
    context = AttackContext(models.model, evaluator, plan.trainer.single_process(plan.out))
    cached = attack_baselines_cache(plan, models, evaluator)
    if cached is not None and cached.exists():
        log.info("reusing the cached attack baselines on the target (%s)", cached.parent)
        context.model = context.on_device(context.model)
        plan.robustness.restore(context, json.loads(cached.read_text()))
        return context
    retain_model = None
    if plan.robustness.needs_retain_model and models.target.retain_model is not None:
        retain_model, _ = load_retain_model(models.target, plan.model.dtype)
    plan.robustness.before(context, retain_model)
    if cached is not None:
        with atomic(cached.parent, keep_existing=True) as tmp:
            tmp.mkdir()
            (tmp / cached.name).write_text(json.dumps(plan.robustness.baselines(context)))
    return context


def evaluate_harness(plan: RunPlan, model, tokenizer) -> dict | None:
    """lm-eval's tasks on `model`, on the run's device (evaluation.lm_eval.tasks), or None."""
    if not plan.evaluation.harness.tasks:
        return None
    return harness_results(
        on_device(model, plan.trainer.device), tokenizer, plan.evaluation.harness, plan.evaluation.batch_size
    )


@stage("baselines")
def evaluate_baselines(plan: RunPlan, benchmark: Benchmark, models: Models) -> Baselines:
    start = time.perf_counter()
    retain_rows = retain_model_rows(
        benchmark,
        models.target,
        models.fmt,
        plan.evaluation.for_model(plan.model.max_length, benchmark.max_new_tokens),
        plan.model.dtype,
        plan.cache_dir,
        plan.evaluation.retain_model_results,
        plan.trainer.device,
    )
    evaluator = evaluator_of(plan, benchmark, models, retain_rows)
    base, clean = evaluate_base(plan, models, evaluator), evaluate_clean(plan, models, evaluator)
    harness = evaluate_harness(plan, models.model, models.tokenizer)
    evaluated = time.perf_counter()
    attacks = attack_target(plan, models, evaluator)
    seconds = {"evaluation": evaluated - start, **({"robustness": time.perf_counter() - evaluated} if attacks else {})}
    return Baselines(evaluator, retain_rows, base, clean, attacks, harness, seconds)
