"""SIMU's rule: each unit's integrated gradient over the forget answers (in the attribution's `mode`, with
`m` nodes of its `quadrature`), thresholded at t. `attribution=first_order` and `joint` are this rule on
another approximation of the same score, not controls."""

from __future__ import annotations

from simu_lightning.attribution.integrated_gradients import (
    MODES,
    gradient_times_activation,
    integrated_gradients,
    passes,
    quadrature,
)
from simu_lightning.attribution.rules.base import SelectionRule


class IntegratedGradients(SelectionRule):
    name = "integrated_gradients"

    def __init__(self, m: int = 20, quadrature: str = "riemann", mode: str = "layerwise"):
        if mode not in MODES:
            raise ValueError(f"unknown attribution mode {mode!r}: choose one of {', '.join(MODES)}")
        super().__init__(m, quadrature, mode)

    @property
    def nodes(self):
        """The quadrature's alphas and weights (one node at first order, which reads none)."""
        return quadrature(self.quadrature, self.m if self.mode != "first_order" else 1)

    @property
    def copies(self) -> int:
        return len(self.nodes[0])

    def groups(self, layers: int) -> list[list[int]]:
        # layer-wise integrated gradients scale one layer at a time; joint and first order every layer at once
        return [[i] for i in range(layers)] if self.mode == "layerwise" else [list(range(layers))]

    def passes(self, layers: int) -> int:
        return passes(self.mode, layers, self.m)

    def key(self) -> tuple:
        return (self.m, self.quadrature, self.mode)

    def attributions(self, model, projs, group, batch, betas, prefix, layout):
        if self.mode == "first_order":
            return gradient_times_activation(model, projs, batch, betas, prefix)
        alphas, weights = self.nodes
        return integrated_gradients(
            model, [projs[i] for i in group], batch, [betas[i] for i in group], alphas, weights, prefix, layout
        )
