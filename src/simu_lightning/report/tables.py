"""The report's tables: after-metrics per group (mean and 95% CI over seeds), and the utility at
matched forgetting; as Markdown for people and as CSV (long format) for tools."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from simu_lightning.report.health import trained_parameters
from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.runs import Run, by_group, mixed_commits, naming
from simu_lightning.report.stats import mean_ci
from simu_lightning.unlearning.stopping import Condition
from simu_lightning.utils.files import atomic

# utility metrics read at matched forgetting, where a benchmark has them
UTILITY = (
    "retain.exact_match",
    "retain.rougeL_recall",
    # the retain authors the loss never saw (benchmark.heldout_authors): the utility a comparison reports
    "retain_heldout.exact_match",
    "retain_heldout.rougeL_recall",
    "world_facts.exact_match",
    "world_facts.contains_answer",
    "real_authors.rougeL_recall",
    "real_authors.contains_answer",
    "model_utility",
)
# the after-metrics the Markdown table shows (report.csv has every one)
HEADLINE = (
    "forget.exact_match",
    "forget.rougeL_recall",
    "retain.exact_match",
    "retain.rougeL_recall",
    "retain_heldout.exact_match",
    "retain_heldout.rougeL_recall",
    "world_facts.exact_match",
    "model_utility",
    "forget_quality",
    "aggregate",
)


LABELS = {
    "forget.exact_match": "forget EM",
    "forget.rougeL_recall": "forget ROUGE-L",
    "retain.exact_match": "retain EM",
    "retain.rougeL_recall": "retain ROUGE-L",
    "retain_heldout.exact_match": "held-out retain EM",
    "retain_heldout.rougeL_recall": "held-out retain ROUGE-L",
    "world_facts.exact_match": "world facts EM",
    "world_facts.contains_answer": "world facts contains",
    "real_authors.rougeL_recall": "real authors ROUGE-L",
    "real_authors.contains_answer": "real authors contains",
    "model_utility": "model utility",
    "forget_quality": "forget quality",
    "stopped.step": "steps",
    "sophia.median_win_rate": "median win rate",
    "stopped.condition_met": "stopped on the rule",
    "step": "step",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def after_metrics(run: Run) -> dict[str, float]:
    if "after" not in run.results:  # mode=attribute: nothing was unlearned
        return {}
    values = {
        f"{split}.{metric}": v for split, by_metric in run.results["after"].items() for metric, v in by_metric.items()
    }
    values |= {name: v for name, v in run.results.get("scores", {}).get("after", {}).items()}
    values["aggregate"] = run.results["aggregate"]["after"]
    values |= {f"sophia.{k}": v for k, v in (run.results.get("sophia") or {}).items() if k == "median_win_rate"}
    values |= trained_parameters(run)
    harness = (run.results.get("lm_eval") or {}).get("after") or {}
    values |= {f"lm_eval.{task}.{metric}": v for task, by_metric in harness.items() for metric, v in by_metric.items()}
    stopped = run.results.get("stopped")
    if stopped:
        values["stopped.step"] = stopped["step"]
        values["stopped.condition_met"] = float(stopped["reason"] == "condition met")
    return {k: v for k, v in values.items() if isinstance(v, (int, float))}


def groups(runs: list[Run]) -> dict[str, list[Run]]:
    return by_group(runs)


def stat_row(table: str, group: str, level: str, metric: str, n: int, values: list[float], reached: int) -> dict:
    """One row of report.csv: the mean and 95% interval of `values` over the `reached` of `n` runs."""
    mean, low, high = mean_ci(values)
    return {
        "table": table,
        "group": group,
        "level": level,
        "metric": metric,
        "n": n,
        "reached": reached,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
    }


def summary_rows(runs: list[Run]) -> list[dict]:
    """One row per (group, metric): n, mean, CI."""
    rows = []
    for group, members in groups(runs).items():
        per_run = [after_metrics(r) for r in members]
        for metric in sorted({m for values in per_run for m in values}):
            values = [v.get(metric) for v in per_run if v.get(metric) is not None]
            rows.append(stat_row("after", group, "", metric, len(members), values, len(members)))
    return rows


def matched_rows(runs: list[Run], forget_metric: str, op: str, levels: list[float]) -> list[dict]:
    """One row per (group, level, utility metric): how many runs reached the level, mean and CI there."""
    rows = []
    for group, members in groups(runs).items():
        if not any(r.curve for r in members):  # mode=attribute: no trajectory, nothing to match
            continue
        for level in levels:
            condition = Condition(forget_metric, op, level)
            reached = [at_forget_level(r.curve, condition, [*UTILITY, forget_metric]) for r in members]
            reached = [r for r in reached if r is not None]
            for metric in ("step", *UTILITY):
                values = [r[metric] for r in reached if r.get(metric) is not None]
                if not values and metric != "step":
                    continue
                label = f"{forget_metric}{op}{level:g}"
                rows.append(stat_row("matched", group, label, metric, len(members), values, len(reached)))
    return rows


# the forget metrics the robustness table shows for every attack (report.csv has every split and metric)
ROBUSTNESS = ("exact_match", "rougeL_recall", "exact_memorization", "extraction_strength", "answer_prob")
ROBUSTNESS_LABELS = {
    "exact_match": "EM",
    "rougeL_recall": "ROUGE-L",
    "exact_memorization": "memorised",
    "extraction_strength": "extraction",
    "answer_prob": "P(answer)",
}


def attack_metrics(run: Run) -> dict[tuple[str, str], float]:
    """{(attack, "split.metric"): value} of a run's attack stage, with its unattacked "after" figures
    under the attack "after"."""
    values = {
        ("after", f"{split}.{metric}"): v
        for split, by_metric in run.results.get("after", {}).items()
        for metric, v in by_metric.items()
    }
    for attack, by_split in run.results.get("robustness", {}).items():
        values |= {
            (attack, f"{split}.{metric}"): v for split, by_metric in by_split.items() for metric, v in by_metric.items()
        }
    return {k: v for k, v in values.items() if isinstance(v, (int, float))}


def robustness_rows(runs: list[Run]) -> list[dict]:
    """One row per (group, attack, split.metric) over the runs that ran the attack stage: n, mean, CI."""
    rows = []
    for group, members in groups(runs).items():
        per_run = [attack_metrics(r) for r in members if r.results.get("robustness")]
        for attack, metric in dict.fromkeys(k for values in per_run for k in values):
            values = [v[(attack, metric)] for v in per_run if (attack, metric) in v]
            rows.append(stat_row("robustness", group, attack, metric, len(per_run), values, len(per_run)))
    return rows


def robustness_markdown(rows: list[dict], forget: str = "forget") -> list[str]:
    """Per group: the forget metrics after each attack, and the membership-inference AUCs."""
    index = {(r["group"], r["level"], r["metric"]): r for r in rows}
    lines = []
    for group in dict.fromkeys(r["group"] for r in rows):
        attacks = dict.fromkeys(r["level"] for r in rows if r["group"] == group)
        splits = [
            (attack, split)
            for attack in attacks
            for split in dict.fromkeys(
                r["metric"].split(".")[0] for r in rows if r["group"] == group and r["level"] == attack
            )
            if split.startswith(forget) and any((group, attack, f"{split}.{m}") in index for m in ROBUSTNESS)
        ]
        n = next(r["n"] for r in rows if r["group"] == group)
        lines += [
            "",
            f"## Robustness: {group} ({n} runs)",
            "",
            "| attack | split | " + " | ".join(ROBUSTNESS_LABELS[m] for m in ROBUSTNESS) + " |",
            "|---" * (len(ROBUSTNESS) + 2) + "|",
        ]
        lines += [
            f"| {attack} | {split} | "
            + " | ".join(cell(index.get((group, attack, f"{split}.{m}"))) for m in ROBUSTNESS)
            + " |"
            for attack, split in splits
        ]
        mia = [a for a in attacks if (group, a, "forget_vs_holdout.loss_auc") in index]
        if mia:
            names = [r["metric"] for r in rows if r["group"] == group and r["level"] == mia[0]]
            lines += [
                "",
                "| membership inference AUC (forget vs held out) | "
                + " | ".join(m.split(".")[1].removesuffix("_auc") for m in names)
                + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            lines += [f"| {a} | " + " | ".join(cell(index.get((group, a, m))) for m in names) + " |" for a in mia]
    return lines


LOCALISATION = ("precision", "recall", "jaccard", "precision_at_p", "auroc")
LOCALISATION_LABELS = {"precision_at_p": "P@|P|", "auroc": "AUROC", "jaccard": "Jaccard"}


def localisation_rows(runs: list[Run]) -> list[dict]:
    """One row per (group, layer or "overall", figure) over the runs on a planted target: n, mean, CI."""
    rows = []
    for group, members in groups(runs).items():
        found = [r.results["localisation"] for r in members if r.results.get("localisation")]
        if not found:
            continue
        for level in ["overall", *found[0]["layers"]]:
            for metric in LOCALISATION:
                values = [f["overall" if level == "overall" else "layers"] for f in found]
                values = [v.get(metric) if level == "overall" else v[level].get(metric) for v in values]
                values = [v for v in values if v is not None]
                rows.append(stat_row("localisation", group, level, metric, len(found), values, len(values)))
    return rows


def localisation_markdown(rows: list[dict]) -> list[str]:
    """The overall localisation figures of every group on a planted target (per layer: report.csv)."""
    if not rows:
        return []
    index = {(r["group"], r["level"], r["metric"]): r for r in rows}
    lines = [
        "",
        "## Localisation against the planted neurons (all layers pooled; per layer in report.csv)",
        "",
        "| group | runs | " + " | ".join(LOCALISATION_LABELS.get(m, m) for m in LOCALISATION) + " |",
        "|---" * (len(LOCALISATION) + 2) + "|",
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        n = index[(group, "overall", "precision")]["n"]
        lines.append(
            f"| {group} | {n} | " + " | ".join(cell(index.get((group, "overall", m))) for m in LOCALISATION) + " |"
        )
    return lines


COLUMNS = ["table", "group", "level", "metric", "n", "reached", "mean", "ci_low", "ci_high"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """report.csv: the columns every row has, then those of some tables (`compared`: versus, pairing,
    verdict...; `runs`: run, flag), empty elsewhere."""
    columns = list(dict.fromkeys([*COLUMNS, *(k for row in rows for k in row)]))
    with atomic(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def cell(row: dict | None) -> str:
    if row is None or math.isnan(row["mean"]):
        return "–"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def settings_lines(runs: list[Run], notes: list[str] | None = None) -> list[str]:
    """Which settings tell the groups apart (each group's name carries its values), the groups
    whose runs come from several commits, and any `notes` (tuning runs left out or reported)."""
    keys, _, shared = naming(runs)
    lines = [
        "Groups are runs with the same resolved configuration but for the seed, the paths and the logging; "
        + (f"they differ in: {', '.join(f'`{k}`' for k in keys)}." if keys else "there is one configuration.")
        + (
            f" A group whose name leaves a setting out has the value most groups share: "
            f"{', '.join(f'`{v}`' for v in shared.values())}."
            if shared
            else ""
        ),
        "",
    ]
    for group, commits in mixed_commits(runs).items():
        lines += [f"Warning: group {group} mixes git commits {', '.join(commits)}.", ""]
    for note in notes or []:
        lines += [note, ""]
    return lines


def markdown(
    summary: list[dict],
    matched: list[dict],
    runs: list[Run],
    robustness: list[dict] | None = None,
    localisation: list[dict] | None = None,
    sections: list[str] | None = None,
    unlearning: list[str] | None = None,
    notes: list[str] | None = None,
) -> str:
    """report.md; `unlearning`: more lines after the unlearning tables (the differences between groups, the
    win rates, the trained parameters); `sections`: more lines (the continual requests' tables) before the
    figure; `notes`: lines after the settings (tuning runs)."""
    index = {(r["table"], r["group"], r["level"], r["metric"]): r for r in summary + matched}
    group_names = list(groups(runs))
    seeds = {g: sorted({r.seed for r in members if r.seed is not None}, key=str) for g, members in groups(runs).items()}
    planted = any(isinstance(r.seed, tuple) for r in runs)
    lines = [
        "# Unlearning report",
        "",
        f"{len(runs)} runs; mean [95% confidence interval] over seeds (Student's t). Seeds per group"
        + (" (seed, benchmark.planted.seed)" if planted else "")
        + ": "
        + "; ".join(f"{g}: {', '.join(map(str, s)) or '?'}" for g, s in seeds.items())
        + ".",
        "",
        *settings_lines(runs, notes),
    ]
    shown = [
        m
        for m in (*HEADLINE, "stopped.step", "stopped.condition_met", "sophia.median_win_rate")
        if any(("after", g, "", m) in index for g in group_names)
    ]
    if shown:  # runs of mode=attribute unlearn nothing: no after-metrics, no trajectories to match
        lines += unlearning_markdown(index, group_names, shown, matched)
    lines += unlearning or []
    if robustness:
        lines += robustness_markdown(robustness)
        lines += [
            "",
            "Robustness: each attack runs on a copy of the run's unlearned model (README \"Is it really "
            'forgotten?"); `after` is that model unattacked, `relearn_forget` is evaluated on the forget rows '
            "it did not relearn on (`forget_unattacked`: the unlearned model on the same rows).",
        ]
    lines += localisation_markdown(localisation or [])
    lines += sections or []
    lines += ["", "![forget against retain](pareto.png)", ""] if shown else [""]
    return "\n".join(lines)


def unlearning_markdown(index: dict, group_names: list[str], shown: list[str], matched: list[dict]) -> list[str]:
    """The after-unlearning table and one table per matched-forgetting level."""
    lines = ["## After unlearning", ""]
    lines += ["| group | " + " | ".join(map(label, shown)) + " |", "|---" * (len(shown) + 1) + "|"]
    lines += [f"| {g} | " + " | ".join(cell(index.get(("after", g, "", m))) for m in shown) + " |" for g in group_names]
    levels = sorted({r["level"] for r in matched}, key=lambda lv: -float(lv.split("=")[-1].lstrip("<>")))
    for level in levels:
        metrics = [m for m in ("step", *UTILITY) if any(("matched", g, level, m) in index for g in group_names)]
        lines += [
            "",
            f"## At matched forgetting: first point where {level}",
            "",
            "| group | reached | " + " | ".join(map(label, metrics)) + " |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for g in group_names:
            first = index.get(("matched", g, level, "step"))
            reached = f"{first['reached']}/{first['n']}" if first else "0"
            lines.append(
                f"| {g} | {reached} | " + " | ".join(cell(index.get(("matched", g, level, m))) for m in metrics) + " |"
            )
    lines += [
        "",
        "Values at a matched level are interpolated linearly between the two evaluation points around "
        "the first crossing; runs that never reach a level are left out of its means (see `reached`).",
    ]
    return lines
