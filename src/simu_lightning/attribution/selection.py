"""What the selection rules (rules/) and the attribution callback share: integrated gradients' per-layer
counts, the top units in given counts, a seeded random draw in given counts, and the retain exclusion.

`exclude_retain` drops the neurons that are critical for the retain set as well (the same scores and t
on the retain answers): neurons the forget and retain answers share, which an update would take from both.
Under matched counts the retain set's own-score selection keeps the attribution's retain counts, and the
forget selection then keeps the attribution's count left after its exclusion, skipping the retain set's.
"""

from __future__ import annotations

import hashlib

import torch


def request_seed(seed: int, request: int) -> int:
    """The seed of continual request `request`'s random draw (0-based): the run's seed for the first (so it
    draws what a run without requests draws), and for the others a seed derived from (seed, request), so
    that each request's draw is independent of the others' (one seed for all made each draw a prefix of the
    same permutation: nested masks)."""
    if request == 0:
        return seed
    digest = hashlib.sha256(f"random neurons: seed {seed}, request {request}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # (manual_seed takes any non-negative 63-bit integer)


def counts_of(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


def top_counts(
    scores: dict[str, torch.Tensor], counts: dict[str, int], excluded: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per layer, the `counts[name]` highest-scoring units (ties broken by the lower index, so exactly that
    many), skipping those `excluded` marks (all the others when fewer are left); and, per layer, how many
    excluded units ranked above the last one kept (the units the exclusion dropped)."""
    kept, dropped = {}, {}
    for name, s in scores.items():
        order = torch.sort(s.flatten(), descending=True, stable=True).indices
        skip = excluded[name].flatten()[order] if excluded is not None else torch.zeros(len(order), dtype=torch.bool)
        places = (~skip).nonzero().flatten()[: counts[name]]  # the kept units' places in the ranking
        chosen = torch.zeros(s.numel(), dtype=torch.bool)
        chosen[order[places]] = True
        kept[name] = chosen.view_as(s)
        if counts[name] > len(places):  # fewer left than the count: every excluded unit was in the way
            dropped[name] = int(skip.sum())
        else:
            dropped[name] = int(skip[: int(places[-1]) + 1].sum()) if len(places) else 0
    return kept, dropped


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
