"""Where unlearning stops: a callback that reads each evaluation point as the evaluation callback adds it
(it comes after that callback in the fit's list) and stops the fit at the first point that meets
`unlearning.stop_when` (unlearning/stopping.py: the rule itself). It records where and why unlearning
stopped, and a resumed run that had stopped unlearns no further.

An optimiser with `finishing_steps` (the first/zeroth-order hybrid, which ends on a zeroth-order round) takes
that many more steps after the point that meets the rule; the fit stops at their end, and the record keeps
both steps (`met_at`: where the rule held)."""

from __future__ import annotations

import logging

import lightning as L

from simu_lightning.unlearning.stopping import BUDGET_EXHAUSTED, CONDITION_MET, StoppingRule

log = logging.getLogger(__name__)


class StopWhen(L.Callback):
    def __init__(self, rule: StoppingRule | None, evaluations):
        """`evaluations`: the fit's UnlearningEvaluation, whose points (`points`, step 0 = before) it reads."""
        self.rule, self.evaluations = rule, evaluations
        self.stopped: dict | None = None  # {"reason", "step", "epoch"} (and "met_at" after finishing steps)
        self._read = -1  # the step of the last point read
        self._met: dict | None = None  # {"step", "epoch"} of the point that met the rule, while finishing
        self._finish_at: int | None = None

    def _read_point(self, trainer: L.Trainer) -> None:
        points = self.evaluations.points
        if self.rule is None or not points or points[-1]["step"] == self._read:
            return
        point = points[-1]
        self._read = point["step"]
        if self.stopped is None and self._met is None and self.rule.holds(point):
            log.info("stopping: %s holds at step %d (epoch %d)", self.rule, point["step"], point["epoch"])
            finishing = _finishing_steps(trainer)
            if finishing:
                self._met, self._finish_at = {"step": point["step"], "epoch": point["epoch"]}, point["step"] + finishing
                log.info("stopping: %d more steps first, to the end of the optimiser's zeroth-order round", finishing)
                return
            self.stopped = {"reason": CONDITION_MET, "step": point["step"], "epoch": point["epoch"]}
            trainer.should_stop = True

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.rule is not None and self.evaluations.points:  # the names, against the point "before"
            self.rule.check_names(self.evaluations.points[0])
        self._read_point(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.stopped and self.stopped["reason"] == CONDITION_MET:
            trainer.should_stop = True  # a resumed run that had already stopped unlearns no further
        elif self._finish_at is not None and trainer.global_step >= self._finish_at:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._read_point(trainer)
        if self._finish_at is not None and trainer.global_step >= self._finish_at:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._read_point(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._settle()

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        """A fit whose loop never ran (stopped at "before", or resumed finished) has no `on_train_end`."""
        self._settle()

    def _settle(self) -> None:
        """After "after": unlearning that met no condition ran its budget, and stopped at "after"'s point;
        one that met it and then took its finishing steps stopped there too (or where the budget ran out)."""
        if self.stopped is None:
            last = self.evaluations.points[-1]
            self.stopped = {"reason": BUDGET_EXHAUSTED, "step": last["step"], "epoch": last["epoch"]}
            if self._met is not None:
                self.stopped |= {"reason": CONDITION_MET, "met_at": self._met}

    def state_dict(self) -> dict:
        return {"stopped": self.stopped, "read": self._read, "met": self._met, "finish_at": self._finish_at}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stopped, self._read = state_dict.get("stopped"), state_dict.get("read", -1)
        self._met, self._finish_at = state_dict.get("met"), state_dict.get("finish_at")


def _finishing_steps(trainer: L.Trainer) -> int:
    """The steps the fit's optimiser asks for after the rule holds (the hybrid's zeroth-order round)."""
    optimizers = getattr(trainer, "optimizers", None) or [None]
    return getattr(optimizers[0], "finishing_steps", lambda: 0)()
