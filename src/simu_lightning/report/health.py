"""Per run, what the optimiser did and what it trained: Sophia's median win rate against the range its
authors keep it in (0.1-0.5), and the trained-parameter counts (results.json `trained_parameters`) that show
whether two arms, a control and what it controls, trained as many weights."""

from __future__ import annotations

import math

from simu_lightning.report.runs import Run, by_group, common_folder

# SophiaG's authors keep the win rate within this range: near 0 Sophia is sign momentum and the Hessian
# estimate does nothing, near 1 every step is damped by the curvature
WIN_RATE = (0.1, 0.5)
RANGE = f"{WIN_RATE[0]:g}-{WIN_RATE[1]:g}"
# results.json trained_parameters: how many weights the optimiser updated, in all and by kind
TRAINED = ("total", "attention", "down_proj")


def median_win_rate(run: Run) -> float | None:
    value = (run.results.get("sophia") or {}).get("median_win_rate")
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def outside(rate: float) -> bool:
    return rate < WIN_RATE[0] or rate > WIN_RATE[1]


def sophia_runs(runs: list[Run]) -> list[tuple[Run, float]]:
    """The runs with a Sophia win rate, by group and seed, with their median win rate."""
    return [
        (r, rate) for members in by_group(runs).values() for r in members if (rate := median_win_rate(r)) is not None
    ]


def win_rate_line(runs: list[Run]) -> str | None:
    """ "9 of 15 Sophia runs have a median win rate outside 0.1-0.5", or None when none do."""
    found = sophia_runs(runs)
    flagged = [r for r, rate in found if outside(rate)]
    if not flagged:
        return None
    return f"{len(flagged)} of {len(found)} Sophia runs have a median win rate outside {RANGE}"


def win_rate_rows(runs: list[Run]) -> list[dict]:
    """One row of report.csv per Sophia run: its median win rate, `flag`ged when outside the range."""
    found = sophia_runs(runs)
    if not found:
        return []
    common = common_folder(runs)
    return [
        {
            "table": "runs",
            "group": run.group,
            "level": str(run.seed),
            "metric": "sophia.median_win_rate",
            "n": 1,
            "reached": 1,
            "mean": rate,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "run": str(run.path.relative_to(common)),
            "flag": f"outside {RANGE}" if outside(rate) else "",
        }
        for run, rate in found
    ]


def win_rate_markdown(rows: list[dict], line: str | None) -> list[str]:
    """Every Sophia run's median win rate, those outside the range marked."""
    if not rows:
        return []
    lines = [
        "",
        "## Sophia's median win rate per run",
        "",
        (line + "." if line else f"Every Sophia run's median win rate is within {RANGE}.")
        + f" SophiaG's authors keep it within {RANGE}: near 0 Sophia is sign momentum and the Hessian estimate "
        "does nothing, near 1 every step is damped by the curvature.",
        "",
        f"| group | seed | run | median win rate | outside {RANGE} |",
        "|---" * 5 + "|",
    ]
    lines += [
        f"| {r['group']} | {r['level']} | {r['run']} | {r['mean']:.3f} | {'**outside**' if r['flag'] else ''} |"
        for r in rows
    ]
    return lines


def trained_parameters(run: Run) -> dict[str, float]:
    """results.json trained_parameters as after-metrics (`trained_parameters.total`, ...), with the
    attention share of the total; {} for a run without them."""
    found = run.results.get("trained_parameters") or {}
    values = {f"trained_parameters.{k}": float(found[k]) for k in TRAINED if isinstance(found.get(k), (int, float))}
    if found.get("total") and isinstance(found.get("attention"), (int, float)):
        values["trained_parameters.attention_share"] = found["attention"] / found["total"]
    return values


def spread(values: list[float], digits: int | None = None) -> str:
    """The mean, and the least and largest where the runs differ."""
    shown = (lambda v: f"{v:,.0f}") if digits is None else (lambda v: f"{v:.{digits}f}")
    mean = sum(values) / len(values)
    if min(values) == max(values):
        return shown(mean)
    return f"{shown(mean)} ({shown(min(values))}-{shown(max(values))})"


def trained_markdown(runs: list[Run]) -> list[str]:
    """Each group's trained-parameter count and attention share: a control should train as many weights
    as what it controls (equal within a group up to the random draw)."""
    table = []
    for group, members in by_group(runs).items():
        per_run = [v for v in map(trained_parameters, members) if v]
        if not per_run:
            continue
        cells = []
        for metric in (*(f"trained_parameters.{k}" for k in TRAINED), "trained_parameters.attention_share"):
            values = [v[metric] for v in per_run if metric in v]
            cells.append(spread(values, 3 if metric.endswith("share") else None) if values else "–")
        table.append(f"| {group} | {len(per_run)} | " + " | ".join(cells) + " |")
    if not table:
        return []
    return [
        "",
        "## Trained parameters",
        "",
        "| group | runs | trained parameters | attention | down_proj | attention share |",
        "|---" * 6 + "|",
        *table,
        "",
        "Mean over the group's runs (least-largest where they differ: a random draw of neurons); the attention "
        "share is the attention projections' part of the total. An arm and its control should train as many.",
    ]
