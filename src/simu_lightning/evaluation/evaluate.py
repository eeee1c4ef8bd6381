"""The dispatch to the benchmark's own evaluation suite, in the compute dtype the evaluation asks for.

A benchmark names its suite in its config (`suite: {_target_: ..., _partial_: true}`, e.g.
`simu_lightning.evaluation.qa.evaluate`), so adding a benchmark touches its loader, its suite and one
YAML; nothing here lists them.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from simu_lightning.distributed import unsharded
from simu_lightning.utils.devices import on_device, stage as labelled
from simu_lightning.utils.errors import SimuError
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation


def evaluation_precision(model, dtype: str | None):
    """`torch.autocast` to `dtype` (e.g. bfloat16, as LUME's official evaluation runs), or nothing when
    the model already computes in it. Autocast rounds the weights and inputs of matmuls to `dtype` and
    keeps normalisations and softmax in float32; the weights themselves are never changed."""
    if dtype is None:
        return nullcontext()
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype):
        raise ValueError(f"evaluation.dtype={dtype!r} is not a torch dtype (e.g. bfloat16, float16, float32)")
    parameter = next(model.parameters())
    if parameter.dtype == target:
        return nullcontext()
    return torch.autocast(parameter.device.type, dtype=target)


def evaluate(
    model, tokenizer, fmt, benchmark, stage: str, settings: EvaluationSettings, retain_ratios=None
) -> Evaluation:
    """Evaluate with the suite the benchmark names. `retain_ratios` are what a suite compares against
    (TOFU: the retain model's forget truth ratios, for forget quality)."""
    if benchmark.suite is None:
        raise SimuError(f"benchmark {benchmark.name!r} names no evaluation suite (benchmark.suite._target_)")
    with evaluation_precision(model, settings.dtype):
        return benchmark.suite(model, tokenizer, fmt, benchmark, stage, settings, retain_ratios)


@dataclass(frozen=True)
class Evaluator:
    """What every evaluation of a run shares: the tokenizer, the prompt format, the benchmark, the
    settings, the retain model's forget truth ratios (TOFU's forget quality) and the run's device. The
    evaluations before, during and after unlearning, of the base and clean models, and of every attack go
    through one, and each scores its model on the run's device: a model that a fit left on the CPU
    (Lightning's teardown), or a copy made of it, is moved there first (utils/devices.py)."""

    tokenizer: object
    fmt: object
    benchmark: object
    settings: EvaluationSettings
    retain_ratios: list[float] | None = None
    device: object = None  # torch.device of the run (None: wherever the model is)

    def __call__(self, model, stage: str, settings: EvaluationSettings | None = None, benchmark=None) -> Evaluation:
        """`model` through the benchmark's suite (or through `benchmark`, a view of other splits, which
        compares nothing with the retain model: forget quality is defined on the whole forget split)."""
        own = benchmark is None or benchmark is self.benchmark
        with labelled(stage), unsharded(model):
            return evaluate(
                on_device(model, self.device),
                self.tokenizer,
                self.fmt,
                self.benchmark if own else benchmark,
                stage,
                settings or self.settings,
                self.retain_ratios if own else None,
            )
