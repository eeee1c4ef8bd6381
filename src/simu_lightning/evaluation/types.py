"""What an evaluation returns and the settings it runs with: the types every suite shares (their own
module, so that the suites, the callback and the dispatch import them without importing each other).

A suite computes, for every evaluation split, one record per example (the question, the answer, the
generation and every per-example metric value; these become `generations.jsonl`), the split-level
aggregates, and benchmark-level scores (TOFU's forget quality and model utility, LUME's task
aggregate, MIA score and final score). Every aggregate can be recomputed from the records.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass, field

import torch

from simu_lightning.unlearning.stopping import ForgetLevels
from simu_lightning.utils.errors import SimuError


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


# evaluation.during.truth_ratios: score every split's perturbed answers at every point, or only where a
# figure of the point needs them (model utility's splits, and what the stopping rule reads)
DURING_TRUTH_RATIOS = ("all", "needed")


def split_levels(text: str, setting: str) -> ForgetLevels:
    """Forget levels on a split's metric (e.g. forget.rougeL_recall): a score (model utility, ...) is
    computed from every split, so no point could score less than all of them."""
    levels = ForgetLevels.parse(text, setting)
    if "." not in levels.metric:
        raise SimuError(
            f"{setting}={text!r}: the levels must be on a split's metric (e.g. forget.rougeL_recall), "
            f"not on the score {levels.metric!r}"
        )
    return levels


def _count(name: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SimuError(f"evaluation.{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class EvaluationSettings:
    """`evaluation`: what every evaluation of a run reads, what it compares with, and when it runs during
    unlearning; checked where it is built (conf/config.yaml names this class as its `_target_`)."""

    batch_size: int = 64
    max_new_tokens: int | None = None  # null: the benchmark's own
    max_examples: int | None = None  # rows per split (null: all)
    sample_seed: int = 0  # the draw of those rows, by author / document; not the run's seed
    mmlu: bool = False
    mmlu_num_fewshot: int = 5
    dtype: str | None = None
    retain_model_results: str | None = None  # the retain model's forget truth ratios, read from a file
    base: bool = False  # also evaluate the base model a target was fine-tuned from
    every_n_steps: int | None = None  # null: each epoch's end; 0: never
    during: dict = field(default_factory=dict)  # {max_examples, truth_ratios}: the evaluations during unlearning
    lm_eval: dict = field(default_factory=dict)  # {tasks, num_fewshot, limit, include_path}: evaluation/harness.py
    cache_before: bool = True  # reuse the target's evaluation before unlearning (evaluation/before_cache.py)
    # what one evaluation runs with beyond the configured settings: the model's length (for_model sets it),
    # and, at a point during unlearning, the splits it scores
    max_length: int | None = None
    truth_ratio_splits: tuple[str, ...] | None = None  # the splits whose perturbed answers are scored (None: all)
    likelihood_splits: tuple[str, ...] | None = None  # the splits whose answer likelihoods are scored (None: all)

    def __post_init__(self):
        _count("batch_size", self.batch_size)
        if not isinstance(self.cache_before, bool):
            raise SimuError(f"evaluation.cache_before must be true or false, got {self.cache_before!r}")
        _count("mmlu_num_fewshot", self.mmlu_num_fewshot, allow_zero=True)
        _count("sample_seed", self.sample_seed, allow_zero=True)
        for name in ("max_new_tokens", "max_examples"):
            if getattr(self, name) is not None:
                _count(name, getattr(self, name))
        if self.every_n_steps is not None and (
            isinstance(self.every_n_steps, bool) or not isinstance(self.every_n_steps, int) or self.every_n_steps < 0
        ):
            raise SimuError(
                "evaluation.every_n_steps must be null (each epoch's end), 0 (never) or a positive integer, "
                f"got {self.every_n_steps!r}"
            )
        if self.dtype is not None and not isinstance(getattr(torch, str(self.dtype), None), torch.dtype):
            raise SimuError(
                f"evaluation.dtype must be null or a torch dtype (bfloat16, float16, float32), got {self.dtype!r}"
            )
        object.__setattr__(self, "during", dict(self.during or {}))
        unknown = set(self.during) - {"max_examples", "truth_ratios", "full_around"}
        if unknown:
            raise SimuError(
                f"evaluation.during: unknown setting(s) {', '.join(sorted(unknown))} "
                "(known: max_examples, truth_ratios, full_around)"
            )
        if self.during_full_around not in (None, "auto"):
            split_levels(self.during_full_around, "evaluation.during.full_around")
        if self.during_truth_ratios not in DURING_TRUTH_RATIOS:
            raise SimuError(
                f"evaluation.during.truth_ratios must be one of {', '.join(DURING_TRUTH_RATIOS)}, "
                f"got {self.during_truth_ratios!r}"
            )
        self.harness  # noqa: B018  (checked now)

    @property
    def harness(self):
        from simu_lightning.evaluation.harness import HarnessSettings

        return HarnessSettings(**(self.lm_eval or {}))

    @property
    def during_max_examples(self) -> int | None:
        return self.during.get("max_examples")

    @property
    def during_full_around(self) -> str | None:
        return self.during.get("full_around")

    @property
    def during_truth_ratios(self) -> str:
        return self.during.get("truth_ratios", "all")

    def for_model(self, max_length: int, benchmark_max_new_tokens: int) -> EvaluationSettings:
        """The settings one evaluation runs with, for this model and benchmark: its length, and the
        benchmark's generation length unless evaluation.max_new_tokens sets one."""
        return dataclasses.replace(
            self, max_length=max_length, max_new_tokens=self.max_new_tokens or benchmark_max_new_tokens
        )
