"""Probe points: evaluations during unlearning that score only what the forget levels and the stopping
rule read, with the two points around each level's first crossing evaluated in full
(`evaluation.during.full_around`, e.g. `forget.rougeL_recall<=0.4,0.3,0.2`; `auto`, the default: the
benchmark's levels, `benchmark.levels`, or where it has none the stopping rule's own condition).
With `evaluation.during.max_examples`, a probe point also scores the other splits on a fixed sample of
their rows (the same rows at every point and in every run), kept apart from the point's full values.

The report reads a run at matched forgetting by interpolating between the last point that misses a level
and the first that meets it (report/matched.py), so those two points, and only those, need every split.
Whether a point is one of them is known only at the next point: the weights of the last probe point are
kept (one copy of what the optimiser changes, also in any checkpoint written meanwhile) until then, and
evaluated in full when the next point crosses a level. On a 135M model a probe costs a fraction of a full
point (one split's generations, no likelihoods of the utility splits).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from simu_lightning.evaluation.types import split_levels
from simu_lightning.unlearning.stopping import ForgetLevels, StoppingRule
from simu_lightning.utils.errors import SimuError


AUTO = "auto"


@dataclass(frozen=True)
class ProbePlan:
    """What a probe point evaluates: `splits` (the levels' split and every split the stopping rule reads),
    the answer likelihoods of `likelihood_splits` only (a split read only through its generations, as by
    forget exact match, needs none) and the perturbed answers of `truth_ratio_splits` only; `setting`
    names where the levels came from."""

    levels: ForgetLevels | None  # None: no point is completed (the other splits on the sample only)
    splits: tuple[str, ...]
    truth_ratio_splits: tuple[str, ...]
    setting: str = "evaluation.during.full_around"
    likelihood_splits: tuple[str, ...] | None = None  # None: every split of the probe


def resolved_full_around(full_around: str | None, benchmark_levels: str | None, stop_when, processes: int = 1):
    """(the levels the points around whose crossings are evaluated in full, the setting they come from).
    `auto`: the benchmark's levels; without them the stopping rule's condition, when it is one split's
    metric (the run stops at its first crossing); else, and under several processes (whose evaluation reads
    a gathered copy of the shards, not the shards a kept copy would restore), every point in full."""
    if full_around != AUTO:
        return full_around, "evaluation.during.full_around"
    if processes > 1:
        return None, "evaluation.during.full_around"
    if benchmark_levels is not None:
        return benchmark_levels, "benchmark.levels (evaluation.during.full_around=auto)"
    conditions = stop_when.conditions if stop_when is not None else ()
    if len(conditions) == 1 and "." in conditions[0].metric:
        c = conditions[0]
        return f"{c.metric}{c.op}{c.value!r}", "unlearning.stop_when (evaluation.during.full_around=auto)"
    return None, "evaluation.during.full_around"


def probe_plan(
    full_around: str | None,
    stop_when: StoppingRule | None,
    eval_splits: tuple[str, ...],
    truth_ratio_metrics,
    setting: str = "evaluation.during.full_around",
    sample: bool = False,
    generation_metrics=(),
) -> ProbePlan | None:
    """None (every point in full) without levels and without a sample of the other splits
    (`sample`: evaluation.during.max_examples), or when the stopping rule reads a benchmark-level score,
    which needs every split anyway. `truth_ratio_metrics`: the suite's metrics that come from the
    perturbed answers (the QA suite's truth ratio and normalised probability); `generation_metrics`: those
    that come from the greedy generations alone (a split read only through them skips its likelihoods)."""
    if full_around is None and not sample:
        return None
    levels = split_levels(full_around, setting) if full_around is not None else None
    conditions = [(c, f"{setting}={full_around!r}") for c in (levels.conditions if levels else ())]
    conditions += [(c, f"unlearning.stop_when={stop_when}") for c in (stop_when.conditions if stop_when else ())]
    splits, truth_ratio_splits, likelihood_splits = [], [], []
    for condition, source in conditions:
        split, _, metric = condition.metric.rpartition(".")
        if not split:  # a score of the stopping rule reads every split: no point can be a probe
            return None
        if split not in eval_splits:
            raise SimuError(
                f"{source}: no evaluation split {split!r} (the benchmark evaluates {', '.join(eval_splits)})"
            )
        splits.append(split)
        if metric in truth_ratio_metrics:
            truth_ratio_splits.append(split)
        if metric not in generation_metrics:
            likelihood_splits.append(split)
    return ProbePlan(
        levels,
        tuple(dict.fromkeys(splits)),
        tuple(dict.fromkeys(truth_ratio_splits)),
        setting,
        tuple(dict.fromkeys(likelihood_splits)),
    )


def changing_parameters(optimizers) -> list[torch.Tensor]:
    """Every tensor an optimiser can change (what a snapshot must keep to restore a point's weights)."""
    seen, tensors = set(), []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    tensors.append(p)
    return tensors


@torch.no_grad()
def snapshot(parameters: list[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of the parameters' values, on the CPU (one process: pipeline/checks.py refuses probe points
    under FSDP, whose evaluation reads a gathered copy of the shards, not the shards this would restore)."""
    return [p.detach().to("cpu", copy=True) for p in parameters]


@contextmanager
def weights_of(parameters: list[torch.Tensor], saved: list[torch.Tensor]) -> Iterator[None]:
    """The parameters hold `saved` inside the block, and their own values again after it (bit for bit)."""
    current = snapshot(parameters)
    with torch.no_grad():
        for p, value in zip(parameters, saved):
            p.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(parameters, current):
                p.copy_(value)
