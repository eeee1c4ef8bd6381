"""Is it really forgotten? The attack stage (`robustness=standard`), run after unlearning on copies of
the unlearned model, which it never changes. Its attack families, in run order
(conf/robustness/standard.yaml, `families`):

- membership inference (mia.py): loss, zlib, min-k% and min-k%++ AUCs of the forget set against
  held-out rows, on the target (`mia_target`, before unlearning) and on the unlearned model (`mia`);
- probes (probes.py): paraphrased questions, and questions behind recall prefixes (also on the target);
- quantisation (quantization.py): 8- and 4-bit round-to-nearest, group-wise 4-bit, FP4 and NF4;
- relearning (relearning.py): a few fine-tuning steps on part of the forget set, or on benign text
  (and, as the control, the same on the retain model that never saw the forget set).

A family is any object with `before(context, retain_model)` (its baselines, on the target before
unlearning; it returns what its attack after unlearning reads, as JSON, or None), `after(context, found)`
(on the unlearned model, `found` what its `before` returned) and `needs_retain_model`; it keeps no state
between the two, since a run may read the baselines from the cache (pipeline/attacks.py) rather than run
`before`. Adding one is a file and a node under `families` (docs/extending.md). A family set to null is
left out. Results land in
results.json under `robustness: {attack: {split: {metric: value}}}`, per-example rows in
generations.jsonl with `stage` = the attack's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from simu_lightning.robustness.context import AttackContext
from simu_lightning.robustness.mia import MembershipInference
from simu_lightning.robustness.probes import Probes
from simu_lightning.robustness.quantization import Quantization
from simu_lightning.robustness.relearning import Relearning
from simu_lightning.utils.errors import SimuError

__all__ = ["AttackContext", "AttackFamily", "MembershipInference", "Probes", "Quantization", "Relearning", "Robustness"]


class AttackFamily(Protocol):
    needs_retain_model: bool  # whether `before` needs the model that never saw the forget set

    def before(self, context: AttackContext, retain_model=None) -> dict | None: ...

    def after(self, context: AttackContext, found: dict | None = None) -> None: ...


@dataclass
class Robustness:
    families: dict[str, AttackFamily | None] = field(default_factory=dict)

    def __post_init__(self):
        self.families = {name: family for name, family in (self.families or {}).items() if family is not None}
        for name, family in self.families.items():
            if not all(hasattr(family, a) for a in ("before", "after", "needs_retain_model")):
                raise SimuError(
                    f"robustness.families.{name}: {type(family).__name__} is not an attack family "
                    "(it needs before(context, retain_model), after(context) and needs_retain_model)"
                )

    @property
    def needs_retain_model(self) -> bool:
        return any(family.needs_retain_model for family in self.families.values())

    def before(self, context: AttackContext, retain_model=None) -> dict:
        """Before unlearning, every family's baselines on the target (`context.model`); the target and
        the retain model first go to the run's device (`context.device`), where the fit would put them.
        Returns what each family's attack after unlearning reads, by name (JSON)."""
        context.model = context.on_device(context.model)
        retain_model = context.on_device(retain_model) if retain_model is not None else None
        found = {name: family.before(context, retain_model) for name, family in self.families.items()}
        return {name: value for name, value in found.items() if value is not None}

    def after(self, context: AttackContext, found: dict) -> None:
        """On the unlearned model (`context.model`), every family in turn, with what its `before` found; the
        model first goes back to the run's device (the fit's teardown left it on the CPU)."""
        context.model = context.on_device(context.model)
        for name, family in self.families.items():
            family.after(context, found.get(name))
