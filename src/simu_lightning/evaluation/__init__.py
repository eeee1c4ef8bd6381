"""Generation, metrics (per-example values + aggregates), the benchmark suites and reports."""

from simu_lightning.evaluation.evaluate import evaluate
from simu_lightning.evaluation.types import EvalSettings, Evaluation

__all__ = ["EvalSettings", "Evaluation", "evaluate"]
