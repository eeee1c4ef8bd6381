"""Evaluation before, during and after unlearning, run inside `trainer.fit` so that a sharded model is
evaluated by all its processes together (each takes a share of the prompts).

- `before`: the target, at fit start (saved to `saved_before`, so that a resumed run reports the
  target, not the half-unlearned checkpoint it restarts from; read from `before_file` when another run
  already evaluated the same target the same way: evaluation/before_cache.py);
- during: every `every_n_steps` optimiser steps (None: at every epoch's end), the same suite and
  metrics (truth ratios on `during_truth_ratio_splits` only, when given; LUME's MMLU never: before and
  after only), logged as `eval/<split>/<metric>` and written to `curve.jsonl`; the stopping rule
  (pipeline/stopping.py, the next callback) reads each of these points.
  With `probe` (`evaluation.during.full_around`), a point scores only the forget levels' split and what
  the stopping rule reads, and the two points around each level's first crossing are evaluated in full
  (evaluation/probe.py). With `during_max_examples`, a point that is not full also scores the other splits
  on a fixed sample of that many rows each, kept apart (`sample` in the point, `rows: "sample"` in
  curve.jsonl, `eval_sample/<split>/<metric>` on the dashboards): a utility curve between the full points;
- `after`: the model where unlearning stopped: the evaluation point that met the stopping rule, or
  the model at the end of the budget, evaluated in `on_train_end`, before the strategy's teardown moves
  the model off its device.
The trajectory and the kept weights of the last probe point are saved in every
checkpoint, so a resumed run continues the same curve, completes the point before a crossing wherever it
was pre-empted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from simu_lightning.distributed import agree
from simu_lightning.evaluation.before_cache import read_before, write_before
from simu_lightning.evaluation.evaluate import Evaluator
from simu_lightning.evaluation.probe import ProbePlan, changing_parameters, snapshot, weights_of
from simu_lightning.evaluation.splits import view
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation
from simu_lightning.utils.files import atomic, write_jsonl
from simu_lightning.unlearning.stopping import StoppingRule

log = logging.getLogger(__name__)


def curve_point(
    step: int, epoch: int, evaluation: Evaluation, aggregate=None, full: bool = True, sample: Evaluation | None = None
) -> dict:
    """One point of the trajectory: the split summaries and the scores (with the benchmark's aggregate);
    `full`: every evaluation split on all its evaluated rows; `sample`: the other splits' summaries on the
    fixed sample of a point that is not full (never read as the point's own values)."""
    scores = dict(evaluation.scores)
    if aggregate is not None and {"forget", "retain"} <= set(evaluation.summary):
        scores["aggregate"] = aggregate(evaluation.summary)
    point = {"step": step, "epoch": epoch, "summary": evaluation.summary, "scores": scores, "full": full}
    if sample is not None:
        point["sample"] = sample.summary
    return point


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def point_values(point: dict) -> list[tuple[str, str, float]]:
    """(split, metric, value) of every value a point has; benchmark-level scores under split "scores"."""
    values = [(split, metric, v) for split, by_metric in point["summary"].items() for metric, v in by_metric.items()]
    values += [("scores", name, v) for name, v in point["scores"].items()]
    return [(split, metric, v) for split, metric, v in values if _present(v)]


def sample_values(point: dict) -> list[tuple[str, str, float]]:
    """(split, metric, value) of a point's values on the fixed sample of rows (see `curve_point`)."""
    return [
        (split, metric, v)
        for split, by_metric in point.get("sample", {}).items()
        for metric, v in by_metric.items()
        if _present(v)
    ]


def curve_rows(points: list[dict]) -> list[dict]:
    """`curve.jsonl`: one row per (point, split, metric); benchmark-level scores have split "scores";
    `full`: whether the point scored every split on all its rows; `rows`: "all", or "sample" for a value
    on the fixed sample of rows (evaluation.during.max_examples), which the report never reads as a
    point's value."""
    return [
        {
            "step": point["step"],
            "epoch": point["epoch"],
            "split": split,
            "metric": metric,
            "value": v,
            "full": point.get("full", True),
            "rows": rows,
        }
        for point in points
        for rows, values in (("all", point_values(point)), ("sample", sample_values(point)))
        for split, metric, v in values
    ]


class UnlearningEvaluation(L.Callback):
    def __init__(
        self,
        evaluator: Evaluator,
        output_dir: Path | None = None,
        every_n_steps: int | None = None,
        during_max_examples: int | None = None,
        ends_at: Callable[[dict], bool] | None = None,
        during_truth_ratio_splits: tuple[str, ...] | None = None,
        before_file: Path | None = None,
        probe: ProbePlan | None = None,
    ):
        self.evaluator, self.settings = evaluator, evaluator.settings
        self.before_file = before_file  # where the target's evaluation before unlearning is cached (or None)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.every_n_steps = every_n_steps
        # a full point during unlearning: every split on the rows "before" and "after" read
        self.point_settings = replace(self.settings, truth_ratio_splits=during_truth_ratio_splits, mmlu=False)
        # the other splits of a point that is not full, on a fixed sample (evaluation.during.max_examples)
        self.sample_settings = (
            replace(self.point_settings, max_examples=during_max_examples) if during_max_examples else None
        )
        # whether the fit ends at a point (the stopping rule, pipeline/stopping.py, holds there): that point is
        # "after", scored once with after's settings
        self.ends_at = ends_at or (lambda point: False)
        self.probe = probe
        self._probed: list[torch.Tensor] | None = None  # the weights of the last probe point (see probe.py)
        self._probed_step: int | None = None  # the step they are of
        self.before: Evaluation | None = None
        self.after: Evaluation | None = None
        self.points: list[dict] = []  # the trajectory, step 0 = before
        self.seconds = 0.0
        self._latest: tuple[int, Evaluation] | None = None  # the last full evaluation, rows included
        self._epoch = 0

    # -- what the run leaves behind ----------------------------------------------------------------
    @property
    def _aggregate(self):
        return getattr(self.evaluator.benchmark, "aggregate", None)

    @property
    def saved_before(self) -> Path | None:
        return self.output_dir / "before.json" if self.output_dir is not None else None

    def _write_curve(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.output_dir is not None:
            write_jsonl(self.output_dir / "curve.jsonl", curve_rows(self.points))

    def _log(self, trainer: L.Trainer, point: dict) -> None:
        metrics = {
            f"eval/{metric}" if split == "scores" else f"eval/{split}/{metric}": v
            for split, metric, v in point_values(point)
        }
        metrics |= {f"eval_sample/{split}/{metric}": v for split, metric, v in sample_values(point)}
        metrics["eval/full_point"] = float(point.get("full", True))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=point["step"])

    # -- evaluating --------------------------------------------------------------------------------
    def _evaluate(self, model, stage: str, settings: EvaluationSettings, benchmark=None) -> Evaluation:
        start = time.perf_counter()
        result = self.evaluator(model, stage, settings, benchmark=benchmark)
        self.seconds += time.perf_counter() - start
        return result

    def _evaluate_before(self, trainer: L.Trainer, pl_module) -> Evaluation:
        cached = self.before_file
        if cached is not None and agree(cached.exists()):
            return read_before(cached)
        before = self._evaluate(pl_module.model, "before", self.settings)
        if cached is not None and trainer.is_global_zero:
            write_before(cached, before)
        return before

    def _add_point(
        self,
        trainer: L.Trainer,
        evaluation: Evaluation,
        reusable: bool,
        step: int | None = None,
        epoch: int | None = None,
        sample: Evaluation | None = None,
        full: bool = True,
    ) -> dict:
        """`reusable`: the evaluation is the one "after" would make at this step (its settings, its rows);
        `full`: it scored every split on all its rows (a probe point does not)."""
        step = trainer.global_step if step is None else step
        point = curve_point(step, self._epoch if epoch is None else epoch, evaluation, self._aggregate, full, sample)
        self.points = sorted([p for p in self.points if p["step"] != step] + [point], key=lambda p: p["step"])
        if reusable:
            self._latest = (step, evaluation)
        self._log(trainer, point)
        self._write_curve(trainer)
        return point

    # -- Lightning hooks ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.ckpt_path and self.saved_before is not None and self.saved_before.exists():
            self.before = Evaluation.from_dict(json.loads(self.saved_before.read_text()))
            return  # the trajectory and the stopping state come back with the checkpoint
        self.before = self._evaluate_before(trainer, pl_module)
        if self.probe is not None:
            levels = StoppingRule(self.probe.levels.conditions if self.probe.levels else ())
            levels.check_names(curve_point(0, 0, self.before, self._aggregate), self.probe.setting)
        if trainer.is_global_zero and self.saved_before is not None:
            with atomic(self.saved_before) as tmp:
                tmp.write_text(json.dumps(self.before.to_dict()))
        self._add_point(trainer, self.before, reusable=True)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        last = self.points[-1] if self.points else None
        if self.probe is None or last is None:
            return
        if last["step"] == trainer.global_step:  # resumed at its last point's step: the model holds them
            self._keep_probed(trainer)
        elif self._probed_step != last["step"]:
            self._probed = None  # a checkpoint written before checkpoints kept the copy

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._epoch = trainer.current_epoch
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._evaluate_during(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_steps is None:
            self._evaluate_during(trainer, pl_module)

    @property
    def _reusable(self) -> bool:
        """Whether a full point during unlearning is what "after" would evaluate (no MMLU, every truth ratio)."""
        return self.point_settings == self.settings

    def _evaluate_during(self, trainer: L.Trainer, pl_module) -> None:
        if self.probe is None:
            evaluation = self._evaluate(pl_module.model, "during", self.point_settings)
            self._add_point(trainer, evaluation, self._reusable)
            return
        probed = self._evaluate_probe(pl_module.model)
        point = curve_point(trainer.global_step, self._epoch, probed, self._aggregate)
        earlier = [p for p in self.points if p["step"] < trainer.global_step]
        crossed = self.probe.levels.first_reached(earlier, point) if self.probe.levels else ()
        if crossed:
            self._complete_previous(trainer, pl_module, earlier[-1] if earlier else None, crossed)
        # the point the stopping rule stops at is "after": scored once, with after's settings (every truth
        # ratio, where the points during score only those they need), not once as a point and again
        stops = self.ends_at(point)
        if crossed or stops:
            settings = self.settings if stops else self.point_settings
            evaluation = self._evaluate(pl_module.model, "after" if stops else "during", settings)
            self._add_point(trainer, evaluation, stops or self._reusable)
        else:
            full = set(self.evaluator.benchmark.eval_splits) <= set(probed.summary)
            self._add_point(trainer, probed, False, sample=self._evaluate_sample(pl_module.model), full=full)
        if self.probe.levels is None or self.probe.levels.all_reached(self.points):
            self._probed = None
        else:
            self._keep_probed(trainer)

    def _keep_probed(self, trainer: L.Trainer) -> None:
        self._probed, self._probed_step = snapshot(changing_parameters(trainer.optimizers)), trainer.global_step

    def _evaluate_probe(self, model) -> Evaluation:
        """The splits the levels and the stopping rule read, on all their evaluated rows."""
        if not self.probe.splits:
            return Evaluation()
        benchmark = self.evaluator.benchmark
        splits = view(benchmark, **{name: benchmark[name] for name in self.probe.splits})
        settings = replace(
            self.point_settings,
            truth_ratio_splits=self.probe.truth_ratio_splits,
            likelihood_splits=self.probe.likelihood_splits,
        )
        return self._evaluate(model, "during", settings, benchmark=splits)

    def _evaluate_sample(self, model) -> Evaluation | None:
        """The other splits on the fixed sample of rows (None without evaluation.during.max_examples)."""
        benchmark = self.evaluator.benchmark
        others = [name for name in benchmark.eval_splits if name not in self.probe.splits]
        if self.sample_settings is None or not others:
            return None
        splits = view(benchmark, **{name: benchmark[name] for name in others})
        return self._evaluate(model, "during", self.sample_settings, benchmark=splits)

    def _complete_previous(self, trainer: L.Trainer, pl_module, previous: dict | None, crossed) -> None:
        """Evaluate in full the last point before a crossing, from the weights kept at it."""
        if previous is None or previous.get(
            "full", set(self.evaluator.benchmark.eval_splits) <= set(previous["summary"])
        ):
            return
        if self._probed is None:  # resumed from a checkpoint written before checkpoints kept the copy
            log.warning(
                "%s first holds at step %d, but the weights of the point before it (step %d) were not kept "
                "across the restart: the values at this level interpolate from a probe point there",
                ", ".join(map(str, crossed)),
                trainer.global_step,
                previous["step"],
            )
            return
        with weights_of(changing_parameters(trainer.optimizers), self._probed):
            evaluation = self._evaluate(pl_module.model, "during", self.point_settings)
        self._add_point(trainer, evaluation, False, step=previous["step"], epoch=previous["epoch"])

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        """ "after", while the model is still where the strategy put it: Lightning's single-device teardown,
        which runs before `on_fit_end`, moves it to the CPU (a GPU run would evaluate there)."""
        self._evaluate_after(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        """A fit whose loop never ran (stopped at "before", or resumed finished) has no `on_train_end`."""
        if self.after is None:
            self._evaluate_after(trainer, pl_module)

    def _evaluate_after(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        if self._latest is not None and self._latest[0] == step:
            evaluation = self._latest[1]
        else:
            evaluation = self._evaluate(pl_module.model, "after", self.settings)
            self._add_point(trainer, evaluation, reusable=True)
        self.after = Evaluation(
            evaluation.summary, evaluation.scores, [{**row, "stage": "after"} for row in evaluation.rows]
        )

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"points": self.points, "epoch": self._epoch, "seconds": self.seconds}
        if self._probed is not None:
            # a run pre-empted between two points needs them to complete the point before a crossing
            state["probed"] = {"step": self._probed_step, "weights": self._probed}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = state_dict.get("points", [])
        self._epoch = state_dict.get("epoch", 0)
        self.seconds = state_dict.get("seconds", 0.0)  # the evaluations before the restart count too
        probed = state_dict.get("probed")
        self._probed = probed["weights"] if probed else None
        self._probed_step = probed["step"] if probed else None
