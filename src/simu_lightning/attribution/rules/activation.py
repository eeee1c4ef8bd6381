"""Control: a unit's mean |activation| over the forget answers (one pass), in integrated gradients' per-layer
counts under match_counts (the same budget in the same layers, chosen by another score)."""

from __future__ import annotations

from simu_lightning.attribution.rules.base import SelectionRule


class Activation(SelectionRule):
    name = "activation"

    def attributions(self, model, projs, group, batch, betas, prefix, layout):
        return [betas[i].abs() for i in group]
