"""Differences at matched forgetting: one group (the compared arm) minus every other group, per forget level
and utility metric. Arms that share seeds share the data order, the batches and the Hessian draws, so they
are paired by seed (a paired Student-t interval over the seeds both hold, and how many seeds point each
way); arms that share fewer than two seeds get Welch's interval. With a margin, a TOST equivalence test
decides where a difference is called "level"."""

from __future__ import annotations

import math

from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.runs import Run, by_group, naming, setting_of
from simu_lightning.report.stats import ALPHA, Difference, difference
from simu_lightning.report.tables import UTILITY, label
from simu_lightning.unlearning.stopping import Condition
from simu_lightning.utils.errors import SimuError

# the method the report compares with the others unless told (--compare)
SUBJECT = "simu"


def unlearned_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The groups with a trajectory (mode=attribute runs have none: nothing to match)."""
    return {g: members for g, members in by_group(runs).items() if any(r.curve for r in members)}


def compared_group(runs: list[Run], choice: str | None = None) -> str | None:
    """The group compared with every other: `choice` (a group's label, or words that all appear in exactly
    one label, e.g. "simu robustness=on"), else the simu group (any method's where there is none) that
    differs from the other methods' groups in the fewest settings outside the methods' own: the arm the
    controls and baselines were made around. None with fewer than two groups to compare."""
    groups = unlearned_groups(runs)
    if choice:
        if choice in groups:
            return choice
        found = [g for g in groups if all(word in g.split() for word in choice.split())]
        if len(found) != 1:
            raise SimuError(
                f"--compare {choice!r} matches {len(found) or 'no'} group{'s' if len(found) != 1 else ''}: "
                + "give one of "
                + "; ".join(f"{g!r}" for g in found or groups)
            )
        return found[0]
    if len(groups) < 2:
        return None
    keys = [k for k in naming(runs)[0] if not k.startswith("method.")]
    first = {g: members[0] for g, members in groups.items()}
    candidates = [g for g in groups if first[g].method == SUBJECT] or list(groups)

    def distance(group: str) -> int:
        others = [h for h in groups if first[h].method != first[group].method]
        return sum(setting_of(first[group], k) != setting_of(first[h], k) for h in others for k in keys)

    return min(candidates, key=lambda g: (distance(g), -len(groups[g]), g))


def at_level(members: list[Run], condition: Condition, metrics: list[str]) -> dict[object, dict[str, float]]:
    """{seed: {metric: value}} where each run of a group first reaches the level (runs that never do: none)."""
    found = {run.seed: at_forget_level(run.curve, condition, metrics) for run in members}
    return {seed: values for seed, values in found.items() if values is not None}


def comparison_rows(
    runs: list[Run],
    forget_metric: str,
    op: str,
    levels: list[float],
    y: str,
    subject: str | None,
    margin: float | None = None,
) -> list[dict]:
    """One row of report.csv per (other group, level, utility metric): `subject` minus the other group."""
    groups = unlearned_groups(runs)
    if subject is None or subject not in groups:
        return []
    metrics = list(dict.fromkeys([y, *UTILITY]))
    rows = []
    for level in levels:
        name = f"{forget_metric}{op}{level:g}"
        reached = {g: at_level(m, Condition(forget_metric, op, level), metrics) for g, m in groups.items()}
        for other in groups:
            if other == subject:
                continue
            missing = [g for g in (subject, other) if not reached[g]]
            if missing:  # no run of one of them reaches the level: nothing to compare there
                verdict = {1: "no run of it reaches the level", 2: "neither reaches the level"}[len(missing)]
                if missing == [subject]:
                    verdict = f"no run of {subject} reaches the level"
                rows.append(row(subject, other, name, y, None, margin) | {"verdict": verdict})
                continue
            for metric in metrics:
                first = {s: v[metric] for s, v in reached[subject].items() if v.get(metric) is not None}
                second = {s: v[metric] for s, v in reached[other].items() if v.get(metric) is not None}
                if first and second:
                    rows.append(row(subject, other, name, metric, difference(first, second, margin), margin))
    return rows


def row(subject: str, other: str, level: str, metric: str, found: Difference | None, margin: float | None) -> dict:
    """A row of report.csv's `compared` table: `subject` minus `other` in `metric` at `level`."""
    if found is None:
        found = Difference("", 0, 0, 0, math.nan, math.nan, math.nan, math.nan, None, None, margin, None)
    return {
        "table": "compared",
        "group": subject,
        "level": level,
        "metric": metric,
        "n": found.n_first,
        "reached": found.n_first,
        "mean": found.mean,
        "ci_low": found.low,
        "ci_high": found.high,
        "versus": other,
        "n_versus": found.n_second,
        "pairing": found.described if found.pairing else "",
        "pairs": found.pairs,
        "ahead": "" if found.ahead is None else found.ahead,
        "behind": "" if found.behind is None else found.behind,
        "seeds": found.seeds,
        "p": found.p,
        "margin": "" if margin is None else margin,
        "tost_p": "" if found.tost_p is None else found.tost_p,
        "verdict": found.verdict,
    }


def signed(row: dict) -> str:
    if math.isnan(row["mean"]):
        return "–"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:+.3f}"
    return f"{row['mean']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def comparison_markdown(rows: list[dict], y: str, margin: float | None = None) -> list[str]:
    """The compared group minus each other group in `y`, one row per (group, level)."""
    mine = [r for r in rows if r["metric"] == y]
    if not mine:
        return []
    subject = mine[0]["group"]
    lines = [
        "",
        f"## Differences at matched forgetting: {subject} minus each group",
        "",
        f"| minus | level | {label(y)} difference [95% interval] | interval | seeds | verdict |",
        "|---" * 6 + "|",
    ]
    for other in dict.fromkeys(r["versus"] for r in mine):
        lines += [
            f"| {r['versus']} | {r['level']} | {signed(r)} | {r['pairing'] or '–'} | {r['seeds'] or '–'} | {r['verdict']} |"
            for r in mine
            if r["versus"] == other
        ]
    level = (
        f'"level" where a TOST equivalence test at the margin ±{margin:g} holds (two one-sided t tests on the '
        f"differences, alpha {ALPHA:g}); otherwise "
        if margin is not None
        else ""
    )
    lines += [
        "",
        f"Each difference is {subject} minus the other group in {label(y)}, where each run first reaches the "
        "level. Groups that share seeds share the data order, the batches and the Hessian draws, so their runs "
        "are paired by seed: the mean of the per-seed differences, a paired Student-t 95% interval, and how "
        "many seeds point each way; on unequal seed sets only the shared seeds are paired (the interval column "
        "says how many). Groups that share fewer than two seeds get Welch's interval on the difference of their "
        f"means. The verdict: {level}"
        '"no difference detected" where the interval holds 0, "ahead" or "behind" (where '
        f"{subject} stands) where it does not."
        + (
            " Without --margin nothing is called level: an interval that holds 0 does not show equality."
            if margin is None
            else ""
        )
        + " Every utility metric is in report.csv (table `compared`); --compare picks another group.",
    ]
    return lines
