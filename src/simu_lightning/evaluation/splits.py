"""The loop every suite shares: each evaluation split (at most `evaluation.max_examples` rows), its
per-example rows and its summary, with a line per split for the evaluations that take a while."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from datasets import Dataset

from simu_lightning.evaluation.types import EvalSettings, Evaluation

log = logging.getLogger(__name__)


def limited(split: Dataset, max_examples: int | None) -> Dataset:
    """The rows an evaluation reads: the first `evaluation.max_examples` (all when null)."""
    return split if max_examples is None or len(split) <= max_examples else split.select(range(max_examples))


def view(benchmark, **splits: Dataset):
    """The benchmark with these splits (replacing its own of the same name) as its only evaluation splits."""
    return dataclasses.replace(benchmark, splits={**benchmark.splits, **splits}, eval_splits=tuple(splits))


def evaluate_splits(
    benchmark,
    stage: str,
    settings: EvalSettings,
    split_rows: Callable[[str, Dataset], list[dict]],
    summarise: Callable[[str, list[dict]], dict[str, float]],
) -> Evaluation:
    result = Evaluation()
    for name in benchmark.eval_splits:
        split = limited(benchmark[name], settings.max_examples)
        start = time.perf_counter()
        rows = split_rows(name, split)
        # the evaluations during unlearning stay quiet: there are many of them
        level = logging.DEBUG if stage == "during" else logging.INFO
        log.log(level, "evaluation (%s): %s, %d rows, %.0f s", stage, name, len(split), time.perf_counter() - start)
        result.summary[name] = summarise(name, rows)
        result.rows += [{"split": name, "stage": stage, "index": i, **row} for i, row in enumerate(rows)]
    return result
