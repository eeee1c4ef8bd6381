"""`attribution`: how SIMU stage 1 finds the critical neurons, checked where it is built (conf/attribution/
names this class as its `_target_`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from simu_lightning.attribution.integrated_gradients import MODES, QUADRATURES
from simu_lightning.attribution.rules import ATTRIBUTION, RULES, selection_rule
from simu_lightning.attribution.threshold import AUTO_RULES
from simu_lightning.utils.errors import SimuError


@dataclass(frozen=True)
class AttributionSettings:
    """Neuron k of a layer is critical when Att_k >= t * max Att (t in (0, 1]); m integrated-gradient
    steps (quadrature nodes) by `quadrature`, layers scaled by `mode`; `selection` picks what the mask
    keeps (rules/), in the attribution's per-layer counts unless `match_counts` is false;
    `exclude_retain` drops the neurons critical for the retain set too."""

    t: float | str = 0.1  # or "auto": chosen per layer from the scores by `auto.rule` (threshold.py)
    m: int = 20
    quadrature: str = "riemann"
    mode: str = "layerwise"
    selection: str = "integrated_gradients"
    exclude_retain: bool = False
    # the controls' size (rules/): true, `activation` and `gradient` keep the attribution's per-layer
    # counts (integrated gradients at t), their own top-scoring units; false, they threshold their own
    # scores at t (sizes of their own). `random` always takes the attribution's counts, `planted` is P.
    match_counts: bool = True
    max_batch: int = 512  # sequences per forward pass (the m scaled copies of a sample count m times)
    auto: dict = field(default_factory=dict)  # {rule: mass | knee, mass: share}: how t=auto chooses
    # the critical heads' selection (method.trainable=attention_heads_and_down_proj), when it is not the
    # neurons': head_selection=random keeps the attributed neurons and draws the heads at random (the
    # control that asks whether the attributed heads matter)
    head_selection: str | None = None
    # the heads' own threshold (null: t). A layer has a few heads against hundreds of neurons, so the
    # neurons' t keeps nearly every head (at t=0.1 all 4 of the tiny model's, in every layer).
    head_t: float | str | None = None

    def __post_init__(self):
        for name in ("t", "head_t"):
            value = getattr(self, name)
            if value == "auto" or (name == "head_t" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise SimuError(f"attribution.{name} must be in (0, 1] or auto, got {value}")
        object.__setattr__(self, "auto", {"rule": "mass", "mass": 0.5, **dict(self.auto or {})})
        if unknown := set(self.auto) - {"rule", "mass"}:
            raise SimuError(f"attribution.auto: unknown setting(s) {', '.join(sorted(unknown))} (known: rule, mass)")
        if self.auto["rule"] not in AUTO_RULES:
            raise SimuError(f"attribution.auto.rule must be one of {', '.join(AUTO_RULES)}, got {self.auto['rule']!r}")
        share = self.auto["mass"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise SimuError(f"attribution.auto.mass must be in (0, 1], got {share!r}")
        for name in ("m", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SimuError(f"attribution.{name} must be an integer >= 1, got {value!r}")
        for name, known in (("quadrature", QUADRATURES), ("mode", MODES)):
            if getattr(self, name) not in known:
                raise SimuError(f"attribution.{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        selection_rule(self.selection)
        if (
            self.head_selection is not None
            and not selection_rule(self.head_selection, "attribution.head_selection").selects_heads
        ):
            heads = ", ".join(name for name, rule in RULES.items() if rule.selects_heads)
            raise SimuError(
                f"attribution.head_selection must be null or one of {heads} (or a rule's import path), "
                f"got {self.head_selection!r}"
            )
        for name in ("exclude_retain", "match_counts"):
            if not isinstance(getattr(self, name), bool):
                raise SimuError(f"attribution.{name} must be true or false, got {getattr(self, name)!r}")

    def t_of(self, unit: str) -> float | str:
        """The threshold of `unit` (neurons or heads)."""
        return self.t if unit == "neurons" or self.head_t is None else self.head_t

    def selection_of(self, unit: str) -> str:
        """What selects the critical `unit`s (neurons or heads)."""
        return self.head_selection or self.selection if unit == "heads" else self.selection

    def rule_of(self, unit: str):
        """The selection rule (rules/) of the critical `unit`s."""
        return self.rule_named(self.selection_of(unit))

    def rule_named(self, name: str):
        """The rule `name`, with these integrated-gradient settings."""
        return selection_rule(name)(self.m, self.quadrature, self.mode)

    def counted(self, unit: str) -> bool:
        """Whether the `unit`s' selection ranks by a score of its own and keeps the attribution's per-layer
        counts (match_counts: activation, gradient), rather than thresholding its score at t."""
        return self.match_counts and self.rule_of(unit).scores() not in (None, ATTRIBUTION)
