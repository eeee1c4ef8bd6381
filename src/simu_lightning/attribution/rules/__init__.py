"""Selection rules, one per file, behind one registry: which neurons (and, with
method.trainable=attention_heads_and_down_proj, which attention heads) a run may update. SIMU's critical
neurons, or a control that tells whether the attribution matters; heads follow the same rules over each
layer's head scores. `attribution.selection` names a built-in rule (RULES) or a SelectionRule subclass by its
import path (docs/extending.md, "A selection rule").

- `integrated_gradients` (SIMU): thresholded integrated-gradient scores.
- `activation`, `gradient`: by default (`match_counts=true`) each layer keeps as many neurons as the
  attribution keeps there (t or t=auto on the integrated-gradient scores, computed and cached for it), its
  own highest-scoring ones: the same budget in the same layers, chosen by another score. With
  `match_counts=false` the rule thresholds its own scores at t, and keeps however many that is.
- `random`: the attribution's per-layer counts at random positions (seeded; always matched).
- `planted`: on a planted target, the planted neurons themselves (the oracle mask; no heads).
"""

from __future__ import annotations

import importlib

from simu_lightning.attribution.rules.activation import Activation
from simu_lightning.attribution.rules.base import SelectionRule
from simu_lightning.attribution.rules.gradient import Gradient
from simu_lightning.attribution.rules.integrated_gradients import IntegratedGradients
from simu_lightning.attribution.rules.planted import Planted
from simu_lightning.attribution.rules.random import Random
from simu_lightning.utils.errors import SimuError

RULES = {rule.name: rule for rule in (IntegratedGradients, Random, Activation, Gradient, Planted)}
ATTRIBUTION = IntegratedGradients.name  # the score SIMU selects by, whose per-layer counts the controls keep


def selection_rule(name: str, setting: str = "attribution.selection") -> type[SelectionRule]:
    """The rule `name` names: a built-in one, or the SelectionRule at an import path."""
    if name in RULES:
        return RULES[name]
    if not isinstance(name, str) or "." not in name:
        raise SimuError(f"{setting} must be one of {', '.join(RULES)} or a rule's import path, got {name!r}")
    module, _, attr = name.rpartition(".")
    try:
        rule = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise SimuError(f"{setting}={name}: cannot import it ({error})") from None
    if not (isinstance(rule, type) and issubclass(rule, SelectionRule)):
        raise SimuError(f"{setting}={name} is not a SelectionRule (attribution/rules/base.py)")
    return rule


def selects_no_heads(name: str) -> str:
    """The error for a head selection by a rule that selects no heads."""
    return (
        f"attribution.selection={name} selects no heads: with method.trainable=attention_heads_and_down_proj "
        "choose another attribution.selection"
    )


__all__ = ["ATTRIBUTION", "RULES", "SelectionRule", "selection_rule"]
