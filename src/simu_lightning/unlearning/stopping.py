"""The stopping rule: unlearn until a condition on an evaluation holds, e.g.
`forget.exact_match<=0.1` (a split's metric), `forget_quality>=0.05` (a benchmark-level score) or
`aggregate>=0.9`. Several conditions joined by `and` must all hold. The first evaluation point that
meets the rule ends unlearning, and the model at that point is the "after" model."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from simu_lightning.utils.errors import SimuError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w/]*(?:\.[\w/]+)?)\s*(<=|>=|<|>)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$")

CONDITION_MET = "condition met"
BUDGET_EXHAUSTED = "budget exhausted"


def metric_value(point: dict, metric: str) -> float | None:
    """A metric at an evaluation point {"summary": {split: {metric: v}}, "scores": {...}}: "split.metric"
    for a split's metric, a bare name for a benchmark-level score."""
    split, _, name = metric.rpartition(".")
    return point["summary"].get(split, {}).get(name) if split else point["scores"].get(name)


@dataclass(frozen=True)
class Condition:
    metric: str  # "split.metric", or a score name ("forget_quality", "aggregate", ...)
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def read(self, point: dict) -> float | None:
        return metric_value(point, self.metric)

    def holds(self, point: dict) -> bool:
        value = self.read(point)
        return value is not None and not math.isnan(value) and OPERATORS[self.op](value, self.value)


@dataclass(frozen=True)
class StoppingRule:
    conditions: tuple[Condition, ...]

    @classmethod
    def parse(cls, text: str | None, setting: str = "unlearning.stop_when") -> "StoppingRule | None":
        if text is None or str(text).strip() in ("", "null", "None"):
            return None
        conditions = []
        for part in re.split(r"\s+and\s+|\s*&\s*", str(text).strip()):
            match = _CONDITION.match(part)
            if not match:
                raise SimuError(
                    f"{setting}={text!r}: {part!r} is not a condition like 'forget.exact_match<=0.1' "
                    f"or 'forget_quality>=0.05' (operators: {', '.join(OPERATORS)})"
                )
            conditions.append(Condition(match[1], match[2], float(match[3])))
        return cls(tuple(conditions))

    def __str__(self) -> str:
        return " and ".join(map(str, self.conditions))

    def check_names(self, point: dict, setting: str = "unlearning.stop_when") -> None:
        """Refuse a rule that names a metric the evaluation does not produce (checked on "before")."""
        for condition in self.conditions:
            if condition.read(point) is None:
                split, _, metric = condition.metric.rpartition(".")
                known = sorted(point["summary"].get(split, {})) if split else sorted(point["scores"])
                where = f"split {split!r}" if split else "the scores"
                raise SimuError(
                    f"{setting}: {where} has no {metric!r} (it has: {', '.join(known) or 'nothing'}"
                    f"{'; splits: ' + ', '.join(point['summary']) if split else ''})"
                )

    def holds(self, point: dict) -> bool:
        return all(c.holds(point) for c in self.conditions)
