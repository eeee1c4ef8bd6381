"""GradDiff (Liu et al. 2022; the SIMU paper's objective): ascend on the forget answers, descend on the retain
answers: loss = -L_forget + retain_weight * L_retain, L = the mean over examples of each answer's mean NLL."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction


class GradDiff:
    needs_frozen_target = False

    def __init__(self, retain_weight: float = 1.0, reduction: str = "example"):
        self.retain_weight, self.reduction = retain_weight, checked_reduction(reduction)

    def __call__(self, forward):
        forget_nll, retain_nll = (
            forward.nll("forget").reduced(self.reduction),
            forward.nll("retain").reduced(self.reduction),
        )
        return -forget_nll + self.retain_weight * retain_nll, {"forget_nll": forget_nll, "retain_nll": retain_nll}
