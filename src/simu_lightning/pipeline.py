"""One SIMU run, top to bottom; the only place that knows the order of the stages.

benchmark -> target (fine-tuned, cached) -> reference truth ratios
-> trainer.fit: evaluate before | attribution | unlearning | evaluate after
-> robustness=standard: the attacks, on copies of the unlearned model (their baselines on the target)
-> results.json, generations.jsonl, the unlearned model, the table
"""

from __future__ import annotations

import copy
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
import transformers
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simu_lightning import config
from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.cache import cache_root
from simu_lightning.checkpointing import checkpointing
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.dashboards import log_config, log_results
from simu_lightning.distributed import close_process_group, full_state_dict, is_launched_externally
from simu_lightning.errors import SimuError
from simu_lightning.evaluate_checkpoint import evaluate_checkpoint
from simu_lightning.files import atomic_file, replaced_dir
from simu_lightning.manifest import manifest
from simu_lightning.evaluation import EvalSettings, evaluate
from simu_lightning.evaluation.callback import UnlearningEvaluation
from simu_lightning.evaluation.reference import forget_reference_rows
from simu_lightning.evaluation.report import print_examples, print_localisation, print_results, write_json, write_jsonl
from simu_lightning.models.architecture import architecture_of
from simu_lightning.objective import matched_utility
from simu_lightning.robustness import Attack
from simu_lightning.models.planting import KEEPS, KNOWS, load_planted, planted_check
from simu_lightning.models.target import load_base, load_reference, load_target, prepare_target
from simu_lightning.unlearning.module import UnlearningModule
from simu_lightning.unlearning.stopping import StoppingRule

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 2)


def build(node: DictConfig, **overrides):
    """`instantiate`, letting a bad-input error of ours through as itself (Hydra wraps what a
    constructor raises in an InstantiationException several lines long)."""
    try:
        return instantiate(node, **overrides)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SimuError):
            raise cause from None
        raise


def make_trainer(trainer_cfg: DictConfig, **overrides) -> L.Trainer:
    return build(trainer_cfg, **overrides)


def loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]


class RankZero(logging.Filter):
    """Info lines from rank 0 only (warnings and errors from every process): in a multi-process run
    each stage is announced once. Lightning keeps `rank_zero_only.rank` set from the environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank_zero_only.rank == 0


def quiet_libraries() -> None:
    """One line per event on the console: Lightning prints its own INFO lines, so they need not also
    travel through Hydra's root handler; per-shard progress bars and rouge-score's notices add nothing."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RankZero) for f in handler.filters):
            handler.addFilter(RankZero())
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("absl").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()  # the probes' rewording of a split is instant


def evaluate_base_model(target, benchmark, fmt, settings, dtype):
    """The model before it was fine-tuned into the target (what it knew to begin with)."""
    if target.base is None:
        log.info("evaluation.base: the target was not fine-tuned here, so there is no base model to evaluate")
        return None
    model, tokenizer = load_base(target, dtype)
    return evaluate(model, tokenizer, fmt, benchmark, "base", settings)


def evaluate_clean_model(target, benchmark, fmt, settings, dtype):
    """On a planted target, the clean model (stage "clean"): what the planted target is measured against."""
    if not target.planted:
        return None
    model, tokenizer = load_reference(target, dtype)
    return evaluate(model, tokenizer, fmt, benchmark, "clean", settings)


def planted_summary(target, planting, planted, clean, before=None) -> dict:
    """results.json `planted`: where the clean model is, how P was drawn, P's size per layer, the clean
    model's figures, and whether the planted target knows the forget set and kept the rest (`check`)."""
    check = planted_check(before.summary, clean.summary) if before and clean else None
    if check and not check["holds"]:
        log.warning(
            "the planted target does not meet its bar: forget EM %.3f (needs >= %.1f), EM below the clean model's "
            "by %s (at most %.2f); see benchmark.planted (replay, epochs, fraction)",
            check["forget_exact_match"],
            KNOWS,
            ", ".join(f"{split} {drop:.3f}" for split, drop in check["exact_match_drop"].items()),
            KEEPS,
        )
    return {
        "clean_model": target.reference,
        "fraction": planting.fraction,
        "layers": list(planting.layers) if planting.layers is not None else None,
        "parameters": planting.parameters,
        "seed": planting.seed,
        "neurons": {name: int(mask.sum()) for name, mask in planted.items()},
        **({"clean": clean.summary} if clean else {}),
        **({"check": check} if check else {}),
    }


