"""A threshold chosen from each layer's scores (`attribution.t=auto`), for what the paper leaves open:
SIMU "is sensitive to the threshold t, with limited discussion of automatic tuning", and a fixed t marks
neurons in every layer, also in layers that hold nothing of the forget set (docs/results.md, planted
targets). `attribution.auto.rule`:

- `mass`: per layer, the fewest neurons that carry `auto.mass` (default 0.5) of the layer's positive
  attribution, the largest first (`auto.mass=1` keeps every positive neuron);
- `knee`: per layer, the knee of the sorted positive scores (Kneedle, Satopaa et al. 2011: with both axes
  scaled to [0, 1], the point farthest below the chord from the largest score to the smallest, where the
  flat tail begins), and every neuron above it (at least the largest). A layer has **no knee** when it has
  fewer than three positive scores, or when that largest distance D* below the chord is under
  sqrt(ln(100) / (2 n)) for its n positive scores: n scores drawn uniformly between the smallest and the
  largest, which have no knee, lie that far below the chord only once in a hundred layers (one-sided
  Dvoretzky-Kiefer-Wolfowitz bound; `knee_threshold`). A linear curve (D* = 0) and uniform draws have no
  knee, nor do equal scores. A layer without a knee falls back to the `mass` rule at `auto.mass`, is logged
  at INFO, and is named in the returned t's `no_knee`.

Each keeps the neurons whose score reaches the last one it keeps (so ties at that score are kept too, as
the fixed rule keeps them) and only positive scores; a layer with none keeps nothing. The layer's t as
the fixed rule would read it, that score over the layer's largest, is reported alongside. Both rules read
a layer's scores only relative to its own (largest, smallest, total), so multiplying them by a positive
constant keeps the same neurons.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

AUTO_RULES = ("mass", "knee")

# Kneedle's "no knee" level: the chance that a layer without a knee (uniform scores) is read as having one.
NO_KNEE_FALSE_ALARM = 0.01


class ChosenT(dict):
    """Each layer's t (None: nothing kept), a plain dict to every caller; `no_knee` names the layers where
    the knee rule found no knee and the mass rule chose instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.no_knee: list[str] = []


def _descending_positive(s: torch.Tensor) -> torch.Tensor:
    return s[s > 0].double().sort(descending=True).values


def mass_cut(s: torch.Tensor, share: float) -> float | None:
    """The smallest kept score: the fewest neurons holding `share` (in (0, 1]) of the positive attribution."""
    ordered = _descending_positive(s)
    if not len(ordered):
        return None
    if share >= 1:  # every positive neuron, also those too small to move the rounded running sum
        return float(ordered[-1])
    running = ordered.cumsum(0)
    # the total is the running sum's own last entry, not a separately rounded sum(): share * total then
    # rounds to at most that entry, so the last neuron always reaches it and some index always does
    reached = (running >= share * running[-1]).nonzero()
    return float(ordered[int(reached[0]) if len(reached) else -1])


def knee_threshold(n: int) -> float:
    """The largest distance below the chord that n positive scores without a knee reach only with chance
    NO_KNEE_FALSE_ALARM. For n uniform draws, sorted and scaled to [0, 1] on both axes, the distance of the
    curve below the chord is that of the empirical distribution below the true one, whose supremum exceeds
    d with probability at most exp(-2 n d^2) (Dvoretzky-Kiefer-Wolfowitz, Massart's constant); solved for
    d. Measured: 0.2% to 0.75% of 2,000 uniform layers exceed it for n = 8 ... 8192. Real layers lie far
    above it (the tiny model's: D* 0.76 to 0.86 against 0.07)."""
    return math.sqrt(math.log(1 / NO_KNEE_FALSE_ALARM) / (2 * n))


def _knee(ordered: torch.Tensor) -> tuple[int, float] | None:
    if len(ordered) < 3:
        return None
    if ordered[0] == ordered[-1]:
        return 0, 0.0
    x = torch.arange(len(ordered), dtype=torch.float64) / (len(ordered) - 1)
    y = (ordered - ordered[-1]) / (ordered[0] - ordered[-1])
    below = (1 - x) - y
    knee = int(below.argmax())  # the first of equal maxima
    return knee, float(below[knee])


def knee_distance(s: torch.Tensor) -> tuple[int, float] | None:
    """Kneedle's knee of the sorted positive scores (its index in them, largest first) and its distance
    below the chord, both axes scaled to [0, 1] (which makes both scale invariant); None with fewer than
    three positive scores."""
    return _knee(_descending_positive(s))


def knee_cut(s: torch.Tensor) -> float | None:
    """The smallest kept score: the last one above the knee of the sorted positive scores; None when the
    layer has no knee (fewer than three positive scores, or D* under knee_threshold) or no positive score."""
    ordered = _descending_positive(s)
    found = _knee(ordered)
    if found is None or found[1] < knee_threshold(len(ordered)):
        return None
    return float(ordered[max(found[0] - 1, 0)])


def auto_critical_neurons(
    scores: dict[str, torch.Tensor], rule: str, mass: float
) -> tuple[dict[str, torch.Tensor], ChosenT]:
    """Per layer, the critical neurons by `rule` and the t it amounts to (None: nothing kept); under `knee`
    a layer without a knee takes the `mass` rule at `mass` (logged; named in the t's `no_knee`)."""
    masks, chosen = {}, ChosenT()
    for name, s in scores.items():
        cut = mass_cut(s, mass) if rule == "mass" else knee_cut(s)
        if cut is None and rule == "knee" and bool((s > 0).any()):
            cut = mass_cut(s, mass)
            chosen.no_knee.append(name)
            found = knee_distance(s)
            n = int((s > 0).sum())
            log.info(
                "attribution auto.rule=knee: %s has no knee (%s): the mass rule at auto.mass=%g keeps %d of %d",
                name,
                "fewer than three positive scores"
                if found is None
                else "largest distance below the chord %.3g < %.3g for %d positive scores"
                % (found[1], knee_threshold(n), n),
                mass,
                int(((s.double() >= cut) & (s > 0)).sum()),
                s.numel(),
            )
        if cut is None:
            masks[name], chosen[name] = torch.zeros_like(s, dtype=torch.bool), None
            continue
        masks[name] = (s.double() >= cut) & (s > 0)
        chosen[name] = cut / float(s.max())
    return masks, chosen
