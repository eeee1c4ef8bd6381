"""What a selection rule is: the score that ranks each layer's units (MLP neurons, or attention heads), and
where the kept units lie. The attribution callback does the rest alike for every rule: it sums the rule's
per-sample scores over the forget set (cached), keeps the units at t (or t=auto) of each layer's largest,
or, under `match_counts`, as many of the rule's highest as integrated gradients keeps there, and applies
`exclude_retain`. A rule is named in `attribution.selection` by its `name` (the built-in ones, rules/) or
by its import path (docs/extending.md, "A selection rule")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class SelectionRule:
    """A rule with a score of its own implements `attributions`; one that ranks by another rule's scores
    names it in `scored_by` (random: integrated gradients'), and one that needs no scores sets it to None
    (planted: the planting's mask). The constructor takes the attribution's integrated-gradient settings,
    which only integrated gradients reads."""

    name: ClassVar[str]  # by default its import path (a built-in rule names itself shortly)
    scored_by: ClassVar[str | None] = ""  # "": the rule's own scores (`attributions`)
    selects_heads: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"

    def __init__(self, m: int = 20, quadrature: str = "riemann", mode: str = "layerwise"):
        self.m, self.quadrature, self.mode = m, quadrature, mode

    @classmethod
    def scores(cls) -> str | None:
        """The name of the rule whose scores rank the units (None: the rule reads none)."""
        return cls.name if cls.scored_by == "" else cls.scored_by

    @property
    def copies(self) -> int:
        """How many scaled copies of each sample one forward pass holds (integrated gradients: its nodes)."""
        return 1

    def groups(self, layers: int) -> list[list[int]]:
        """The layers scored together (by default, every layer in one pass)."""
        return [list(range(layers))]

    def passes(self, layers: int) -> int:
        """Forward+backward passes per sample batch: the score's cost."""
        return 1

    def key(self) -> tuple:
        """What besides the rule's name changes its scores (their cache key)."""
        return ()

    def attributions(
        self, model: nn.Module, projs: list[nn.Module], group: list[int], batch: dict, betas: list, prefix, layout: str
    ) -> list[torch.Tensor]:
        """One batch's per-sample scores of the units of each projection in `group` (betas[i]: projection
        i's input at the predicted position, one row per sample; `prefix` and `layout`: how
        integrated_gradients.py runs the model on the batch)."""
        raise NotImplementedError(f"selection rule {self.name!r} has no scores of its own")

    def place(
        self, kept: dict[str, torch.Tensor] | None, ranking: dict | None, seed: int, planted: dict | None = None
    ) -> tuple[dict, dict]:
        """Where the kept units lie, and what ranks them, given those the scores kept and the scores (None
        for a rule that reads none); `seed`: the run's draw, `planted`: a planted target's mask. By default,
        where the scores put them."""
        return kept, ranking
