"""python -m simu_lightning.report RUN_OR_SWEEP_DIR... [--out DIR] [--at METRIC<=LEVELS] [--y METRIC] [--margin M]
[--compare GROUP] [--exclude-tuning]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simu_lightning.unlearning.stopping import ForgetLevels
from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.files import atomic
from simu_lightning.report.compare import compared_group, comparison_markdown, comparison_rows
from simu_lightning.report.figure import pareto
from simu_lightning.report.health import trained_markdown, win_rate_line, win_rate_markdown, win_rate_rows
from simu_lightning.report.continual import requests_figure, requests_markdown, requests_rows
from simu_lightning.report.runs import (
    TUNED,
    archive,
    label_runs,
    load_runs,
    mixed_commits,
    seeds_text,
    tuning_only,
    tuning_runs,
)
from simu_lightning.report.tables import (
    localisation_rows,
    markdown,
    matched_rows,
    robustness_rows,
    summary_rows,
    write_csv,
)


def tuning_notes(found: list, runs: list, tuning: set, excluded: bool) -> list[str]:
    """What became of the tuning runs: those left out, or the groups made of nothing else."""
    if excluded:
        left = [r for r in found if r.path in tuning]
        return (
            [f"Left out {len(left)} tuning run(s), whose seed tuned their settings ({TUNED}): {seeds_text(left)}."]
            if left
            else []
        )
    return [
        f"Group {g} holds only tuning runs ({seeds}, in {TUNED}): its figures are not held out."
        for g, seeds in tuning_only(runs, tuning).items()
    ]


DEFAULT_AT = "forget.exact_match<=0.5,0.2,0.1"


def runs_levels(runs) -> str:
    """The levels the runs evaluated in full around (results.json points.levels), when they all agree."""
    levels = {(run.results.get("points") or {}).get("levels") for run in runs}
    return levels.pop() if len(levels) == 1 and None not in levels else DEFAULT_AT


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simu_lightning.report", description=__doc__)
    parser.add_argument("folders", nargs="+", help="run directories or sweep folders (multirun/<date>/<time>)")
    parser.add_argument("--out", help="where to write report.md, report.csv, pareto.png (default: the first folder)")
    parser.add_argument(
        "--at",
        default=None,
        help="the forget metric and levels to match runs at (default: the runs' own, results.json "
        f"points.levels, when they all have the same; else {DEFAULT_AT})",
    )
    parser.add_argument(
        "--y", default="retain.exact_match", help="the retain metric of the figure (default: %(default)s)"
    )
    parser.add_argument(
        "--archive",
        help="also copy each run's small files (what the report reads, and the manifest) here, one folder per "
        "run: a report rebuilt from it gives the same tables",
    )
    parser.add_argument(
        "--margin",
        type=float,
        help="the equivalence margin of the differences between groups: a difference is called level only where "
        "a TOST at +-M holds (two one-sided t tests, alpha 0.05); without it nothing is called level",
    )
    parser.add_argument(
        "--compare",
        help="the group compared with every other (GROUP minus each): its label, or words that all appear in one "
        "label only (default: the simu group that differs least from the other methods' groups)",
    )
    parser.add_argument(
        "--exclude-tuning",
        action="store_true",
        help=f"leave out the tuning runs (a run whose seed is in its settings' {TUNED}) instead of refusing a group "
        "that pools them with the runs that report their settings",
    )
    return parser


def reported_runs(args) -> tuple[list, list[str], ForgetLevels]:
    """The runs the report compares (tuning runs labelled or left out), the notes on them, and the forget
    levels they are matched at; warnings (tuning runs, mixed commits) on stderr."""
    if args.margin is not None and not args.margin > 0:
        raise SimuError(f"--margin must be a positive number, got {args.margin}")
    found = load_runs(args.folders)
    at = ForgetLevels.parse(args.at or runs_levels(found))
    tuning = tuning_runs(found)
    runs = label_runs(found, tuning, args.exclude_tuning)
    notes = tuning_notes(found, runs, tuning, args.exclude_tuning)
    for note in notes:
        print(f"warning: {note}" if not args.exclude_tuning else note, file=sys.stderr)
    for group, commits in mixed_commits(runs).items():
        print(f"warning: group {group!r} mixes git commits {', '.join(commits)} (manifest.json)", file=sys.stderr)
    return runs, notes, at


def write_report(runs: list, notes: list[str], at: ForgetLevels, args, out: Path) -> list[str]:
    """report.csv, report.md and the figures in `out`: the names of the files written."""
    metric, op, levels = at.metric, at.op, list(at.values)
    summary, matched = summary_rows(runs), matched_rows(runs, metric, op, levels)
    subject = compared_group(runs, args.compare)
    compared = comparison_rows(runs, metric, op, levels, args.y, subject, args.margin)
    robustness, localisation = robustness_rows(runs), localisation_rows(runs)
    requests = requests_rows(runs, metric, args.y)
    win_rates, win_rate_warning = win_rate_rows(runs), win_rate_line(runs)
    if win_rate_warning:
        print(f"warning: {win_rate_warning} (report.md lists them)", file=sys.stderr)
    write_csv(out / "report.csv", summary + matched + compared + robustness + localisation + requests + win_rates)
    written = ["report.md", "report.csv"]
    if any("after" in run.results for run in runs):  # runs of mode=attribute have no curve
        pareto(runs, metric, args.y, levels, out / "pareto.png")
        written.append("pareto.png")
    if requests:
        requests_figure(requests, out / "requests.png")
        written.append("requests.png")
    with atomic(out / "report.md") as tmp:
        more = comparison_markdown(compared, args.y, args.margin) + win_rate_markdown(win_rates, win_rate_warning)
        more += trained_markdown(runs)
        tmp.write_text(
            markdown(summary, matched, runs, robustness, localisation, requests_markdown(requests), more, notes)
        )
    return written


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    try:
        runs, notes, at = reported_runs(args)
        out = Path(args.out or args.folders[0])
        out.mkdir(parents=True, exist_ok=True)
        written = write_report(runs, notes, at, args, out)
        if args.archive:
            archive(runs, Path(args.archive))
    except SimuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(runs)} runs -> " + ", ".join(str(out / name) for name in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
