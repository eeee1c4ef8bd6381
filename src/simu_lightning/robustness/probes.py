"""Probes that ask for the forgotten facts another way: the same questions reworded, and the same
questions behind a prefix that asks the model to recall.

- `paraphrase`: the forget split with every question replaced by its `paraphrased_question` (TOFU and
  the synthetic benchmark have one per row); the answers scored against are the original ones.
- `prefixes`: the forget split once per prefix, each question preceded by it; the summary is the mean
  over prefixes, and every row carries the `prefix` it was asked with. The default list is fixed
  (conf/robustness/standard.yaml), so runs are comparable.
Both also run on the target before unlearning (`paraphrase_target`, `prefixes_target`): a probe only
says something where the target itself answered it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import concatenate_datasets

from simu_lightning.evaluation.splits import view

log = logging.getLogger(__name__)


@dataclass
class Probes:
    paraphrase: bool = True
    prefixes: tuple[str, ...] = ()
    needs_retain_model = False

    def before(self, context, retain_model=None) -> None:
        """On the target: a probe only says something where the target itself answered it."""
        self.run(context, suffix="_target")

    def after(self, context, found=None) -> None:
        self.run(context)

    def run(self, context, suffix: str = "") -> None:
        """The probes on `context.model`, recorded as `paraphrase{suffix}` and `prefixes{suffix}`."""
        forget_name = context.benchmark.forget
        forget = context.forget_split()
        if "question" not in forget.column_names:
            log.warning(
                "robustness: probes skipped, the %s split of %s holds documents, not questions",
                forget_name,
                context.benchmark.name,
            )
            return
        if self.paraphrase:
            if "paraphrased_question" in forget.column_names:
                reworded = forget.map(lambda r: {"question": r["paraphrased_question"]})
                context.evaluate(
                    f"paraphrase{suffix}", context.model, view(context.benchmark, **{forget_name: reworded})
                )
            else:
                log.warning(
                    "robustness: paraphrase probe skipped, the %s split of %s has no paraphrased_question column",
                    forget_name,
                    context.benchmark.name,
                )
        if self.prefixes:
            prefixed = concatenate_datasets(
                [forget.map(lambda r, p=prefix: {"question": p + r["question"]}) for prefix in self.prefixes]
            )
            first = len(context.rows)
            context.evaluate(f"prefixes{suffix}", context.model, view(context.benchmark, **{forget_name: prefixed}))
            for row in context.rows[first:]:
                row["prefix"] = self.prefixes[row["index"] // len(forget)]
