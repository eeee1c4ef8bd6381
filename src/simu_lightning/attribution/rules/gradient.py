"""Control: a unit's |gradient x activation| over the forget answers (one forward and backward), in
integrated gradients' per-layer counts under match_counts."""

from __future__ import annotations

from simu_lightning.attribution.integrated_gradients import gradient_times_activation
from simu_lightning.attribution.rules.base import SelectionRule


class Gradient(SelectionRule):
    name = "gradient"

    def attributions(self, model, projs, group, batch, betas, prefix, layout):
        return [att.abs() for att in gradient_times_activation(model, projs, batch, betas, prefix)]
