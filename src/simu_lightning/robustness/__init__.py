"""Is it really forgotten? The attack stage (`robustness=standard`), run after unlearning on copies of
the unlearned model, which it never changes:

- relearning (relearning.py): a few fine-tuning steps on part of the forget set, or on benign text
  (and, as the control, the same on the reference model that never saw the forget set);
- quantisation (quantization.py): 8- and 4-bit round-to-nearest, and NF4;
- probes (probes.py): paraphrased questions, and questions behind recall prefixes (also on the target,
  `paraphrase_target`, `prefixes_target`, before unlearning);
- membership inference (mia.py): loss, zlib, min-k% and min-k%++ AUCs of the forget set against
  held-out rows, on the target (`mia_target`, before unlearning) and on the unlearned model (`mia`).

Each family is one config node (conf/robustness/standard.yaml); setting it to null leaves it out.
Results land in results.json under `robustness: {attack: {split: {metric: value}}}`, per-example
rows in generations.jsonl with `stage` = the attack's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from simu_lightning.robustness.attack import Attack
from simu_lightning.robustness.mia import MembershipInference
from simu_lightning.robustness.probes import Probes
from simu_lightning.robustness.quantization import Quantization
from simu_lightning.robustness.relearning import Relearning

__all__ = ["Attack", "MembershipInference", "Probes", "Quantization", "Relearning", "Robustness"]


@dataclass
class Robustness:
    relearning: Relearning | None = None
    quantization: Quantization | None = None
    probes: Probes | None = None
    mia: MembershipInference | None = None

    def before(self, attack: Attack, reference=None) -> None:
        """Before unlearning, the baselines: membership inference and the probes on the target
        (`attack.model`), and the forget relearning of the reference model, when there is one; both
        models first go to the run's device (`attack.device`), where the fit would put them."""
        attack.model = attack.on_device(attack.model)
        reference = attack.on_device(reference) if reference is not None else None
        if self.mia is not None:
            self.mia.run(attack, name="mia_target")
        if self.probes is not None:
            self.probes.run(attack, suffix="_target")
        if self.relearning is not None and reference is not None:
            self.relearning.control(attack, reference)

    def after(self, attack: Attack) -> None:
        """On the unlearned model (`attack.model`), every family in turn."""
        for family in (self.mia, self.probes, self.quantization, self.relearning):
            if family is not None:
                family.run(attack)
