"""Stage 3: what the unlearned model is compared with, all measured before unlearning: the retain model's
forget truth ratios (TOFU's forget quality), the base model (`evaluation.base`), a planted target's
clean model, and the attacks' baselines on the target (`robustness`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from lightning.pytorch.utilities import rank_zero_only

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.evaluation import Evaluation, Evaluator
from simu_lightning.evaluation.harness import harness_results
from simu_lightning.evaluation.retain_model import retain_model_truth_ratios
from simu_lightning.models.target import load_base, load_retain_model
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.prepare import Models
from simu_lightning.pipeline.attacks import AttackBaselines, attack_target
from simu_lightning.utils.devices import on_device, stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baselines:
    evaluator: Evaluator  # every later evaluation goes through it
    retain_model_ratios: list[dict]  # the retain model's forget truth ratios, one row per forget example
    base_model: Evaluation | None  # the model the target was fine-tuned from (evaluation.base)
    clean_model: Evaluation | None  # a planted target's clean model
    attacks: AttackBaselines | None  # the attacks' findings on the target and the retain model (robustness)
    lm_eval: dict | None  # lm-eval's tasks on the target (evaluation.lm_eval.tasks)
    seconds: dict[str, float]


def evaluator_of(plan: RunPlan, benchmark: Benchmark, models: Models, retain_model_ratios: list[dict]) -> Evaluator:
    settings = plan.evaluation_for(benchmark)
    ratios = [row["truth_ratio"] for row in retain_model_ratios] or None
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
    if not models.target.is_planted or rank_zero_only.rank != 0:
        return None
    model, _ = load_retain_model(models.target, plan.model.dtype)
    return evaluator(model, "clean")


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
    retain_model_ratios = retain_model_truth_ratios(
        benchmark,
        models.target,
        models.fmt,
        plan.evaluation_for(benchmark),
        plan.model.dtype,
        plan.cache_dir,
        plan.evaluation.retain_model_results,
        plan.trainer.device,
    )
    evaluator = evaluator_of(plan, benchmark, models, retain_model_ratios)
    base, clean = evaluate_base(plan, models, evaluator), evaluate_clean(plan, models, evaluator)
    lm_eval = evaluate_harness(plan, models.model, models.tokenizer)
    evaluated = time.perf_counter()
    attacks = attack_target(plan, models, evaluator)
    seconds = {"evaluation": evaluated - start, **({"robustness": time.perf_counter() - evaluated} if attacks else {})}
    return Baselines(evaluator, retain_model_ratios, base, clean, attacks, lm_eval, seconds)
