"""UNDIAL (Dong et al. 2025, arXiv 2402.10052): self-distillation towards the frozen target's distribution
with the logit of the token to forget lowered by beta: at every forget answer position t,
q_t = softmax(z_ref_t - beta * onehot(y_t)), loss = mean_t CE(p_t, q_t) + retain_weight * L_retain.

open-unlearning's compute_undial_loss averages the cross-entropy over every position of the batch, the
prompt's and the padding's too (where its one-hot indexes the label -100); ours averages over the answer
tokens alone, the ones the method is defined on."""

from __future__ import annotations

from simu_lightning.likelihood import checked_reduction

import torch
import torch.nn.functional as F


class UNDIAL:
    needs_frozen_target = True

    def __init__(self, beta: float = 10.0, retain_weight: float = 0.0, reduction: str = "example"):
        self.reduction = checked_reduction(reduction)
        self.beta, self.retain_weight = beta, retain_weight

    def __call__(self, forward):
        logits, teacher = forward.logits("forget")[:, :-1], forward.logits("forget", frozen=True)[:, :-1]
        labels = forward.labels("forget")[:, 1:]
        scored = labels != -100
        # beta off the answer token's logit, in place of a vocabulary-sized int64 one-hot (the same bits)
        lowered = teacher.float().scatter_add(
            -1, labels.clamp(min=0).unsqueeze(-1), torch.full((*labels.shape, 1), -self.beta, device=labels.device)
        )
        target = F.softmax(lowered, dim=-1)
        cross_entropy = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        undial = cross_entropy[scored].mean()
        if not self.retain_weight:  # (open-unlearning's default: distillation alone, no retain pass)
            return undial, {"undial": undial}
        retain_nll = forward.nll("retain").reduced(self.reduction)
        return undial + self.retain_weight * retain_nll, {"undial": undial, "retain_nll": retain_nll}
