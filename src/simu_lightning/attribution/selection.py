"""Which neurons (and, with method.trainable=attention_heads_and_down_proj, which attention heads) a run may
update: SIMU's critical neurons, or a control that tells whether the attribution matters. Heads follow the
same rules over each layer's head scores (`planted` has no heads: refused).

- `integrated_gradients` (SIMU): thresholded integrated-gradient scores.
- `activation`, `gradient`: the same threshold t on mean |activation| or on |gradient x activation|
  over the forget set's answer tokens (one pass each).
- `random`: per layer, as many neurons as the integrated-gradient selection keeps, drawn uniformly at
  random (seeded): the same budget in the same layers, without the attribution's choice.
- `planted`: on a planted target, the planted neurons themselves (the oracle mask; no attribution).

`exclude_retain` drops the neurons that are critical for the retain set as well (the same scores and t
on the retain answers): neurons the forget and retain answers share, which an update would take from both.
"""

from __future__ import annotations

import torch


SELECTIONS = ("integrated_gradients", "random", "activation", "gradient", "planted")
PLANTED_HEADS = (
    "attribution.selection=planted plants no heads: with method.trainable=attention_heads_and_down_proj choose "
    "another attribution.selection"
)


def score_of(selection: str) -> str | None:
    """The score a selection thresholds (`random` copies the integrated-gradient selection's counts;
    `planted` needs none)."""
    return {"random": "integrated_gradients", "planted": None}.get(selection, selection)


def random_like(neurons: dict[str, torch.Tensor], seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer, as many neurons as `neurons` holds, at positions drawn uniformly without replacement;
    and the random ranking they were drawn from as scores (the first drawn scores highest), so that a
    ranking figure of the random selection ranks by the same draw."""
    generator = torch.Generator().manual_seed(seed)
    drawn, ranks = {}, {}
    for name, mask in neurons.items():
        order = torch.randperm(mask.numel(), generator=generator)
        chosen = torch.zeros(mask.numel(), dtype=torch.bool)
        chosen[order[: int(mask.sum())]] = True
        rank = torch.empty(mask.numel())
        rank[order] = torch.arange(mask.numel(), 0, -1, dtype=torch.float32)
        drawn[name], ranks[name] = chosen.view_as(mask), rank.view_as(mask)
    return drawn, ranks


def exclude_shared(
    forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The forget set's critical neurons without those also critical for the retain set, and how many
    were dropped per layer."""
    if forget.keys() != retain.keys():
        raise ValueError("exclude_shared: the forget and retain selections cover different layers")
    kept = {name: forget[name] & ~retain[name] for name in forget}
    return kept, {name: int((forget[name] & retain[name]).sum()) for name in forget}
