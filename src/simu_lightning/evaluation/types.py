"""What an evaluation returns and the settings it runs with: the types every suite shares (their own
module, so that the suites, the callback and the dispatch import them without importing each other).

A suite computes, for every evaluation split, one record per example (the question, the answer, the
generation and every per-example metric value; these become `generations.jsonl`), the split-level
aggregates, and benchmark-level scores (TOFU's forget quality and model utility, LUME's task
aggregate, MIA score and final score). Every aggregate can be recomputed from the records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Evaluation:
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> aggregate
    scores: dict[str, float | None] = field(default_factory=dict)  # benchmark-level figures
    rows: list[dict] = field(default_factory=list)  # one per example

    def to_dict(self) -> dict:
        return {"summary": self.summary, "scores": self.scores, "rows": self.rows}

    @classmethod
    def from_dict(cls, saved: dict) -> "Evaluation":
        return cls(saved["summary"], saved["scores"], saved["rows"])

    def values(self, split: str, metric: str) -> list[float]:
        """The per-example values of `metric` on `split` (examples it does not apply to left out)."""
        return [r[metric] for r in self.rows if r["split"] == split and r.get(metric) is not None]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class EvalSettings:
    max_length: int
    max_new_tokens: int
    batch_size: int
    max_examples: int | None = None
    mmlu: bool = False  # LUME: MMLU through lm-eval (needs the network)
    mmlu_num_fewshot: int = 5  # the official LUME protocol
    dtype: str | None = None  # compute dtype of the evaluation (None: the model's own)
