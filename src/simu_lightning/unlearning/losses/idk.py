"""Answering the forget questions with a refusal (TOFU's "IDK" baselines). The `alternate` batch holds the
forget questions, each with a refusal drawn from a fixed list (conf/loss/refusals.yaml, seeded per row):

- `IdkNLL`: learn the refusal: loss = L_alternate + retain_weight * L_retain (L: mean answer NLL);
- `IdkDPO`: prefer the refusal to the original answer, DPO (Rafailov et al. 2023) against the frozen
  target: loss = -(2 / beta) E[log sigmoid(beta * (log pi/pi_ref(refusal) - log pi/pi_ref(answer)))]
  + retain_weight * L_retain, each log pi the answer's summed log-likelihood (open-unlearning's DPO)."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction

import torch.nn.functional as F

from simu_lightning.utils.errors import SimuError


REFUSALS_NEEDED = "loss.refusals: a list of at least one refusal answer"


def checked_refusals(refusals) -> tuple[str, ...]:
    refusals = tuple(str(r) for r in (refusals or ()) if str(r).strip())
    if not refusals:
        raise SimuError(REFUSALS_NEEDED)
    return refusals


class IdkNLL:
    needs_frozen_target = False
    needs_alternates = True

    def __init__(self, refusals=(), retain_weight: float = 1.0, reduction: str = "example"):
        self.refusals, self.retain_weight = checked_refusals(refusals), retain_weight
        self.reduction = checked_reduction(reduction)

    def __call__(self, forward):
        refusal_nll, retain_nll = (
            forward.nll("alternate").reduced(self.reduction),
            forward.nll("retain").reduced(self.reduction),
        )
        return refusal_nll + self.retain_weight * retain_nll, {"refusal_nll": refusal_nll, "retain_nll": retain_nll}


class IdkDPO:
    needs_frozen_target = True
    needs_alternates = True

    def __init__(self, refusals=(), beta: float = 0.1, retain_weight: float = 1.0, reduction: str = "example"):
        self.refusals, self.beta, self.retain_weight = checked_refusals(refusals), beta, retain_weight
        self.reduction = checked_reduction(reduction)

    def __call__(self, forward):
        def log_ratio(split):
            return forward.nll(split, frozen=True).total - forward.nll(split).total

        dpo = -2.0 / self.beta * F.logsigmoid(self.beta * (log_ratio("alternate") - log_ratio("forget"))).mean()
        retain_nll = forward.nll("retain").reduced(self.reduction)
        return dpo + self.retain_weight * retain_nll, {
            "dpo": dpo,
            "forget_nll": forward.nll("forget").reduced(self.reduction),
            "refusal_nll": forward.nll("alternate").reduced(self.reduction),
            "retain_nll": retain_nll,
        }
