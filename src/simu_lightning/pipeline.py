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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simu_lightning import config
from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.cache import cache_root
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.evaluation import evaluate
from simu_lightning.evaluation.metrics import unlearning_aggregate
from simu_lightning.evaluation.report import print_results, write_json, write_jsonl
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


def run(cfg: DictConfig) -> dict:
    config.check(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_root(cfg.paths.cache_dir)
    L.seed_everything(cfg.seed, verbose=False)
    timings: dict[str, float] = {}
    eval_kwargs = dict(max_length=cfg.model.max_length, **cfg.evaluation)

    # 1. the benchmark and 2. the target (and reference) model
    benchmark = instantiate(cfg.benchmark)
    fmt = PromptFormat(**cfg.model.prompt)
    finetune_trainer = partial(make_trainer, cfg.trainer, logger=False, enable_checkpointing=False,
                               default_root_dir=str(out / "finetune"))
    with timed(timings, "prepare_target"):
        target = prepare_target(cfg.model, benchmark, fmt, cache_dir, finetune_trainer, cfg.seed)
        model, tokenizer = load_pretrained(target.target, cfg.model.dtype)

    # 3. before unlearning
    with timed(timings, "evaluation"):
        before = evaluate(model, tokenizer, fmt, benchmark, "before", **eval_kwargs)

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
    trainer.fit(module, datamodule)
    timings["attribution"] = round(attribution.seconds, 2)
    timings["unlearning"] = round(time.perf_counter() - start - attribution.seconds, 2)

    # 5. after unlearning, and 6. what the run leaves behind
    with timed(timings, "evaluation"):
        after = evaluate(module.model, tokenizer, fmt, benchmark, "after", **eval_kwargs)
    results = {
        "method": cfg.method.name,
        "benchmark": benchmark.name,
        "model": cfg.model.name,
        "before": before.summary(),
        "after": after.summary(),
        "aggregate": {"before": unlearning_aggregate(before.summary(), benchmark.forget, benchmark.retain),
                      "after": unlearning_aggregate(after.summary(), benchmark.forget, benchmark.retain)},
        "timings_s": timings,
    }
    if attribution.kept:
        results["critical_neurons"] = attribution.kept
    module.model.save_pretrained(out / "unlearned_model")
    tokenizer.save_pretrained(out / "unlearned_model")
    write_jsonl(out / "generations.jsonl", before.rows + after.rows)
    write_json(out / "results.json", results)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    print_results(results)
    return results
