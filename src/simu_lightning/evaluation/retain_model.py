"""The retain model's forget truth ratios, which TOFU's forget quality compares against. The retain
model is the one fine-tuned without the forget set (TOFU's "retain model"; on a planted target, the
clean model); its ratios are computed by evaluating it (and cached), or read from a saved file."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from simu_lightning.utils.cache import cache_key, source_identity
from simu_lightning.utils.devices import on_device, stage
from simu_lightning.utils.files import atomic
from simu_lightning.utils.errors import SimuError
from simu_lightning.evaluation.evaluate import evaluation_precision
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.evaluation.qa import truth_ratio_values
from simu_lightning.evaluation.splits import limited
from simu_lightning.models.loading import load_pretrained

log = logging.getLogger(__name__)


def read_retain_model_results(path: str | Path) -> list[float]:
    """Forget truth ratios from a file: this project's `generations.jsonl` / `reference.jsonl` (rows
    with split "forget", stage "retain_model" (or "reference", as runs before it was renamed wrote) and
    `truth_ratio`), or an open-unlearning TOFU evaluation
    JSON (`forget_truth_ratio.value_by_index.*.score`)."""
    path = Path(path)
    if not path.exists():
        raise SimuError(f"evaluation.retain_model_results={path}: no such file")
    text = path.read_text()
    if path.suffix == ".jsonl":
        ratios = [
            row["truth_ratio"]
            for row in map(json.loads, text.splitlines())
            if row.get("split") == "forget" and row.get("stage") in STAGES and "truth_ratio" in row
        ]
    else:
        try:
            by_index = json.loads(text)["forget_truth_ratio"]["value_by_index"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SimuError(
                f"{path}: neither rows of forget truth ratios (.jsonl) nor an open-unlearning "
                "evaluation with forget_truth_ratio.value_by_index"
            ) from None
        ratios = [entry["score"] for _, entry in sorted(by_index.items(), key=lambda kv: int(kv[0]))]
    if not ratios:
        raise SimuError(f"{path}: no forget truth ratios of a retain model in it")
    return ratios


# Bump when the truth ratio's computation changes: cached ratios from older code are then not reused.
REFERENCE_FORMAT = 2
STAGE = "retain_model"  # the rows' stage in generations.jsonl
STAGES = (STAGE, "reference")  # what a results file may call them


def truth_ratio_rows(
    source: str,
    benchmark,
    fmt,
    settings: EvaluationSettings,
    dtype: str,
    cache_dir: Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device=None,
) -> list[dict]:
    """One row per forget example with the retain model's truth ratio (stage "retain_model"), scored on
    `device` (the run's)."""
    forget = limited(benchmark, benchmark.forget, settings)  # the rows the evaluations read
    key = cache_key(
        "reference-truth-ratios",
        REFERENCE_FORMAT,
        source_identity(source, cache_dir),  # a moved cache keeps its keys
        revision,
        benchmark.fingerprint((benchmark.forget,)),
        asdict(fmt),
        settings.max_length,
        settings.max_examples,
        *([settings.sample_seed] if settings.max_examples is not None else []),  # (unlimited keys kept)
        dtype,
        *([settings.dtype] if settings.dtype else []),
    )  # (keys from before evaluation.dtype stay valid)
    cached = cache_dir / "reference" / key / "rows.json"
    if cached.exists():
        log.info("reusing the cached forget truth ratios of the retain model %s (%s)", source, cached.parent)
        return json.loads(cached.read_text())
    model, tokenizer = load_pretrained(source, dtype, revision, trust_remote_code=trust_remote_code)
    model = on_device(model, device)
    log.info("retain model %s: forget truth ratios of %d rows", source, len(forget))
    with evaluation_precision(model, settings.dtype), stage(STAGE):
        ratios, _ = truth_ratio_values(model, tokenizer, fmt, forget, settings)
    rows = [
        {"split": "forget", "stage": STAGE, "index": i, "question": q, "answer": a, "truth_ratio": r}
        for i, (q, a, r) in enumerate(zip(forget["question"], forget["answer"], ratios))
    ]
    with atomic(cached.parent, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "rows.json").write_text(json.dumps(rows))
    return rows


def retain_model_truth_ratios(
    benchmark,
    target,
    fmt,
    settings: EvaluationSettings,
    dtype: str,
    cache_dir: Path,
    results_file: str | None,
    device=None,
) -> list[dict]:
    """The retain model's forget truth ratios (rows of stage "retain_model"), when the benchmark has
    perturbed answers and a retain model is known: a results file named in the config, or a model
    (`target.retain_model`, with its `retain_model_revision` and `trust_remote_code`)."""
    if not benchmark.has_truth_ratios:
        return []
    if results_file:
        return [
            {"split": "forget", "stage": STAGE, "index": i, "truth_ratio": r}
            for i, r in enumerate(read_retain_model_results(results_file))
        ]
    if target.retain_model is None:
        log.info("no retain model or evaluation.retain_model_results: forget quality is not computed")
        return []
    return truth_ratio_rows(
        target.retain_model,
        benchmark,
        fmt,
        settings,
        dtype,
        cache_dir,
        target.retain_model_revision,
        target.trust_remote_code,
        device,
    )
