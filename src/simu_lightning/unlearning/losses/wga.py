"""Weighted gradient ascent (WGA, Wang et al. 2025, arXiv 2502.19301): gradient ascent in which each forget
answer token's NLL is weighted by its probability to the power beta, held constant (tokens the model no
longer predicts stop pushing): loss = -mean_t[p_t^beta * nll_t] + retain_weight * L_retain, the mean over
every answer token of the batch (as open-unlearning's compute_wga_loss)."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction


class WGA:
    needs_frozen_target = False

    def __init__(self, beta: float = 1.0, retain_weight: float = 1.0, reduction: str = "example"):
        self.reduction = checked_reduction(reduction)
        self.beta, self.retain_weight = beta, retain_weight

    def __call__(self, forward):
        logp, scored = forward.token_log_probs("forget")
        weights = logp.detach().exp() ** self.beta
        wga = -(weights * -logp)[scored].mean()
        retain_nll = forward.nll("retain").reduced(self.reduction)
        return wga + self.retain_weight * retain_nll, {"wga": wga, "retain_nll": retain_nll}