def attribute_only(cfg, module, datamodule, attribution, target, benchmark, planted, clean, out, timings) -> dict:
    """mode=attribute: the target prepared and its neurons selected (and, on a planted target, scored
    against P); nothing unlearned or evaluated. One fit of no step, so that attribution runs where a
    run's would (on_fit_start, on the strategy's model)."""
    trainer = make_trainer(
        cfg.trainer, callbacks=[attribution], logger=False, enable_checkpointing=False, max_steps=0, max_epochs=-1
    )
    trainer.fit(module, datamodule)
    timings["attribution"] = round(attribution.seconds, 2)
    results = {
        "mode": "attribute",
        "method": cfg.method.name,
        "benchmark": benchmark.name,
        "model": cfg.model.name,
        "target": target.target,
        "selection": attribution.selection,
        "critical_neurons": attribution.kept,
        "timings_s": timings,
        **({"planted": planted_summary(target, benchmark.planted, planted, clean)} if planted else {}),
        **({"localisation": attribution.localisation} if attribution.localisation else {}),
    }
    if trainer.is_global_zero:
        keys = {"target": target.target_id, **{f"attribution_{split}": key for split, key in attribution.keys.items()}}
        write_json(out / "manifest.json", manifest(cfg, trainer.world_size, keys))
        write_json(out / "results.json", results)
        with atomic_file(out / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp, resolve=True)
        print_localisation(results)
        log.info("outputs in %s", out)
    return results


def reference_model(robustness, target, dtype):
    """The retain-only reference model, for the relearning attack's control (None without one)."""
    if robustness.relearning is None or target.reference is None:
        return None
    model, _ = load_reference(target, dtype)
    return model


def finetune_trainer_factory(cfg: DictConfig, out: Path):
    """Target preparation runs in one process, whatever the unlearning's strategy."""

    def make(**overrides) -> L.Trainer:
        if is_launched_externally():
            raise SimuError(
                "the target is not prepared yet, and preparing it needs a single process: run the "
                "same command once without torchrun/srun, adding prepare_only=true"
            )
        return make_trainer(
            cfg.trainer,
            devices=1,
            num_nodes=1,
            strategy="auto",
            logger=False,
            enable_checkpointing=False,
            default_root_dir=str(out / "finetune"),
            **overrides,
        )

    return make


def finetune_trainer_settings(trainer_cfg: DictConfig) -> dict:
    """The trainer settings that target fine-tuning inherits and that change its result."""
    return {
        name: trainer_cfg.get(name)
        for name in ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
    }


