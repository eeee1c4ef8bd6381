"""The reference (retain-only) model's forget truth ratios, which TOFU's forget quality compares
against: computed by evaluating the reference model (and cached), or read from a saved file."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from simu_lightning.cache import atomic_dir, cache_key
from simu_lightning.errors import SimuError
from simu_lightning.evaluation.evaluate import evaluation_precision
from simu_lightning.evaluation.types import EvalSettings
from simu_lightning.evaluation.qa import truth_ratio_values
from simu_lightning.models.loading import load_pretrained

log = logging.getLogger(__name__)


def read_reference_results(path: str | Path) -> list[float]:
    """Forget truth ratios from a file: this project's `generations.jsonl` / `reference.jsonl` (rows
    with split "forget", stage "reference" and `truth_ratio`), or an open-unlearning TOFU evaluation
    JSON (`forget_truth_ratio.value_by_index.*.score`)."""
    path = Path(path)
    if not path.exists():
        raise SimuError(f"evaluation.reference_results={path}: no such file")
    text = path.read_text()
    if path.suffix == ".jsonl":
        ratios = [
            row["truth_ratio"]
            for row in map(json.loads, text.splitlines())
            if row.get("split") == "forget" and row.get("stage") == "reference" and "truth_ratio" in row
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
        raise SimuError(f"{path}: no forget truth ratios of a reference model in it")
    return ratios


# Bump when the truth ratio's computation changes: cached reference ratios from older code are then not reused.
REFERENCE_FORMAT = 2


def reference_rows(
    source: str,
    benchmark,
    fmt,
    settings: EvalSettings,
    dtype: str,
    cache_dir: Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> list[dict]:
    """One row per forget example with the reference model's truth ratio (stage "reference")."""
    forget = benchmark[benchmark.forget]
    if settings.max_examples is not None and len(forget) > settings.max_examples:
        forget = forget.select(range(settings.max_examples))
    key = cache_key(
        "reference-truth-ratios",
        REFERENCE_FORMAT,
        source,
        revision,
        benchmark.fingerprint((benchmark.forget,)),
        asdict(fmt),
        settings.max_length,
        settings.max_examples,
        dtype,
        *([settings.dtype] if settings.dtype else []),
    )  # (keys from before evaluation.dtype stay valid)
    cached = cache_dir / "reference" / key / "rows.json"
    if cached.exists():
        log.info("reusing the cached forget truth ratios of the reference model %s (%s)", source, cached.parent)
        return json.loads(cached.read_text())
    model, tokenizer = load_pretrained(source, dtype, revision, trust_remote_code=trust_remote_code)
    log.info("reference model %s: forget truth ratios of %d rows", source, len(forget))
    with evaluation_precision(model, settings.dtype):
        ratios, _ = truth_ratio_values(model, tokenizer, fmt, forget, settings)
    rows = [
        {"split": "forget", "stage": "reference", "index": i, "question": q, "answer": a, "truth_ratio": r}
        for i, (q, a, r) in enumerate(zip(forget["question"], forget["answer"], ratios))
    ]
    with atomic_dir(cached.parent) as tmp:
        tmp.mkdir()
        (tmp / "rows.json").write_text(json.dumps(rows))
    return rows


def forget_reference_rows(
    benchmark, target, fmt, settings: EvalSettings, dtype: str, cache_dir: Path, results_file: str | None
) -> list[dict]:
    """The reference model's forget truth ratios (rows of stage "reference"), when the benchmark has
    perturbed answers and a reference is known: a results file named in the config, or a model
    (`target.reference`, with its `reference_revision` and `trust_remote_code`)."""
    if not benchmark.has_truth_ratios:
        return []
    if results_file:
        return [
            {"split": "forget", "stage": "reference", "index": i, "truth_ratio": r}
            for i, r in enumerate(read_reference_results(results_file))
        ]
    if target.reference is None:
        log.info("no reference model or evaluation.reference_results: forget quality is not computed")
        return []
    return reference_rows(
        target.reference,
        benchmark,
        fmt,
        settings,
        dtype,
        cache_dir,
        target.reference_revision,
        target.trust_remote_code,
    )
