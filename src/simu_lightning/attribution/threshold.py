"""A threshold chosen from each layer's scores (`attribution.t=auto`), for what the paper leaves open:
SIMU "is sensitive to the threshold t, with limited discussion of automatic tuning", and a fixed t marks
neurons in every layer, also in layers that hold nothing of the forget set (docs/results.md, planted
targets). `attribution.auto.rule`:

- `mass`: per layer, the fewest neurons that carry `auto.mass` (default 0.5) of the layer's positive
  attribution, the largest first;
- `knee`: per layer, the knee of the sorted positive scores (Kneedle, Satopaa et al. 2011: with both axes
  scaled to [0, 1], the point farthest below the chord from the largest score to the smallest, where the
  flat tail begins), and every neuron above it (at least the largest; all of them when fewer than three
  scores are positive or they are all equal).

Each keeps the neurons whose score reaches the last one it keeps (so ties at that score are kept too, as
the fixed rule keeps them) and only positive scores; a layer with none keeps nothing. The layer's t as
the fixed rule would read it, that score over the layer's largest, is reported alongside.
"""

from __future__ import annotations

import torch

RULES = ("mass", "knee")


def _descending_positive(s: torch.Tensor) -> torch.Tensor:
    return s[s > 0].double().sort(descending=True).values


def mass_cut(s: torch.Tensor, share: float) -> float | None:
    """The smallest kept score: the fewest neurons holding `share` of the positive attribution."""
    ordered = _descending_positive(s)
    if not len(ordered):
        return None
    reached = ordered.cumsum(0) >= share * ordered.sum()
    return float(ordered[int(reached.nonzero()[0])])


def knee_cut(s: torch.Tensor) -> float | None:
    """The smallest kept score: the last one above the knee of the sorted positive scores."""
    ordered = _descending_positive(s)
    if len(ordered) < 3 or ordered[0] == ordered[-1]:
        return float(ordered[-1]) if len(ordered) else None
    x = torch.arange(len(ordered), dtype=torch.float64) / (len(ordered) - 1)
    y = (ordered - ordered[-1]) / (ordered[0] - ordered[-1])
    knee = int(((1 - x) - y).argmax())
    return float(ordered[max(knee - 1, 0)])


def auto_critical_neurons(
    scores: dict[str, torch.Tensor], rule: str, mass: float
) -> tuple[dict[str, torch.Tensor], dict[str, float | None]]:
    """Per layer, the critical neurons by `rule` and the t it amounts to (None: nothing kept)."""
    masks, chosen = {}, {}
    for name, s in scores.items():
        cut = mass_cut(s, mass) if rule == "mass" else knee_cut(s)
        if cut is None:
            masks[name], chosen[name] = torch.zeros_like(s, dtype=torch.bool), None
            continue
        masks[name] = (s.double() >= cut) & (s > 0)
        chosen[name] = cut / float(s.max())
    return masks, chosen
