"""Generation, metrics (per-example values + aggregates), the benchmark suites and reports."""

from simu_lightning.evaluation.evaluate import Evaluator, evaluate
from simu_lightning.evaluation.types import EvalSettings, Evaluation, EvaluationSettings

__all__ = ["EvalSettings", "Evaluation", "EvaluationSettings", "Evaluator", "evaluate"]
