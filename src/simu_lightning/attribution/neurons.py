"""From attribution scores to critical neurons: per layer, neuron k is critical when
Att_k >= t * max_k Att (t in (0, 1]; ">=" rather than ">" only so that t = 1 keeps each layer's top
neuron instead of none). A layer whose largest score is not positive has no neuron that raises the
forget answers' likelihood, so none of its neurons is critical."""

from __future__ import annotations

import torch


def critical_neurons(scores: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """Boolean masks (one entry per neuron) of the critical neurons of every layer (t is checked where
    the settings are built: settings.AttributionSettings)."""
    return {name: (s >= t * s.max()) & (s > 0) for name, s in scores.items()}
