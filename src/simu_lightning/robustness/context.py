"""The attack stage's shared state: the model the attacks start from (the target before unlearning, the
unlearned model after; never changed: every attack works on a copy), the run's evaluator, and what the
attacks found.

`results[attack][split][metric]` (the suite's split summaries; benchmark-level scores under the split
"scores"), and `rows`, the per-example rows with `stage` = the attack's name, for generations.jsonl.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset

from simu_lightning.evaluation import Evaluator
from simu_lightning.evaluation.splits import limited
from simu_lightning.utils.devices import on_device

log = logging.getLogger(__name__)


@dataclass
class AttackContext:
    model: object  # what the attacks start from
    evaluator: Evaluator
    make_trainer: Callable | None = None  # a single-process Lightning trainer (relearning)
    results: dict[str, dict] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    @property
    def tokenizer(self):
        return self.evaluator.tokenizer

    @property
    def fmt(self):
        return self.evaluator.fmt

    @property
    def benchmark(self):
        return self.evaluator.benchmark

    @property
    def settings(self):
        return self.evaluator.settings

    @property
    def device(self):
        """The run's device (the evaluator's): every attack scores its models there."""
        return self.evaluator.device

    def on_device(self, model):
        """`model` on the run's device (on a GPU node, a 7B target's generations must not run on the CPU,
        nor a model that a relearning fit's teardown left there)."""
        return on_device(model, self.device)

    def forget_split(self) -> Dataset:
        return limited(self.benchmark, self.benchmark.forget, self.settings)

    def record(self, name: str, summary: dict, rows: list[dict]) -> None:
        self.results[name] = summary
        self.rows += rows

    def evaluate(self, name: str, model, benchmark, rename: dict[str, str] | None = None):
        """`model` through the benchmark's suite on `benchmark`'s evaluation splits, recorded as attack
        `name` (splits renamed by `rename`, e.g. to tell two evaluations of one attack apart). A view of
        other splits is evaluated whole: it is cut already."""
        start = time.perf_counter()
        whole = benchmark is self.benchmark
        settings = self.settings if whole else dataclasses.replace(self.settings, max_examples=None)
        result = self.evaluator(model, name, settings, benchmark)
        rename = rename or {}
        summary = {rename.get(split, split): values for split, values in result.summary.items()}
        scores = {k: v for k, v in result.scores.items() if v is not None}
        if scores:
            summary.setdefault("scores", {}).update(scores)
        rows = [{**row, "split": rename.get(row["split"], row["split"])} for row in result.rows]
        self.results.setdefault(name, {}).update(summary)
        self.rows += rows
        split = next((split for split in summary if split.startswith(self.benchmark.forget)), None)
        figures = summary.get(split, {})
        log.info(
            "robustness: %s: %s (%.0f s)",
            name,
            ", ".join(f"{split} {m} {figures[m]:.3f}" for m in ("exact_match", "rougeL_recall") if m in figures)
            or ", ".join(summary),
            time.perf_counter() - start,
        )
        return result
