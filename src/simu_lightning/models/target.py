"""Target preparation, as TOFU does it: fine-tune a base model on the benchmark's training splits
until it has memorised them (the target), and the same base on the retain splits only (the
retain model, which never saw the forget set). Both are cached as Hugging Face folders under a key
of everything they depend on, so later runs and every job of a sweep reuse them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L

from simu_lightning.utils.cache import cache_key, source_identity
from simu_lightning.utils.files import atomic
from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.models import tiny
from simu_lightning.models.finetune import FineTune, answer_loader
from simu_lightning.models.loading import convert_gguf, gguf_file, load_pretrained
from simu_lightning.models.planting import planted_target
from simu_lightning.models.settings import ModelSettings
from simu_lightning.utils.seeding import seeded
from simu_lightning.utils.phase_progress import fit_steps

log = logging.getLogger(__name__)


# Bump when target preparation changes (recipe, data encoding): cached targets from older code are then
# not reused.
TARGET_FORMAT = 2


@dataclass
class Target:
    source: str  # where the target loads from (a folder or a hub id)
    retain_model: str | None  # the model fine-tuned without the forget set, when there is one
    target_id: str  # identifies the target for downstream caches (attribution scores)
    tokenizer: str | None = None  # a tokenizer source other than the target's own
    base: str | None = None  # the model the target was fine-tuned from, when it was
    revision: str | None = None  # the hub revision of `target` (None for a folder made here)
    base_revision: str | None = None  # the hub revision of `base`
    retain_model_revision: str | None = None
    trust_remote_code: bool = False  # run code shipped with hub models (model.trust_remote_code)
    is_planted: bool = False  # a planted target: `retain_model` is the clean model, P lies in the target's folder


def load_target(target: Target, dtype: str, weights: bool = True):
    """(model, tokenizer) of the target, at its pinned revision (`weights=False`: on the meta device)."""
    return load_pretrained(
        target.source, dtype, target.revision, target.tokenizer, target.trust_remote_code, weights=weights
    )


def load_retain_model(target: Target, dtype: str):
    """(model, tokenizer) of the retain model, at its pinned revision."""
    return load_pretrained(
        target.retain_model, dtype, target.retain_model_revision, target.tokenizer, target.trust_remote_code
    )


def load_base(target: Target, dtype: str):
    """(model, tokenizer) of the model the target was fine-tuned from, at its pinned revision."""
    return load_pretrained(target.base, dtype, target.base_revision, target.tokenizer, target.trust_remote_code)


def base_model(model: ModelSettings, benchmark: Benchmark, cache_dir: Path) -> str:
    """The model fine-tuning starts from: a hub id or folder as given, a GGUF file converted once into
    a cached folder, or the tiny model built for this benchmark (tokenizer trained on its text)."""
    source = str(model.source)
    if source.endswith(".gguf"):
        file = gguf_file(source)
        # the file's name and size, not its place: a venv elsewhere holds the same model
        path = cache_dir / "models" / f"gguf-{cache_key(file.name, file.stat().st_size)}"
        if not (path / "config.json").exists():
            with atomic(path, keep_existing=True) as tmp:
                convert_gguf(file, tmp)
        return str(path)
    if source != "tiny":
        return source
    spec = dict(model.tiny or {})
    splits = tuple(benchmark.splits)  # every split's text, so no evaluation question is out of vocabulary
    path = cache_dir / "models" / f"tiny-{cache_key(spec, benchmark.fingerprint(splits))}"
    if not (path / "config.json").exists():
        texts = [
            row[column]
            for split in splits
            for row in benchmark[split]
            for column in ("question", "answer", "paraphrased_question", "paraphrased_answer", "text", "prompt", "gt")
            if row.get(column)
        ]
        with atomic(path, keep_existing=True) as tmp:
            tiny.create(tmp, texts, **spec)
    return str(path)


def finetune_key(
    base: str,
    benchmark: Benchmark,
    splits: tuple[str, ...],
    model: ModelSettings,
    fmt: PromptFormat,
    trainer_settings: dict | None = None,
) -> str:
    """Everything a fine-tuned model depends on: the base (and its revision and tokenizer), the rows, the
    recipe, the prompt format, the length, dtype, the trainer's numerics and the code (TARGET_FORMAT)."""
    return cache_key(
        "finetune",
        TARGET_FORMAT,
        base,
        model.revision,
        model.tokenizer,
        benchmark.fingerprint(splits),
        dict(model.finetune or {}),
        asdict(fmt),
        model.max_length,
        model.dtype,
        trainer_settings or {},
    )


