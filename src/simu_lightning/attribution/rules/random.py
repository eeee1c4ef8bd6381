"""Control: per layer, as many units as integrated gradients keeps, drawn uniformly at random (seeded): the
same budget in the same layers, without the attribution's choice."""

from __future__ import annotations

import logging

from simu_lightning.attribution.rules.base import SelectionRule
from simu_lightning.attribution.selection import random_like

log = logging.getLogger(__name__)


class Random(SelectionRule):
    name = "random"
    scored_by = "integrated_gradients"  # the counts it keeps

    def place(self, kept, ranking, seed, planted=None):
        log.info("attribution.selection=random: the attribution's per-layer counts at random positions (seed %d)", seed)
        return random_like(kept, seed)  # the draw's ranking replaces the scores
