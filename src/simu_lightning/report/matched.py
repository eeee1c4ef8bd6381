"""Utility at matched forgetting: where a run's trajectory first reaches a forget level, interpolated
linearly between the two evaluation points around the crossing."""

from __future__ import annotations

from simu_lightning.unlearning.stopping import Condition, metric_value as value_at


def at_forget_level(curve: list[dict], forget: Condition, metrics: list[str]) -> dict[str, float] | None:
    """{metric: value} where `forget` first holds on the trajectory (and "step", interpolated too), or
    None when it never does. Between the last point that misses the level and the first that meets it,
    every metric is interpolated at the fraction of the way the forget metric travels to the level."""
    previous = None
    for point in curve:
        level_value = value_at(point, forget.metric)
        if level_value is None:
            continue
        if forget.holds(point):
            if previous is None:
                fraction = 1.0
            else:
                start = value_at(previous, forget.metric)
                fraction = 1.0 if start == level_value else (start - forget.value) / (start - level_value)
            here = {"step": float(point["step"])}
            for metric in metrics:
                here[metric] = value_at(point, metric)
            if previous is not None:
                here["step"] = previous["step"] + fraction * (point["step"] - previous["step"])
                for metric in metrics:
                    before, after = value_at(previous, metric), here[metric]
                    if before is not None and after is not None:
                        here[metric] = before + fraction * (after - before)
            return here
        previous = point
    return None
