"""Generation, metrics (per-example values + aggregates), the benchmark suites and reports."""
from simu_lightning.evaluation.evaluate import EvalSettings, Evaluation, evaluate

__all__ = ["EvalSettings", "Evaluation", "evaluate"]
