"""Generation, metrics (per-example values + aggregates), benchmark evaluation and reports."""
from simu_lightning.evaluation.evaluate import Evaluation, evaluate

__all__ = ["Evaluation", "evaluate"]
