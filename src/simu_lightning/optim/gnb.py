"""The Gauss-Newton-Bartlett Hessian estimate's loss: cross-entropy against labels sampled from the
model's own softmax. Its squared gradient, scaled by the number of predicted tokens (Sophia's `bs`),
is an unbiased estimate of the Gauss-Newton diagonal of the mean loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simu_lightning.data.formatting import IGNORE_INDEX


def sample_labels(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws from softmax(logits) (... x vocab), one uniform in [0, 1) per position.
    Taking the uniforms as input lets the caller decide where the randomness comes from."""
    cdf = F.softmax(logits.float(), dim=-1).cumsum(-1)
    cdf[..., -1] = 1.0  # guard against round-off leaving the last bin short of 1
    return torch.searchsorted(cdf, uniforms.unsqueeze(-1).to(cdf.dtype)).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def sampled_label_loss(
    logits: torch.Tensor, labels: torch.Tensor, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE at the scored (answer) positions against labels sampled from softmax(logits), and how
    many positions were scored (a tensor: read on the host only once per step, by the caller). `labels`
    are aligned with the inputs (logits at t predict t + 1); `uniforms` holds one draw per predicting
    position (batch x (length - 1)). With nothing to score (answers truncated away) the loss is a zero
    that still reaches every parameter's graph, so that sharded backward passes stay collective."""
    scored = labels[:, 1:] != IGNORE_INDEX
    count = scored.sum()
    logits = logits[:, :-1][scored].float()
    with torch.no_grad():
        sampled = sample_labels(logits, uniforms[scored])
    # the sum over the count is the mean's arithmetic, without its NaN for an empty batch
    return F.cross_entropy(logits, sampled, reduction="sum") / count.clamp(min=1), count
