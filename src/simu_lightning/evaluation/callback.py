"""Evaluation before and after unlearning, run inside `trainer.fit` so that a sharded model is
evaluated by all its processes together (each takes a share of the prompts)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L

from simu_lightning.evaluation.evaluate import EvalSettings, Evaluation, evaluate


class BeforeAfterEvaluation(L.Callback):
    """`before`: the target, at fit start (saved to `saved_before`, so that a resumed run reports the
    target, not the half-unlearned checkpoint it restarts from); `after`: the model at fit end."""

    def __init__(self, tokenizer, fmt, benchmark, settings: EvalSettings, reference_ratios: list[float] | None,
                 saved_before: Path | None = None):
        self.tokenizer, self.fmt, self.benchmark, self.settings = tokenizer, fmt, benchmark, settings
        self.reference_ratios = reference_ratios
        self.saved_before = saved_before
        self.before: Evaluation | None = None
        self.after: Evaluation | None = None
        self.seconds = 0.0

    def _evaluate(self, model, stage: str) -> Evaluation:
        start = time.perf_counter()
        result = evaluate(model, self.tokenizer, self.fmt, self.benchmark, stage, self.settings, self.reference_ratios)
        self.seconds += time.perf_counter() - start
        return result

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.ckpt_path and self.saved_before is not None and self.saved_before.exists():
            self.before = Evaluation.from_dict(json.loads(self.saved_before.read_text()))
            return
        self.before = self._evaluate(pl_module.model, "before")
        if trainer.is_global_zero and self.saved_before is not None:
            self.saved_before.write_text(json.dumps(self.before.to_dict()))

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self.after = self._evaluate(pl_module.model, "after")
