"""From attribution scores to critical neurons: per layer, neuron k is critical when
Att_k >= t * max_k Att (t in (0, 1]; ">=" rather than ">" only so that t = 1 keeps each layer's top
neuron instead of none). A layer whose largest score is not positive has no neuron that raises the
forget answers' likelihood, so none of its neurons is critical."""

from __future__ import annotations

import torch

from simu_lightning.attribution.threshold import auto_critical_neurons


def critical_neurons(scores: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """Boolean masks (one entry per neuron) of the critical neurons of every layer (t is checked where
    the settings are built: settings.AttributionSettings)."""
    return {name: (s >= t * s.max()) & (s > 0) for name, s in scores.items()}


def select_critical(
    scores: dict[str, torch.Tensor], t: float | str, auto: dict
) -> tuple[dict[str, torch.Tensor], dict[str, float | None]]:
    """The critical neurons at a fixed t, or at the t each layer's scores choose (t="auto", by
    `auto["rule"]`: threshold.py; its defaults are AttributionSettings'); and the t of every layer."""
    if t == "auto":
        return auto_critical_neurons(scores, auto["rule"], auto["mass"])
    return critical_neurons(scores, t), {name: t for name in scores}
