"""Generation, metrics (per-example values + aggregates), the benchmark suites and reports."""

from simu_lightning.evaluation.evaluate import Evaluator, evaluate
from simu_lightning.evaluation.types import Evaluation, EvaluationSettings

__all__ = ["Evaluation", "EvaluationSettings", "Evaluator", "evaluate"]
