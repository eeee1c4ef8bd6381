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

from simu_lightning.robustness.attack import view

log = logging.getLogger(__name__)


@dataclass
class Probes:
    paraphrase: bool = True
    prefixes: tuple[str, ...] = ()

    def run(self, attack, suffix: str = "") -> None:
        """The probes on `attack.model`, recorded as `paraphrase{suffix}` and `prefixes{suffix}`."""
        forget_name = attack.benchmark.forget
        forget = attack.forget_split()
        if self.paraphrase:
            if "paraphrased_question" in forget.column_names:
                reworded = forget.map(lambda r: {"question": r["paraphrased_question"]})
                attack.evaluate(f"paraphrase{suffix}", attack.model, view(attack.benchmark, **{forget_name: reworded}))
            else:
                log.warning(
                    "robustness: paraphrase probe skipped, the %s split of %s has no paraphrased_question column",
                    forget_name,
                    attack.benchmark.name,
                )
        if self.prefixes:
            prefixed = concatenate_datasets(
                [forget.map(lambda r, p=prefix: {"question": p + r["question"]}) for prefix in self.prefixes]
            )
            first = len(attack.rows)
            attack.evaluate(f"prefixes{suffix}", attack.model, view(attack.benchmark, **{forget_name: prefixed}))
            for row in attack.rows[first:]:
                row["prefix"] = self.prefixes[row["index"] // len(forget)]
