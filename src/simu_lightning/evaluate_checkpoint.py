"""`python run.py mode=evaluate model.source=PATH_OR_HUB_ID benchmark=...`: the benchmark's evaluation
suite on any Hugging Face checkpoint (a run's `unlearned_model/`, a published target, another
framework's unlearned model), with nothing fine-tuned or unlearned. Writes `results.json`,
`generations.jsonl` (stage "evaluated"), `manifest.json` and `config.yaml` into the run directory.

The model config still matters: its prompt format, dtype and max_length must be the ones the checkpoint
was trained and evaluated with (`model=smollm2_135m model.source=...` for a SmolLM2 checkpoint).
TOFU's forget quality needs the reference model's forget truth ratios: `evaluation.reference_results`
(a run's `generations.jsonl`, or an open-unlearning evaluation JSON), or the reference that the model
config names for the benchmark (`model.targets.<benchmark>.reference`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf

from simu_lightning.data.formatting import PromptFormat
from simu_lightning.errors import SimuError
from simu_lightning.evaluation import EvalSettings, evaluate
from simu_lightning.evaluation.reference import forget_reference_rows
from simu_lightning.evaluation.report import print_evaluation, write_json, write_jsonl
from simu_lightning.files import atomic_file
from simu_lightning.manifest import manifest
from simu_lightning.models.loading import load_pretrained
from simu_lightning.robustness import Attack

log = logging.getLogger(__name__)

STAGE = "evaluated"
BUILT_HERE = ("tiny",)  # model sources that name a recipe, not a checkpoint


def checkpoint_source(model_cfg) -> str:
    source = str(model_cfg.source)
    if source in BUILT_HERE or source.startswith("pkg://") or source.endswith(".gguf"):
        raise SimuError(
            f"mode=evaluate: model.source={source!r} names a model this project builds or converts, not "
            "a checkpoint; set model.source to a Hugging Face folder (e.g. a run's unlearned_model/) or hub id"
        )
    return source


def named_reference(cfg: DictConfig, benchmark) -> SimpleNamespace:
    """The reference model the model config names for this benchmark, if any."""
    ready = (cfg.model.get("targets") or {}).get(benchmark.name) or {}
    return SimpleNamespace(
        reference=ready.get("reference"),
        reference_revision=ready.get("reference_revision"),
        trust_remote_code=bool(cfg.model.get("trust_remote_code", False)),
    )


def evaluate_checkpoint(
    cfg: DictConfig, benchmark, settings: EvalSettings, out: Path, cache_dir: Path, robustness=None, make_trainer=None
) -> dict:
    """The suite on `model.source`, then (with `robustness`) the attacks on it."""
    source = checkpoint_source(cfg.model)
    fmt = benchmark.prompt or PromptFormat(**cfg.model.prompt)
    model, tokenizer = load_pretrained(
        source,
        cfg.model.dtype,
        cfg.model.get("revision"),
        cfg.model.get("tokenizer"),
        bool(cfg.model.get("trust_remote_code", False)),
    )
    if torch.cuda.is_available():
        model = model.cuda()
    reference = forget_reference_rows(
        benchmark,
        named_reference(cfg, benchmark),
        fmt,
        settings,
        cfg.model.dtype,
        cache_dir,
        cfg.evaluation.get("reference_results"),
    )
    log.info(
        "evaluating %s on %s (%s)",
        source,
        benchmark.name,
        ", ".join(f"{name} {len(benchmark[name])}" for name in benchmark.eval_splits),
    )
    reference_ratios = [r["truth_ratio"] for r in reference] or None
    result = evaluate(model, tokenizer, fmt, benchmark, STAGE, settings, reference_ratios)
    results = {
        "mode": "evaluate",
        "source": source,
        "benchmark": benchmark.name,
        "model": cfg.model.name,
        STAGE: result.summary,
        "scores": {STAGE: result.scores},
        "aggregate": {STAGE: benchmark.aggregate_of(result.summary)},
    }
    rows = reference + result.rows
    if robustness:  # the attacks on the checkpoint
        attack = Attack(model, tokenizer, fmt, benchmark, settings, make_trainer, reference_ratios)
        robustness.after(attack)
        results["robustness"], rows = attack.results, rows + attack.rows
    write_jsonl(out / "generations.jsonl", rows)
    write_json(out / "manifest.json", manifest(cfg, 1, {"evaluated": source}))
    write_json(out / "results.json", results)
    with atomic_file(out / "config.yaml") as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)
    print_evaluation(results, STAGE)
    log.info("outputs in %s", out)
    return results
