"""Stages 1 and 2: the benchmark, and the models (the target to unlearn and, where there is one, the
retain model that never saw the forget set), fine-tuned or planted and cached when the benchmark needs it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.evaluation.splits import check_limits
from simu_lightning.pipeline.objective import check_metric
from simu_lightning.models.planting import load_planted
from simu_lightning.models.target import Target, load_target, prepare_target
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.utils.devices import stage
from simu_lightning.utils.processes import launch_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    target: Target  # where the target, its retain model and its base come from
    model: object  # the target, loaded: what unlearning changes
    tokenizer: object
    fmt: PromptFormat
    planted_neurons: dict | None  # a planted target's P (per layer: which neurons hold the forget set)
    seconds: float


def load_benchmark(plan: RunPlan) -> Benchmark:
    benchmark = plan.benchmark()
    log.info(
        "benchmark %s: %s",
        benchmark.name,
        ", ".join(f"{name} {len(split)}" for name, split in benchmark.splits.items()),
    )
    limits = {"evaluation.max_examples": plan.evaluation.max_examples}
    limits["evaluation.during.max_examples"] = plan.evaluation.during_max_examples
    check_limits(benchmark, limits)  # every author (document) evaluated: refused before any work
    if plan.objective:
        check_metric(benchmark, plan.objective["metric"])
    if shared := benchmark.shared_rows():
        log.warning(
            "benchmark %s: %d forget rows also appear in the retain split %r: GradDiff pushes them both ways",
            benchmark.name,
            shared,
            benchmark.retain,
        )
    return benchmark


def prompt_format(plan: RunPlan, benchmark: Benchmark) -> PromptFormat:
    return benchmark.prompt or plan.model.prompt


def prepared_target(plan: RunPlan, benchmark: Benchmark) -> Target:
    """The target and its retain model, prepared and cached (mode=prepare stops here)."""
    return prepare_target(
        plan.model,
        benchmark,
        prompt_format(plan, benchmark),
        plan.cache_dir,
        plan.trainer.single_process(plan.out),
        plan.trainer.finetune_numerics,
    )


@stage("prepare")
def loads_weights(plan: RunPlan) -> bool:
    """Whether this process reads the target's weights: in a sharded run only rank 0 does (the others
    receive their shards from it: distributed.load_from_rank0), so a 7B target on 8 processes costs one
    copy of host memory, not eight."""
    return launch_rank() == 0 or not plan.trainer.several_processes


def load_models(plan: RunPlan, benchmark: Benchmark) -> Models:
    start = time.perf_counter()
    target = prepared_target(plan, benchmark)
    weights = loads_weights(plan)
    model, tokenizer = load_target(target, plan.model.dtype, weights=weights)
    if not weights:
        log.info("rank %d: the target's architecture on the meta device; rank 0 sends its weights", launch_rank())
    seconds = time.perf_counter() - start
    log.info(
        "target %s (%.1fM parameters) ready in %.0f s",
        target.source,
        sum(p.numel() for p in model.parameters()) / 1e6,
        seconds,
    )
    planted = load_planted(target.source) if target.is_planted else None
    return Models(target, model, tokenizer, prompt_format(plan, benchmark), planted, seconds)
