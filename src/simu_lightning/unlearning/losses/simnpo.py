"""SimNPO (Fan et al. 2024, arXiv 2410.07163): NPO without the frozen reference, length-normalised, with a
margin: loss = -(2 / beta) E_forget[log sigmoid(beta * L(y|x) - gamma)] + retain_weight * L_retain, L(y|x)
the answer's mean NLL (the paper's -(1/|y|) log pi(y|x)).

open-unlearning writes the margin in NLL units, `delta`, as log sigmoid(beta * (L - delta)): its delta is
our gamma / beta (the same loss at gamma = beta * delta; both default to no margin). It also weights the
forget term (its SimNPO.yaml: gamma 0.125 on the forget loss, alpha 1 on the retain loss): `forget_weight`,
1 by default as the paper writes the loss."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction

import torch.nn.functional as F


class SimNPO:
    needs_frozen_target = False

    def __init__(
        self,
        beta: float = 4.5,
        gamma: float = 0.0,
        retain_weight: float = 1.0,
        forget_weight: float = 1.0,
        reduction: str = "example",
    ):
        self.beta, self.gamma, self.retain_weight, self.forget_weight = beta, gamma, retain_weight, forget_weight
        self.reduction = checked_reduction(reduction)

    def __call__(self, forward):
        forget = forward.nll("forget").mean
        simnpo = -2.0 / self.beta * F.logsigmoid(self.beta * forget - self.gamma).mean()
        retain_nll = forward.nll("retain").reduced(self.reduction)
        return self.forget_weight * simnpo + self.retain_weight * retain_nll, {
            "simnpo": simnpo,
            "forget_nll": forget.mean(),
            "retain_nll": retain_nll,
        }
