"""Control on a planted target (benchmark.planted.fraction): the planted neurons themselves, the oracle mask.
Its size is P's, not the attribution's: a mask of another size would not be what the planting wrote."""

from __future__ import annotations

from simu_lightning.attribution.rules.base import SelectionRule


class Planted(SelectionRule):
    name = "planted"
    scored_by = None  # no scores: the planting's mask
    selects_heads = False  # a planted target plants no heads

    def place(self, kept, ranking, seed, planted=None):
        return planted, {name: mask.float() for name, mask in planted.items()}
