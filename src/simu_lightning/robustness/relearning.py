"""Relearning attacks: a few fine-tuning steps on a copy of the unlearned model, then the forget metrics.

Hu et al. (arXiv 2406.13356) bring unlearned knowledge back with a handful of steps on related or
even unrelated text. Two attacks, each on its own copy (the unlearned model is never touched):
- `relearn_forget`: fine-tune on a fixed share of the forget rows (`forget_fraction`, drawn with a
  fixed seed, so every run is attacked with the same rows), evaluate on the other rows. The split
  `forget_unattacked` holds the unlearned model's figures on those same rows, for comparison.
- `relearn_benign`: fine-tune on benign text (`benign_split`, default the benchmark's retain split),
  evaluate on the whole forget split.
- `relearn_forget_retain_model`, the control: the same relearning of the retain model, which never
  saw the forget set (called `relearn_forget_reference` in runs made before the rename). Answers share
  their wording ("X was born in ..."), so relearning a quarter of the rows teaches the template to any
  model; what the unlearned model recalls beyond the retain model is what unlearning hid rather than
  removed.
The fine-tuning is the target's recipe (answer-only NLL, AdamW, cosine schedule, no warm-up) run for
`steps` optimiser steps in one process through Lightning.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from simu_lightning.utils.errors import SimuError
from simu_lightning.models.finetune import FineTune, answer_loader
from simu_lightning.evaluation.splits import view
from simu_lightning.utils.seeding import seeded
from simu_lightning.utils.phase_progress import fit_steps
from simu_lightning.robustness.worst_case import RelearningSearch, worst_case_relearning

log = logging.getLogger(__name__)

ROWS_SEED = 0  # the relearning rows are the same in every run


def relearning_rows(count: int, fraction: float) -> tuple[list[int], list[int]]:
    """(rows to relearn on, rows to evaluate on): a fixed draw of round(fraction * count) rows (at least
    one, and at least one left to evaluate)."""
    if count < 2:
        raise SimuError(
            f"robustness.families.relearning: the forget split has {count} row(s); relearning needs at least 2"
        )
    size = min(count - 1, max(1, round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(ROWS_SEED)).tolist()
    return sorted(order[:size]), sorted(order[size:])


@dataclass
class Relearning:
    steps: int = 30
    lr: float = 1e-4
    batch_size: int = 8
    forget_fraction: float = 0.25
    benign_split: str | None = None  # null: the benchmark's retain split
    forget: bool = True
    benign: bool = True
    search: dict | None = None  # the worst-case attack's settings (worst_case.py); null: the fixed attack only

    def __post_init__(self):
        if self.steps < 1:
            raise SimuError(f"robustness.families.relearning.steps={self.steps} must be at least 1")
        if not 0 < self.forget_fraction < 1:
            raise SimuError(f"robustness.families.relearning.forget_fraction={self.forget_fraction} must lie in (0, 1)")
        if self.search is not None and not isinstance(self.search, RelearningSearch):
            self.search = RelearningSearch(**dict(self.search))

    def relearned(self, context, rows: list[dict], model=None):
        """A copy of the unlearned model (or of `model`) fine-tuned for `steps` steps on `rows`, every
        parameter trainable (the unlearning may have frozen some: the attacker has not)."""
        model = copy.deepcopy(context.model if model is None else model).requires_grad_(True)
        loader = answer_loader(
            context.tokenizer, context.fmt, rows, context.settings.max_length, self.batch_size, seed=ROWS_SEED
        )
        with seeded(ROWS_SEED):
            trainer = context.make_trainer(
                max_steps=self.steps, max_epochs=-1, callbacks=[fit_steps("relearning attack")]
            )
            trainer.fit(FineTune(model.train(), self.lr, warmup_ratio=0.0), loader)
        return model.eval()

    def relearn_forget(self, context, name: str, model) -> None:
        """`model` on the held-out forget rows (as `forget_unattacked`), and a copy of it relearned on the
        others (as `forget`), recorded as attack `name`."""
        forget_name = context.benchmark.forget
        forget = context.forget_split()
        train, held = relearning_rows(len(forget), self.forget_fraction)
        held_view = view(context.benchmark, **{forget_name: forget.select(held)})
        context.evaluate(name, model, held_view, rename={forget_name: f"{forget_name}_unattacked"})
        relearned = self.relearned(context, forget.select(train).to_list(), model)
        context.evaluate(name, relearned, held_view)

    @property
    def needs_retain_model(self) -> bool:
        return self.forget

    def before(self, context, retain_model=None) -> None:
        """The control: the forget relearning of the retain model, which never saw the forget set."""
        if self.forget and retain_model is not None:
            self.relearn_forget(context, "relearn_forget_retain_model", retain_model)

    def after(self, context, found=None) -> None:
        self.run(context)

    def run(self, context) -> None:
        forget_name = context.benchmark.forget
        forget = context.forget_split()
        if self.forget:
            self.relearn_forget(context, "relearn_forget", context.model)
        if self.search is not None:
            context.results["relearn_forget_worst"] = worst_case_relearning(self, context, self.search)
        if self.benign:
            split = self.benign_split or context.benchmark.retain
            model = self.relearned(context, context.benchmark[split].to_list())
            context.evaluate("relearn_benign", model, view(context.benchmark, **{forget_name: forget}))
