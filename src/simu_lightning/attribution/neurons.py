"""From attribution scores to critical neurons: per layer, neuron k is critical when
Att_k >= t * max_k Att (t in (0, 1]; ">=" rather than ">" only so that t = 1 keeps each layer's top
neuron instead of none). A layer whose largest score is not positive has no neuron that raises the
forget answers' likelihood, so none of its neurons is critical."""

from __future__ import annotations

import torch

from simu_lightning.errors import SimuError


def check_threshold(t: float) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise SimuError(f"attribution.t must be in (0, 1], got {t}")


def critical_neurons(scores: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """Boolean masks (one entry per neuron) of the critical neurons of every layer."""
    check_threshold(t)
    return {name: (s >= t * s.max()) & (s > 0) for name, s in scores.items()}