def run(cfg: DictConfig) -> dict | None:
    """The whole run; with several processes every one runs it, and rank 0 writes the outputs."""
    config.check(cfg)
    robustness = build(cfg.robustness) if cfg.get("robustness") else None  # the attack stage's settings, checked now
    quiet_libraries()
    out = Path(cfg.paths.output_dir)
    if (out / "results.json").exists() and not cfg.get("rerun", False):
        log.info("already finished: %s holds its results (rerun=true runs it again)", out)
        return json.loads((out / "results.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_root(cfg.paths.cache_dir)
    L.seed_everything(cfg.seed, verbose=False)
    timings: dict[str, float] = {}
    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    reference_results = evaluation.pop("reference_results", None)
    evaluate_base = evaluation.pop("base", False)
    every_n_steps = evaluation.pop("every_n_steps", None)
    during_max_examples = (evaluation.pop("during", None) or {}).get("max_examples")
    stop_when = StoppingRule.parse(cfg.get("unlearning", {}).get("stop_when"))

    # 1. the benchmark and 2. the target (and reference) model
    benchmark = build(cfg.benchmark)
    log.info(
        "benchmark %s: %s",
        benchmark.name,
        ", ".join(f"{name} {len(split)}" for name, split in benchmark.splits.items()),
    )
    if shared := benchmark.shared_rows():
        log.warning(
            "benchmark %s: %d forget rows also appear in the retain split %r: GradDiff pushes them both ways",
            benchmark.name,
            shared,
            benchmark.retain,
        )
    fmt = benchmark.prompt or PromptFormat(**cfg.model.prompt)
    evaluation["max_new_tokens"] = evaluation["max_new_tokens"] or benchmark.max_new_tokens
    settings = EvalSettings(max_length=cfg.model.max_length, **evaluation)
    if cfg.get("mode", "unlearn") == "evaluate":
        return evaluate_checkpoint(
            cfg, benchmark, settings, out, cache_dir, robustness, finetune_trainer_factory(cfg, out)
        )
    with timed(timings, "prepare_target"):
        target = prepare_target(
            cfg.model,
            benchmark,
            fmt,
            cache_dir,
            finetune_trainer_factory(cfg, out),
            finetune_trainer_settings(cfg.trainer),
        )
        if cfg.get("prepare_only"):
            forget_reference_rows(benchmark, target, fmt, settings, cfg.model.dtype, cache_dir, reference_results)
            log.info("prepare_only: target %s and reference %s are ready", target.target, target.reference)
            return None
        model, tokenizer = load_target(target, cfg.model.dtype)
    log.info(
        "target %s (%.1fM parameters) ready in %.0f s",
        target.target,
        sum(p.numel() for p in model.parameters()) / 1e6,
        timings["prepare_target"],
    )

    # 3. what the evaluation compares with: the reference model, (optionally) the base model, and on a
    #    planted target the clean model (mode=attribute evaluates nothing)
    base, reference, clean = None, [], None
    planted = load_planted(target.target) if target.planted else None
    if cfg.mode != "attribute":
        with timed(timings, "evaluation"):
            base = evaluate_base_model(target, benchmark, fmt, settings, cfg.model.dtype) if evaluate_base else None
            reference = forget_reference_rows(
                benchmark, target, fmt, settings, cfg.model.dtype, cache_dir, reference_results
            )
            clean = evaluate_clean_model(target, benchmark, fmt, settings, cfg.model.dtype)

    # 4. evaluation before, attribution, unlearning, evaluation after: one Lightning fit, so that every
    #    stage runs on the (possibly sharded) model in every process
    method, loss = build(cfg.method), build(cfg.loss)
    frozen_target = copy.deepcopy(model) if loss.needs_reference else None
    module = UnlearningModule(
        model,
        method,
        loss,
        architecture_of(model, cfg.model.get("architecture")),
        reference=frozen_target,
        seed=cfg.seed,
        parallel=cfg.get("parallel"),
    )
    datamodule = UnlearningDataModule(
        benchmark, tokenizer, fmt, max_length=cfg.model.max_length, seed=cfg.seed, **cfg.data
    )
    datamodule.encode()  # now: a row with nothing to unlearn is refused before the fit
    evaluations = UnlearningEvaluation(
        tokenizer,
        fmt,
        benchmark,
        settings,
        [r["truth_ratio"] for r in reference] or None,
        out,
        every_n_steps=every_n_steps,
        during_max_examples=during_max_examples,
        stop_when=stop_when,
    )
    attribution = NeuronAttribution(
        **cfg.attribution,
        output_dir=out,
        cache_dir=cache_dir,
        target_id=target.target_id,
        dtype=cfg.model.dtype,
        seed=cfg.seed,
        planted=planted,
    )
    if cfg.mode == "attribute":
        return attribute_only(cfg, module, datamodule, attribution, target, benchmark, planted, clean, out, timings)
    checkpoint, resume_from = checkpointing(cfg, out)
    trainer = make_trainer(
        cfg.trainer,
        callbacks=[evaluations, attribution, *checkpoint],
        logger=loggers(cfg) or False,
        enable_checkpointing=bool(checkpoint),
    )
    if robustness and trainer.world_size > 1:
        raise SimuError(config.ONE_PROCESS)
    if robustness:  # the attacks' baselines on the target, on the device the fit will use
        with timed(timings, "robustness"):
            attack = Attack(
                model,
                tokenizer,
                fmt,
                benchmark,
                settings,
                finetune_trainer_factory(cfg, out),
                [r["truth_ratio"] for r in reference] or None,
                device=trainer.strategy.root_device,
            )
            robustness.before(attack, reference_model(robustness, target, cfg.model.dtype))
    if trainer.is_global_zero:
        log_config(trainer.loggers, cfg)
    log.info(
        "unlearning: method %s, loss %s%s",
        method.name,
        type(loss).__name__,
        f", resuming from {resume_from}" if resume_from else "",
    )
    start = time.perf_counter()
    # the unlearning's own draws (dropout) from the run's seed alone, whatever ran or was cached before
    L.seed_everything(cfg.seed, verbose=False)
    trainer.fit(module, datamodule, ckpt_path=resume_from)
    timings["attribution"] = round(attribution.seconds, 2)
    timings["evaluation"] = round(timings["evaluation"] + evaluations.seconds, 2)
    timings["unlearning"] = round(time.perf_counter() - start - attribution.seconds - evaluations.seconds, 2)

    # 6. what the run leaves behind (rank 0 writes; the model export gathers the shards first)
    weights = full_state_dict(module.model)
    memory = module.memory_bytes()
    try:
        if not trainer.is_global_zero:
            return None
        before, after = evaluations.before, evaluations.after
        if robustness:  # 5. the attacks, on copies of the unlearned model
            with timed(timings, "robustness"):
                attack.model = module.model
                robustness.after(attack)
        results = {
            "method": cfg.method.name,
            "benchmark": benchmark.name,
            "model": cfg.model.name,
            "target": target.target,
            "before": before.summary,
            "after": after.summary,
            "aggregate": {
                "before": benchmark.aggregate_of(before.summary),
                "after": benchmark.aggregate_of(after.summary),
            },
            "scores": {"before": before.scores, "after": after.scores},
            "stopped": {
                **evaluations.stopped,
                "rule": str(stop_when) if stop_when else None,
                "max_epochs": cfg.trainer.max_epochs,
            },
            "timings_s": timings,
            "processes": trainer.world_size,
            "memory_mb_per_process": {k: round(v / 2**20, 3) for k, v in memory.items()},
            **({"base": base.summary} if base else {}),
            **({"planted": planted_summary(target, benchmark.planted, planted, clean, before)} if planted else {}),
            **({"localisation": attribution.localisation} if attribution.localisation else {}),
            **({"selection": attribution.selection} if attribution.localisation else {}),
            **({"robustness": attack.results} if robustness else {}),
        }
        if cfg.get("objective"):
            results["objective"] = matched_utility(evaluations.points, **cfg.objective)
        if attribution.kept:
            results["critical_neurons"] = attribution.kept
        if attribution.dropped:
            results["critical_neurons_dropped_shared_with_retain"] = attribution.dropped
        with replaced_dir(out / "unlearned_model") as tmp:
            module.model.save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
        attack_rows = attack.rows if robustness else []
        write_jsonl(
            out / "generations.jsonl",
            (base.rows if base else [])
            + (clean.rows if clean else [])
            + reference
            + before.rows
            + after.rows
            + attack_rows,
        )
        keys = {
            "target": target.target_id,
            "reference": target.reference,
            **{f"attribution_{split}": key for split, key in attribution.keys.items()},
        }
        write_json(out / "manifest.json", manifest(cfg, trainer.world_size, keys))
        write_json(out / "results.json", results)
        with atomic_file(out / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp, resolve=True)
        log_results(trainer.loggers, results, before.rows + after.rows)
        print_results(results)
        print_examples(before.rows + after.rows, benchmark.forget)
        log.info("outputs in %s", out)
        return results
    finally:
        close_process_group()  # every process waits for rank 0's files, then the group goes down together