def finetuned(
    base: str,
    benchmark: Benchmark,
    splits: tuple[str, ...],
    model_settings: ModelSettings,
    fmt: PromptFormat,
    cache_dir: Path,
    make_trainer: Callable[..., L.Trainer],
    trainer_settings: dict | None = None,
) -> str:
    """`base` fine-tuned on `splits` (answer-only NLL), from the cache when it is there.

    Its seed is the fine-tuning's own (`model.finetune.seed`), not the run's: runs with different
    seeds unlearn the same target, as they would a published one."""
    settings = dict(model_settings.finetune or {})
    seed = settings.get("seed", 0)
    key = finetune_key(source_identity(base, cache_dir), benchmark, splits, model_settings, fmt, trainer_settings)
    path = cache_dir / "models" / f"finetuned-{key}"
    if (path / "config.json").exists():
        log.info(
            "reusing the cached fine-tuned model %s (%s on %s, %d epochs)",
            path,
            base,
            "+".join(splits),
            settings["epochs"],
        )
        return str(path)
    log.info("fine-tuning %s on %s (%d epochs) into %s", base, "+".join(splits), settings["epochs"], path)
    model, tokenizer = load_pretrained(
        base, model_settings.dtype, model_settings.revision, model_settings.tokenizer, model_settings.trust_remote_code
    )
    rows = [row for split in splits for row in benchmark[split]]
    loader = answer_loader(tokenizer, fmt, rows, model_settings.max_length, settings["batch_size"], seed)
    start = time.perf_counter()
    with seeded(seed):  # the run's own draws do not depend on whether this target was cached
        trainer = make_trainer(
            max_epochs=settings["epochs"], callbacks=[fit_steps(f"fine-tuning on {'+'.join(splits)}")]
        )
        module = FineTune(
            model.train(), settings["lr"], settings.get("weight_decay", 0.0), settings.get("warmup_ratio", 0.05)
        )
        trainer.fit(module, loader)
    with atomic(path, keep_existing=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "base": base,
            "splits": list(splits),
            "rows": len(rows),
            "finetune": settings,
            "seconds": round(time.perf_counter() - start, 1),
            "final_loss": float(trainer.callback_metrics.get("finetune/loss_epoch", float("nan"))),
        }
        (tmp / "simu_target.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return str(path)


def prepare_target(
    model: ModelSettings,
    benchmark: Benchmark,
    fmt: PromptFormat,
    cache_dir: Path,
    make_trainer: Callable[..., L.Trainer],
    trainer_settings: dict | None = None,
) -> Target:
    """The target and retain model for this model on this benchmark: a ready-made target when the model
    config names one for the benchmark (`model.targets.<benchmark>`), else the base fine-tuned here.
    `trainer_settings` are the trainer's numerics that fine-tuning inherits (precision, accumulation,
    clipping): part of a fine-tuned model's cache key."""
    remote = model.trust_remote_code
    if ready := model.ready_target(benchmark.name):
        return Target(
            ready["source"],
            ready.get("retain_model"),
            target_id=f"{ready['source']}@{ready.get('revision')}",
            tokenizer=ready.get("tokenizer"),
            revision=ready.get("revision"),
            retain_model_revision=ready.get("retain_model_revision"),
            trust_remote_code=remote,
        )
    base = base_model(model, benchmark, cache_dir)
    revision = None if Path(base).exists() else model.revision
    if not model.finetune or not benchmark.target_splits:
        return Target(
            base,
            None,
            target_id=f"{base}@{model.revision}",
            tokenizer=model.tokenizer,
            revision=revision,
            trust_remote_code=remote,
        )
    retain_model = None
    if benchmark.retain_model_splits:
        retain_model = finetuned(
            base, benchmark, benchmark.retain_model_splits, model, fmt, cache_dir, make_trainer, trainer_settings
        )
    if benchmark.planted is not None:  # phase 2 on the clean model (the retain model): models/planting.py
        target = planted_target(
            retain_model, benchmark, benchmark.planted, model, fmt, cache_dir, make_trainer, trainer_settings
        )
    else:
        target = finetuned(
            base, benchmark, benchmark.target_splits, model, fmt, cache_dir, make_trainer, trainer_settings
        )
    return Target(
        target,
        retain_model,
        target_id=Path(target).name,
        base=base,
        base_revision=revision,
        trust_remote_code=remote,
        is_planted=benchmark.planted is not None,
    )
