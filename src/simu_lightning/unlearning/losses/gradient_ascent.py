"""Gradient ascent: loss = -L_forget, the forget term alone."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction


class GradientAscent:
    needs_frozen_target = False

    def __init__(self, reduction: str = "example"):
        self.reduction = checked_reduction(reduction)

    def __call__(self, forward):
        forget_nll = forward.nll("forget").reduced(self.reduction)
        return -forget_nll, {"forget_nll": forget_nll}
