"""python -m simu_lightning.report RUN_OR_SWEEP_DIR... [--out DIR] [--at METRIC<=LEVELS] [--y METRIC]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simu_lightning.unlearning.stopping import ForgetLevels
from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.files import atomic
from simu_lightning.report.figure import pareto
from simu_lightning.report.requests import requests_figure, requests_markdown, requests_rows
from simu_lightning.report.runs import archive, find_runs, mixed_commits
from simu_lightning.report.tables import (
    localisation_rows,
    markdown,
    matched_rows,
    robustness_rows,
    summary_rows,
    write_csv,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simu_lightning.report", description=__doc__)
    parser.add_argument("folders", nargs="+", help="run directories or sweep folders (multirun/<date>/<time>)")
    parser.add_argument("--out", help="where to write report.md, report.csv, pareto.png (default: the first folder)")
    parser.add_argument(
        "--at",
        default="forget.exact_match<=0.5,0.2,0.1",
        help="the forget metric and levels to match runs at (default: %(default)s)",
    )
    parser.add_argument(
        "--y", default="retain.exact_match", help="the retain metric of the figure (default: %(default)s)"
    )
    parser.add_argument(
        "--archive",
        help="also copy each run's small files (what the report reads, and the manifest) here, one folder per "
        "run: a report rebuilt from it gives the same tables",
    )
    args = parser.parse_args(argv)
    try:
        at = ForgetLevels.parse(args.at)
        metric, op, levels = at.metric, at.op, list(at.values)
        runs = find_runs(args.folders)
        for group, commits in mixed_commits(runs).items():
            print(f"warning: group {group!r} mixes git commits {', '.join(commits)} (manifest.json)", file=sys.stderr)
        out = Path(args.out or args.folders[0])
        out.mkdir(parents=True, exist_ok=True)
        summary, matched = summary_rows(runs), matched_rows(runs, metric, op, levels)
        robustness, localisation = robustness_rows(runs), localisation_rows(runs)
        requests = requests_rows(runs, metric, args.y)
        write_csv(out / "report.csv", summary + matched + robustness + localisation + requests)
        unlearned = any("after" in run.results for run in runs)  # runs of mode=attribute have no curve
        if unlearned:
            pareto(runs, metric, args.y, levels, out / "pareto.png")
        if requests:
            requests_figure(requests, out / "requests.png")
        with atomic(out / "report.md") as tmp:
            tmp.write_text(markdown(summary, matched, runs, robustness, localisation, requests_markdown(requests)))
        if args.archive:
            archive(runs, Path(args.archive))
    except SimuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = (
        ["report.md", "report.csv"] + (["pareto.png"] if unlearned else []) + (["requests.png"] if requests else [])
    )
    print(f"{len(runs)} runs -> " + ", ".join(str(out / name) for name in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
