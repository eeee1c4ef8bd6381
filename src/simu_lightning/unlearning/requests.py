"""Continual unlearning requests: the forget split arrives as a sequence of forget sets, and each one is
unlearned from the model the previous one left (the SIMU paper's stated limit: "continual unlearning
requests require recomputing critical neuron masks for each new request").

What is here is plain bookkeeping, testable without a model: the requests' rows, and each request's
critical neurons (and, with method.trainable=attention_heads_and_down_proj, critical heads: the same rules)
from its own attribution and the earlier requests' (`masks`, `protect_earlier`), and how the requests'
masks overlap. pipeline/continual.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from simu_lightning.utils.errors import SimuError

MASK_RULES = ("per_request", "union", "reuse_first")
SPLIT_BY = ("auto", "author", "rows")


@dataclass(frozen=True)
class Requests:
    """`unlearning.requests` (conf/unlearning/requests/sequential.yaml).

    count: how many requests the forget split is cut into, in its own order.
    by: `author` (whole authors per request, by the split's `author` column), `rows` (consecutive rows,
        as even as they divide: TOFU's forget splits hold each author's 20 rows together), or `auto`
        (author where the column exists).
    masks: each request's critical neurons (and heads): `per_request` (its own attribution, on the model the
        earlier requests left), `union` (its own and every earlier request's), `reuse_first` (the first
        request's, attributed once: what the paper would do without recomputing).
    protect_earlier: leave the neurons (and heads) critical for earlier requests out of this request's mask,
        so a later request cannot undo (or redo) what an earlier one changed there.
    """

    count: int = 5
    by: str = "auto"
    masks: str = "per_request"
    protect_earlier: bool = False

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise SimuError(f"unlearning.requests.count must be an integer >= 1, got {self.count!r}")
        if self.by not in SPLIT_BY:
            raise SimuError(f"unlearning.requests.by={self.by!r} must be one of {', '.join(SPLIT_BY)}")
        if self.masks not in MASK_RULES:
            raise SimuError(f"unlearning.requests.masks={self.masks!r} must be one of {', '.join(MASK_RULES)}")
        if self.protect_earlier and self.masks != "per_request":
            raise SimuError(
                f"unlearning.requests.protect_earlier=true needs masks=per_request (masks={self.masks} "
                "gives a request the earlier requests' neurons, which protecting them would take away again)"
            )


def request_rows(forget: Dataset, requests: Requests, split: str = "forget") -> list[list[int]]:
    """The row indices of each request, in the split's order."""
    by = requests.by
    if by == "auto":
        by = "author" if "author" in forget.column_names else "rows"
    if by == "author":
        if "author" not in forget.column_names:
            raise SimuError(
                f"unlearning.requests.by=author: the {split} split has no author column "
                f"(it has {', '.join(forget.column_names)}); use by=rows"
            )
        authors = list(dict.fromkeys(forget["author"]))
        if requests.count > len(authors):
            raise SimuError(
                f"unlearning.requests.count={requests.count}: the {split} split holds {len(authors)} authors"
            )
        groups = np.array_split(np.arange(len(authors)), requests.count)
        of_author = {author: [] for author in authors}
        for i, author in enumerate(forget["author"]):
            of_author[author].append(i)
        return [[i for a in group for i in of_author[authors[a]]] for group in groups]
    if requests.count > len(forget):
        raise SimuError(f"unlearning.requests.count={requests.count}: the {split} split holds {len(forget)} rows")
    return [chunk.tolist() for chunk in np.array_split(np.arange(len(forget)), requests.count)]


def union(masks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per layer, the neurons (or heads) critical for any of `masks`."""
    combined = {name: mask.clone() for name, mask in masks[0].items()}
    for more in masks[1:]:
        for name, mask in more.items():
            combined[name] |= mask
    return combined


def request_masks(
    attributed: dict[str, torch.Tensor], earlier: list[dict[str, torch.Tensor]], requests: Requests
) -> dict[str, torch.Tensor]:
    """The critical neurons (or heads) request k unlearns with: its own `attributed` ones, combined with the
    earlier requests' attributed ones (`earlier`, in order) as `masks` and `protect_earlier` say. Under
    reuse_first the caller attributes only the first request and passes its masks as `attributed`."""
    if requests.masks == "union" and earlier:
        return union([*earlier, attributed])
    if requests.protect_earlier and earlier:
        protected = union(earlier)
        return {name: mask & ~protected[name] for name, mask in attributed.items()}
    return {name: mask.clone() for name, mask in attributed.items()}


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float | None:
    """|a and b| / |a or b| over every layer's neurons (None when both are empty)."""
    both = sum(int((a[name] & b[name]).sum()) for name in a)
    either = sum(int((a[name] | b[name]).sum()) for name in a)
    return both / either if either else None


def overlaps(attributed: list[dict[str, torch.Tensor]]) -> list[dict[str, float | None]]:
    """For each request, the Jaccard overlap of its attributed neurons (or heads) with each earlier request's."""
    return [
        {f"request_{j + 1}": jaccard(attributed[k], attributed[j]) for j in range(k)} for k in range(len(attributed))
    ]
