"""Progress where people look: on a cluster stdout is a log file, where a progress bar shows nothing until
an epoch ends (and a 7B run's epoch takes hours). When stdout is not a terminal, one line every n steps
and at each evaluation point: the step, the loss and its terms, Sophia's win rate, the forget metric the
stopping rule watches, the time per step and how long the budget can still take."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L

from simu_lightning.utils.phase_progress import duration

log = logging.getLogger(__name__)


def wanted(every_n_steps: int, stream=None) -> bool:
    """Lines only where no progress bar is seen (stdout is a file or a pipe), and only if asked for."""
    stream = stream or sys.stdout
    return bool(every_n_steps) and not (hasattr(stream, "isatty") and stream.isatty())


class ProgressLines(L.Callback):
    def __init__(self, every_n_steps: int, evaluations=None, stop_when=None):
        self.every_n_steps, self.evaluations, self.stop_when = every_n_steps, evaluations, stop_when
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        evaluated = (
            self.evaluations is not None and self.evaluations.points and self.evaluations.points[-1]["step"] == step
        )
        if trainer.is_global_zero and (evaluated or step % self.every_n_steps == 0):
            log.info(self.line(trainer, step))

    def line(self, trainer: L.Trainer, step: int) -> str:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("unlearn/", "optim/"))}
        terms = ", ".join(
            f"{k.removeprefix('unlearn/')} {v:.4g}" for k, v in metrics.items() if k.startswith("unlearn/")
        )
        parts = [f"step {step}/{trainer.estimated_stepping_batches} (epoch {trainer.current_epoch})", terms]
        if "optim/win_rate" in metrics:
            parts.append(f"win rate {metrics['optim/win_rate']:.3f}")
        if self.stop_when is not None and self.evaluations is not None and self.evaluations.points:
            condition, point = self.stop_when.conditions[0], self.evaluations.points[-1]
            value = condition.read(point)
            if value is not None:
                parts.append(
                    f"{condition.metric} {value:.3f} at step {point['step']} (stops at {condition.op}{condition.value:g})"
                )
        if self._start is not None and step > self._start[1]:
            per_step = (time.perf_counter() - self._start[0]) / (step - self._start[1])
            left = max(0, trainer.estimated_stepping_batches - step) * per_step
            parts.append(f"{per_step:.2f} s/step, the budget's rest at most {duration(left)}")
        return "progress: " + "; ".join(p for p in parts if p)
