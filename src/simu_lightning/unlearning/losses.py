"""Unlearning objectives, one per class. Each takes the answer NLLs of the forget and retain batches
(`AnswerNLL`: per-example sums and token counts) and returns the loss to minimise plus the terms worth
logging. Which parameters move, and with which optimiser, is the method's business, not the loss's."""

from __future__ import annotations

import torch.nn.functional as F

from simu_lightning.likelihood import AnswerNLL


class GradDiff:
    """loss = -L_forget + retain_weight * L_retain, L = mean NLL over answer tokens (Liu et al. 2022;
    the SIMU paper's objective)."""

    needs_frozen_target = False

    def __init__(self, retain_weight: float = 1.0):
        self.retain_weight = retain_weight

    def __call__(self, forget: AnswerNLL, retain: AnswerNLL, frozen_forget: AnswerNLL | None = None):
        forget_nll, retain_nll = forget.mean.mean(), retain.mean.mean()
        return -forget_nll + self.retain_weight * retain_nll, {"forget_nll": forget_nll, "retain_nll": retain_nll}


class GradientAscent:
    """loss = -L_forget: the forget term alone."""

    needs_frozen_target = False

    def __call__(self, forget: AnswerNLL, retain: AnswerNLL | None = None, frozen_forget: AnswerNLL | None = None):
        forget_nll = forget.mean.mean()
        return -forget_nll, {"forget_nll": forget_nll}


class NPO:
    """Negative Preference Optimisation (Zhang et al. 2024) with the retain term:
    loss = -(2 / beta) E_forget[log sigmoid(-beta * log(pi(y|x) / pi_ref(y|x)))] + retain_weight * L_retain,
    with pi_ref a frozen copy of the target and log pi(y|x) the answer's summed log-likelihood."""

    needs_frozen_target = True

    def __init__(self, beta: float = 0.1, retain_weight: float = 1.0):
        self.beta, self.retain_weight = beta, retain_weight

    def __call__(self, forget: AnswerNLL, retain: AnswerNLL, frozen_forget: AnswerNLL):
        log_ratio = frozen_forget.total - forget.total
        npo = -2.0 / self.beta * F.logsigmoid(-self.beta * log_ratio).mean()
        retain_nll = retain.mean.mean()
        return npo + self.retain_weight * retain_nll, {
            "npo": npo,
            "forget_nll": forget.mean.mean(),
            "retain_nll": retain_nll,
        }
