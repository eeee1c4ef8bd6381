"""Each arm's lr from the tuning report: the most held-out retain ROUGE-L at forget ROUGE-L 0.3 (seed 10).

python docs/results/smollm2_v2/choose.py [tuning/report.csv] > docs/results/smollm2_v2/chosen.sh

An arm whose best lr lies on the edge of the lrs it tried is named on stderr: the optimum may lie beyond it.
"""

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

LEVEL, METRIC = "forget.rougeL_recall<=0.3", "retain_heldout.rougeL_recall"


def arm(group: str) -> str:
    """The study's arm a report group belongs to (reporting.sh's names)."""
    if "attribution.selection=random" in group:
        return "random"
    trainable = re.search(r"method.trainable=(\w+)", group).group(1)
    if trainable in ("attention", "down_proj"):
        return trainable
    return group.split()[0]  # simu, fo or so


def lr(group: str) -> float:
    return float(re.search(r"method.optimizer.lr=([\d.e-]+)", group).group(1))


def shown(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.3f}"


def main(report: Path) -> None:
    tried, scored = defaultdict(set), defaultdict(dict)
    with report.open() as f:
        for row in csv.DictReader(f):
            if row["table"] == "after":
                tried[arm(row["group"])].add(lr(row["group"]))
            if row["table"] == "matched" and row["level"] == LEVEL and row["metric"] == METRIC:
                scored[arm(row["group"])][lr(row["group"])] = float(row["mean"])
    print(f"# written by choose.py from {report.name}: {METRIC} at {LEVEL}, tuning seed 10")
    print("declare -A CHOSEN")
    for name in sorted(tried):
        if not scored[name]:
            print(f"{name}: no lr reaches {LEVEL}", file=sys.stderr)
            continue
        best = max(scored[name], key=scored[name].get)
        edge = best in (min(tried[name]), max(tried[name]))
        grid = ", ".join(f"{x:g}: {shown(scored[name].get(x))}" for x in sorted(tried[name]))
        print(f"CHOSEN[{name}]={best:g}  # {grid}{'  (on the edge of its grid)' if edge else ''}")
        if edge:
            print(f"{name}: best lr {best:g} lies on the edge of {sorted(tried[name])}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "tuning" / "report.csv")
