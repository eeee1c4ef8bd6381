"""One SIMU run, top to bottom; the only place that knows the order of the stages.

    benchmark -> target (fine-tuned, cached) -> evaluate before -> attribution + unlearning (Lightning)
    -> evaluate after -> results.json, generations.jsonl, the unlearned model, the table
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lightning as L
import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simu_lightning import config
from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.cache import cache_root
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.evaluation import EvalSettings, evaluate
from simu_lightning.evaluation.reference import read_reference_results, reference_rows
from simu_lightning.evaluation.metrics import unlearning_aggregate
from simu_lightning.evaluation.report import print_examples, print_results, write_json, write_jsonl
from simu_lightning.models.architecture import architecture_of
from simu_lightning.models.loading import load_pretrained
from simu_lightning.models.target import prepare_target
from simu_lightning.unlearning.module import UnlearningModule

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 2)


def make_trainer(trainer_cfg: DictConfig, **overrides) -> L.Trainer:
    return instantiate(trainer_cfg, **overrides)


def loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]


def quiet_libraries() -> None:
    """One line per event on the console: Lightning prints its own INFO lines, so they need not also
    travel through Hydra's root handler; per-shard progress bars and rouge-score's notices add nothing."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("absl").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()


def reference_forget_rows(benchmark, target, fmt, settings, dtype, cache_dir, results_file) -> list[dict]:
    """The reference model's forget truth ratios (rows of stage "reference"), when the benchmark has
    perturbed answers and a reference is known: a results file named in the config, or a model."""
    if benchmark.suite != "qa" or "perturbed_answer" not in benchmark[benchmark.forget].column_names:
        return []
    if results_file:
        return [{"split": "forget", "stage": "reference", "index": i, "truth_ratio": r}
                for i, r in enumerate(read_reference_results(results_file))]
    if target.reference is None:
        log.info("no reference model or evaluation.reference_results: forget quality is not computed")
        return []
    return reference_rows(target.reference, benchmark, fmt, settings, dtype, cache_dir)


def evaluate_base_model(target, benchmark, fmt, settings, dtype):
    """The model before it was fine-tuned into the target (what it knew to begin with)."""
    if target.base is None:
        log.info("evaluation.base: the target was not fine-tuned here, so there is no base model to evaluate")
        return None
    model, tokenizer = load_pretrained(target.base, dtype, tokenizer_source=target.tokenizer)
    return evaluate(model, tokenizer, fmt, benchmark, "base", settings)


def run(cfg: DictConfig) -> dict:
    config.check(cfg)
    quiet_libraries()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_root(cfg.paths.cache_dir)
    L.seed_everything(cfg.seed, verbose=False)
    timings: dict[str, float] = {}
    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    reference_results = evaluation.pop("reference_results", None)
    evaluate_base = evaluation.pop("base", False)

    # 1. the benchmark and 2. the target (and reference) model
    benchmark = instantiate(cfg.benchmark)
    log.info("benchmark %s: %s", benchmark.name,
             ", ".join(f"{name} {len(split)}" for name, split in benchmark.splits.items()))
    fmt = benchmark.prompt or PromptFormat(**cfg.model.prompt)
    evaluation["max_new_tokens"] = evaluation["max_new_tokens"] or benchmark.max_new_tokens
    settings = EvalSettings(max_length=cfg.model.max_length, **evaluation)
    finetune_trainer = partial(make_trainer, cfg.trainer, logger=False, enable_checkpointing=False,
                               default_root_dir=str(out / "finetune"))
    with timed(timings, "prepare_target"):
        target = prepare_target(cfg.model, benchmark, fmt, cache_dir, finetune_trainer)
        model, tokenizer = load_pretrained(target.target, cfg.model.dtype, tokenizer_source=target.tokenizer)
    log.info("target %s (%.1fM parameters) ready in %.0f s", target.target,
             sum(p.numel() for p in model.parameters()) / 1e6, timings["prepare_target"])

    # 3. before unlearning (and the reference model, for TOFU's forget quality)
    with timed(timings, "evaluation"):
        base = evaluate_base_model(target, benchmark, fmt, settings, cfg.model.dtype) if evaluate_base else None
        reference = reference_forget_rows(benchmark, target, fmt, settings, cfg.model.dtype, cache_dir, reference_results)
        reference_ratios = [r["truth_ratio"] for r in reference] or None
        before = evaluate(model, tokenizer, fmt, benchmark, "before", settings, reference_ratios)

    # 4. attribution (pre-fit callback) and unlearning
    method, loss = instantiate(cfg.method), instantiate(cfg.loss)
    frozen_target = copy.deepcopy(model) if loss.needs_reference else None
    module = UnlearningModule(model, method, loss, architecture_of(model, cfg.model.get("architecture")),
                              reference=frozen_target, seed=cfg.seed)
    datamodule = UnlearningDataModule(benchmark, tokenizer, fmt, max_length=cfg.model.max_length, seed=cfg.seed,
                                      **cfg.data)
    attribution = NeuronAttribution(**cfg.attribution, output_dir=out, cache_dir=cache_dir, target_id=target.target_id)
    trainer = make_trainer(cfg.trainer, callbacks=[attribution], logger=loggers(cfg) or False)
    start = time.perf_counter()
    log.info("unlearning: method %s, loss %s", method.name, type(loss).__name__)
    trainer.fit(module, datamodule)
    timings["attribution"] = round(attribution.seconds, 2)
    timings["unlearning"] = round(time.perf_counter() - start - attribution.seconds, 2)

    # 5. after unlearning, and 6. what the run leaves behind
    with timed(timings, "evaluation"):
        after = evaluate(module.model, tokenizer, fmt, benchmark, "after", settings, reference_ratios)
    results = {
        "method": cfg.method.name,
        "benchmark": benchmark.name,
        "model": cfg.model.name,
        "before": before.summary,
        "after": after.summary,
        "aggregate": {"before": unlearning_aggregate(before.summary), "after": unlearning_aggregate(after.summary)},
        "scores": {"before": before.scores, "after": after.scores},
        **({"base": base.summary} if base else {}),
        "timings_s": timings,
    }
    if attribution.kept:
        results["critical_neurons"] = attribution.kept
    module.model.save_pretrained(out / "unlearned_model")
    tokenizer.save_pretrained(out / "unlearned_model")
    write_jsonl(out / "generations.jsonl", (base.rows if base else []) + reference + before.rows + after.rows)
    write_json(out / "results.json", results)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    print_results(results)
    print_examples(before.rows + after.rows, benchmark.forget)
    log.info("outputs in %s", out)
    return results
