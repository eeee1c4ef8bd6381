"""The split interface every benchmark exposes, so attribution, unlearning and evaluation never branch
on which benchmark they got."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from simu_lightning.data.formatting import PromptFormat
from simu_lightning.utils.errors import SimuError


def check_json_lines(file: Path) -> None:
    """Refuse a file that is not JSON Lines with one line naming the first bad line (datasets' own
    error names neither the line nor the file)."""
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SimuError(f"{file}:{number}: not valid JSON Lines ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise SimuError(f"{file}:{number}: a JSON Lines row must be an object, got {type(row).__name__}")


def check_columns(split: Dataset, required: tuple[str, ...], where: str) -> None:
    missing = [c for c in required if c not in split.column_names]
    if missing:
        raise SimuError(
            f"{where}: no column {', '.join(map(repr, missing))} (it has {', '.join(split.column_names)}; "
            f"needed: {', '.join(required)})"
        )


@dataclass
class Benchmark:
    """Named splits of QA rows (`question`, `answer`, and whatever else the benchmark carries).

    `forget` / `retain` name the splits unlearning trains on; `target_splits` is what a base model is
    fine-tuned on to become the target (when the model has no ready-made target for the benchmark),
    and `retain_model_splits` what the retain model (it never sees the forget set) is tuned
    on. `eval_splits` are evaluated before and after unlearning; among them, `forget` and `retain` are
    always the forget set and the retain set the project's aggregate reads. `utility_splits` feed
    TOFU-style model utility. `suite` is the evaluation suite (a callable, named by the benchmark's config:
    `suite._target_`) and `aggregate` the single figure a run reports from a suite's split summaries
    (`aggregate._target_`); `prompt`, when set, overrides the model's prompt format (LUME prompts every
    model with the raw input). `planted`, when set, makes the target a planted one (models/planting.py):
    the retain model with the forget split written into known neurons. `forgotten_splits` are splits of
    rows unlearned before (the earlier requests of continual unlearning): suites score them as they score
    the forget split (TOFU's truth ratio: forgotten when true and false answers are equally likely).
    """

    name: str
    splits: dict[str, Dataset]
    forget: str = "forget"
    retain: str = "retain"
    target_splits: tuple[str, ...] = ()
    retain_model_splits: tuple[str, ...] = ()
    eval_splits: tuple[str, ...] = ("forget", "retain")
    utility_splits: tuple[str, ...] = ()
    suite: Callable | None = None  # (model, tokenizer, fmt, benchmark, stage, settings, retain_ratios) -> Evaluation
    aggregate: Callable | None = None  # split summaries -> one figure
    prompt: PromptFormat | None = None  # a prompt format the benchmark imposes on every model
    max_new_tokens: int = 32  # generation length for evaluation (answers' typical length)
    # the forget levels runs are compared at (the report's --at), e.g. "forget.exact_match<=0.5,0.2,0.1": the
    # points around their first crossings are evaluated in full (evaluation.during.full_around=auto)
    levels: str | None = None
    info: dict = field(default_factory=dict)
    planted: object | None = None  # models/planting.Planting: the forget set planted into known neurons
    forgotten_splits: tuple[str, ...] = ()  # earlier continual requests' forget rows: scored as forget rows
    # how a split's rows group (an author's questions, a document's prompts): a column's name, or a number of
    # consecutive rows (TOFU lists each author's 20 questions together); an evaluation of fewer rows than the
    # split draws from every group (evaluation/splits.py)
    groups: dict[str, str | int] = field(default_factory=dict)

    def __getitem__(self, split: str) -> Dataset:
        if split not in self.splits:
            raise SimuError(f"benchmark {self.name!r} has no split {split!r} (it has: {', '.join(self.splits)})")
        return self.splits[split]

    def group_ids(self, split: str) -> list | None:
        """Each row's group in `split` (None: its rows are not grouped)."""
        rule = self.groups.get(split)
        if rule is None:
            return None
        rows = self[split]
        if isinstance(rule, int):
            return [i // rule for i in range(len(rows))]
        return list(rows[rule]) if rule in rows.column_names else None

    def aggregate_of(self, summary: dict[str, dict[str, float]]) -> float | None:
        return self.aggregate(summary) if self.aggregate is not None else None

    @property
    def has_truth_ratios(self) -> bool:
        """Whether the forget split carries perturbed answers (TOFU's truth ratio, forget quality)."""
        return "perturbed_answer" in self[self.forget].column_names

    def shared_rows(self) -> int:
        """How many forget rows (question and answer, or document) also appear in the retain split."""
        if "question" not in self[self.forget].column_names:
            texts = set(self[self.forget]["text"])
            return sum(t in texts for t in self[self.retain]["text"])
        forget = set(zip(self[self.forget]["question"], self[self.forget]["answer"]))
        return sum((q, a) in forget for q, a in zip(self[self.retain]["question"], self[self.retain]["answer"]))

    def fingerprint(self, splits: tuple[str, ...]) -> str:
        """A content hash of the given splits: a cache key that changes whenever their rows change."""
        digest = hashlib.sha256()
        for split in splits:
            digest.update(split.encode())
            for row in self[split]:
                digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()[:16]
