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

    def metrics(self) -> set[str]:
        """The metrics the rule reads ("split.metric" or a score's name)."""
        return {condition.metric for condition in self.conditions}

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


_LEVELS = re.compile(r"^\s*([\w./]+)\s*(<=|>=)\s*([-+\d.eE,\s]+)$")


@dataclass(frozen=True)
class ForgetLevels:
    """Forget levels a trajectory is matched at, e.g. `forget.rougeL_recall<=0.4,0.3,0.2`: one metric, one
    direction, several values (the report's `--at`, and `evaluation.during.full_around`)."""

    metric: str
    op: str  # "<=" or ">="
    values: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, setting: str = "--at") -> "ForgetLevels":
        match = _LEVELS.match(str(text))
        try:
            values = tuple(float(v) for v in match[3].split(",") if v.strip()) if match else ()
        except ValueError:
            values = ()
        if not match or not values:
            raise SimuError(
                f"{setting}={text!r}: expected METRIC<=LEVELS or METRIC>=LEVELS, e.g. 'forget.exact_match<=0.5,0.2,0.1'"
            )
        return cls(match[1], match[2], values)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{','.join(f'{v:g}' for v in self.values)}"

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(Condition(self.metric, self.op, v) for v in self.values)

    def first_reached(self, earlier: list[dict], point: dict) -> tuple[Condition, ...]:
        """The levels `point` meets that no earlier point met: the crossings the report interpolates."""
        return tuple(c for c in self.conditions if c.holds(point) and not any(c.holds(p) for p in earlier))

    def all_reached(self, points: list[dict]) -> bool:
        return all(any(c.holds(p) for p in points) for c in self.conditions)
