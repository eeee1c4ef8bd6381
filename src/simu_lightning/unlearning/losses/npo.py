"""Negative Preference Optimisation (Zhang et al. 2024) with the retain term:
loss = -(2 / beta) E_forget[log sigmoid(-beta * log(pi(y|x) / pi_ref(y|x)))] + retain_weight * L_retain,
with pi_ref the frozen target and log pi(y|x) the answer's summed log-likelihood."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction

import torch.nn.functional as F


class NPO:
    needs_frozen_target = True

    def __init__(self, beta: float = 0.1, retain_weight: float = 1.0, reduction: str = "example"):
        self.reduction = checked_reduction(reduction)
        self.beta, self.retain_weight = beta, retain_weight

    def __call__(self, forward):
        forget = forward.nll("forget")
        log_ratio = forward.nll("forget", frozen=True).total - forget.total
        npo = -2.0 / self.beta * F.logsigmoid(-self.beta * log_ratio).mean()
        retain_nll = forward.nll("retain").reduced(self.reduction)
        return npo + self.retain_weight * retain_nll, {
            "npo": npo,
            "forget_nll": forget.reduced(self.reduction),
            "retain_nll": retain_nll,
        }
