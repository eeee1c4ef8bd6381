"""Which neurons a run may update: SIMU's critical neurons, or a control that tells whether the
attribution matters.

- `integrated_gradients` (SIMU): thresholded integrated-gradient scores.
- `activation`, `gradient`: the same threshold t on mean |activation| or on |gradient x activation|
  over the forget set's answer tokens (one pass each).
- `random`: per layer, as many neurons as the integrated-gradient selection keeps, drawn uniformly at
  random (seeded): the same budget in the same layers, without the attribution's choice.

`exclude_retain` drops the neurons that are critical for the retain set as well (the same scores and t
on the retain answers): neurons the forget and retain answers share, which an update would take from both.
"""

from __future__ import annotations

import torch

from simu_lightning.errors import SimuError

SELECTIONS = ("integrated_gradients", "random", "activation", "gradient")


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise SimuError(f"attribution.selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def score_of(selection: str) -> str:
    """The score a selection thresholds (`random` copies the integrated-gradient selection's counts)."""
    return "integrated_gradients" if selection == "random" else selection


def random_like(neurons: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Per layer, as many neurons as `neurons` holds, at positions drawn uniformly without replacement."""
    generator = torch.Generator().manual_seed(seed)
    drawn = {}
    for name, mask in neurons.items():
        chosen = torch.zeros(mask.numel(), dtype=torch.bool)
        chosen[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
        drawn[name] = chosen.view_as(mask)
    return drawn


def exclude_shared(
    forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The forget set's critical neurons without those also critical for the retain set, and how many
    were dropped per layer."""
    if forget.keys() != retain.keys():
        raise ValueError("exclude_shared: the forget and retain selections cover different layers")
    kept = {name: forget[name] & ~retain[name] for name in forget}
    return kept, {name: int((forget[name] & retain[name]).sum()) for name in forget}
