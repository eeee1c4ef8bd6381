"""The runs that stop short of unlearning: `mode=prepare` (the target and its retain model, cached),
`mode=attribute` (the neurons selected and, on a planted target, scored against P) and `mode=evaluate`
(the benchmark's suite, and with `robustness` the attacks, on any Hugging Face checkpoint).

mode=evaluate: the model config still matters: its prompt format, dtype and max_length must be the ones
the checkpoint was trained and evaluated with (`model=smollm2_135m model.source=...` for a SmolLM2
checkpoint). TOFU's forget quality needs the retain model's forget truth ratios:
`evaluation.retain_model_results` (a run's `generations.jsonl`, or an open-unlearning evaluation JSON),
or the retain model that the model config names for the benchmark (`model.targets.<benchmark>.retain_model`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from simu_lightning.evaluation import Evaluator
from simu_lightning.evaluation.harness import harness_results
from simu_lightning.evaluation.tables import print_evaluation, print_localisation
from simu_lightning.evaluation.retain_model import retain_model_truth_ratios
from simu_lightning.models.loading import load_pretrained
from simu_lightning.models.settings import ModelSettings
from simu_lightning.pipeline.attacks import attack_unlearned
from simu_lightning.pipeline.outputs import write_run
from simu_lightning.pipeline.prepare import prepared_target, prompt_format
from simu_lightning.pipeline.results import manifest_keys, planted_summary, selection_results
from simu_lightning.pipeline.unlearn import neuron_attribution, unlearning_data, unlearning_module
from simu_lightning.utils.errors import SimuError

log = logging.getLogger(__name__)

STAGE = "evaluated"
BUILT_HERE = ("tiny",)  # model sources that name a recipe, not a checkpoint


def prepare_only(plan, benchmark) -> None:
    """The target and its retain model prepared and cached, and the retain model's forget truth ratios,
    so that runs under torchrun or srun find everything ready."""
    target = prepared_target(plan, benchmark)
    settings = plan.evaluation_for(benchmark)
    retain_model_truth_ratios(
        benchmark,
        target,
        prompt_format(plan, benchmark),
        settings,
        plan.model.dtype,
        plan.cache_dir,
        plan.evaluation.retain_model_results,
        plan.trainer.device,
    )
    log.info("mode=prepare: target %s and retain model %s are ready", target.source, target.retain_model)


def attribute_only(plan, benchmark, models) -> dict:
    """One fit of no step, so that attribution runs where a run's would (on_fit_start, on the strategy's
    model); nothing unlearned or evaluated."""
    attribution = neuron_attribution(plan, models)
    trainer = plan.trainer.make(
        callbacks=[attribution], logger=False, enable_checkpointing=False, max_steps=0, max_epochs=-1
    )
    trainer.fit(unlearning_module(plan, models), unlearning_data(plan, benchmark, models))
    results = {
        "mode": "attribute",
        "method": plan.method.name,
        "benchmark": benchmark.name,
        "model": plan.model.name,
        "target": models.target.source,
        "selection": attribution.settings.selection,
        **selection_results(attribution.selection()),
        "timings_s": {"prepare_target": round(models.seconds, 2), "attribution": round(attribution.seconds, 2)},
    }
    if models.planted_neurons:
        results["planted"] = planted_summary(models.target, benchmark.planted, models.planted_neurons, None, None)
    if trainer.is_global_zero:
        write_run(plan, results, None, manifest_keys(models, attribution.selection()), trainer.world_size)
        print_localisation(results)
    return results


def checkpoint_source(model: ModelSettings) -> str:
    source = str(model.source)
    if source in BUILT_HERE or source.startswith("pkg://") or source.endswith(".gguf"):
        raise SimuError(
            f"mode=evaluate: model.source={source!r} names a model this project builds or converts, not "
            "a checkpoint; set model.source to a Hugging Face folder (e.g. a run's unlearned_model/) or hub id"
        )
    return source


def named_retain_model(model: ModelSettings, benchmark) -> SimpleNamespace:
    """The retain model the model config names for this benchmark, if any."""
    ready = model.ready_target(benchmark.name) or {}
    return SimpleNamespace(
        retain_model=ready.get("retain_model"),
        retain_model_revision=ready.get("retain_model_revision"),
        trust_remote_code=model.trust_remote_code,
    )


def evaluate_checkpoint(plan, benchmark) -> dict:
    """The suite on `model.source`, then (with `robustness`) the attacks on it."""
    source = checkpoint_source(plan.model)
    fmt = prompt_format(plan, benchmark)
    model, tokenizer = load_pretrained(
        source, plan.model.dtype, plan.model.revision, plan.model.tokenizer, plan.model.trust_remote_code
    )
    device = plan.trainer.device
    model = model.to(device)
    settings = plan.evaluation_for(benchmark)
    retain_rows = retain_model_truth_ratios(
        benchmark,
        named_retain_model(plan.model, benchmark),
        fmt,
        settings,
        plan.model.dtype,
        plan.cache_dir,
        plan.evaluation.retain_model_results,
        device,
    )
    log.info(
        "evaluating %s on %s (%s)",
        source,
        benchmark.name,
        ", ".join(f"{n} {len(benchmark[n])}" for n in benchmark.eval_splits),
    )
    evaluator = Evaluator(tokenizer, fmt, benchmark, settings, [r["truth_ratio"] for r in retain_rows] or None, device)
    result = evaluator(model, STAGE)
    results = {
        "mode": "evaluate",
        "source": source,
        "benchmark": benchmark.name,
        "model": plan.model.name,
        STAGE: result.summary,
        "scores": {STAGE: result.scores},
        "aggregate": {STAGE: benchmark.aggregate_of(result.summary)},
    }
    rows = retain_rows + result.rows
    if plan.evaluation.harness.tasks:
        results["lm_eval"] = {STAGE: harness_results(model, tokenizer, plan.evaluation.harness, settings.batch_size)}
    if attacked := attack_unlearned(plan, None, evaluator, model):  # the attacks on the checkpoint
        results["robustness"], rows = attacked.results, rows + attacked.rows
    write_run(plan, results, rows, {"evaluated": source})
    print_evaluation(results, STAGE)
    return results
