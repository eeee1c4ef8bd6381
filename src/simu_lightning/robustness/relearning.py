"""Relearning attacks: a few fine-tuning steps on a copy of the unlearned model, then the forget metrics.

Hu et al. (arXiv 2406.13356) bring unlearned knowledge back with a handful of steps on related or
even unrelated text. Two attacks, each on its own copy (the unlearned model is never touched):
- `relearn_forget`: fine-tune on a fixed share of the forget rows (`forget_fraction`, drawn with a
  fixed seed, so every run is attacked with the same rows), evaluate on the other rows. The split
  `forget_unattacked` holds the unlearned model's figures on those same rows, for comparison.
- `relearn_benign`: fine-tune on benign text (`benign_split`, default the benchmark's retain split),
  evaluate on the whole forget split.
- `relearn_forget_reference`, the control: the same relearning of the reference model, which never saw
  the forget set. Answers share their wording ("X was born in ..."), so relearning a quarter of the rows
  teaches the template to any model; what the unlearned model recalls beyond the reference is what
  unlearning hid rather than removed.
The fine-tuning is the target's recipe (answer-only NLL, AdamW, cosine schedule, no warm-up) run for
`steps` optimiser steps in one process through Lightning.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from simu_lightning.errors import SimuError
from simu_lightning.models.finetune import FineTune, answer_loader
from simu_lightning.robustness.attack import view
from simu_lightning.seeding import seeded

log = logging.getLogger(__name__)

ROWS_SEED = 0  # the relearning rows are the same in every run


def relearning_rows(count: int, fraction: float) -> tuple[list[int], list[int]]:
    """(rows to relearn on, rows to evaluate on): a fixed draw of round(fraction * count) rows (at least
    one, and at least one left to evaluate)."""
    if count < 2:
        raise SimuError(f"robustness.relearning: the forget split has {count} row(s); relearning needs at least 2")
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

    def __post_init__(self):
        if self.steps < 1:
            raise SimuError(f"robustness.relearning.steps={self.steps} must be at least 1")
        if not 0 < self.forget_fraction < 1:
            raise SimuError(f"robustness.relearning.forget_fraction={self.forget_fraction} must lie in (0, 1)")

    def relearned(self, attack, rows: list[dict], model=None):
        """A copy of the unlearned model (or of `model`) fine-tuned for `steps` steps on `rows`, every
        parameter trainable (the unlearning may have frozen some: the attacker has not)."""
        model = copy.deepcopy(attack.model if model is None else model).requires_grad_(True)
        loader = answer_loader(
            attack.tokenizer, attack.fmt, rows, attack.settings.max_length, self.batch_size, seed=ROWS_SEED
        )
        with seeded(ROWS_SEED):
            trainer = attack.make_trainer(max_steps=self.steps, max_epochs=-1)
            trainer.fit(FineTune(model.train(), self.lr, warmup_ratio=0.0), loader)
        return model.eval()

    def relearn_forget(self, attack, name: str, model) -> None:
        """`model` on the held-out forget rows (as `forget_unattacked`), and a copy of it relearned on the
        others (as `forget`), recorded as attack `name`."""
        forget_name = attack.benchmark.forget
        forget = attack.forget_split()
        train, held = relearning_rows(len(forget), self.forget_fraction)
        held_view = view(attack.benchmark, **{forget_name: forget.select(held)})
        attack.evaluate(name, model, held_view, rename={forget_name: f"{forget_name}_unattacked"})
        relearned = self.relearned(attack, forget.select(train).to_list(), model)
        attack.evaluate(name, relearned, held_view)

    def control(self, attack, reference) -> None:
        """The forget relearning of the reference model (never saw the forget set)."""
        if self.forget:
            self.relearn_forget(attack, "relearn_forget_reference", reference)

    def run(self, attack) -> None:
        forget_name = attack.benchmark.forget
        forget = attack.forget_split()
        if self.forget:
            self.relearn_forget(attack, "relearn_forget", attack.model)
        if self.benign:
            split = self.benign_split or attack.benchmark.retain
            model = self.relearned(attack, attack.benchmark[split].to_list())
            attack.evaluate("relearn_benign", model, view(attack.benchmark, **{forget_name: forget}))
