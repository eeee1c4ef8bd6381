"""Compare finished runs: their headline metrics side by side, and how far apart their unlearned weights are.

    python perf/compare.py outputs/a outputs/b ...          # one markdown row per run
    python perf/compare.py outputs/single outputs/fsdp --weights

With --weights the first run is the reference: for every other run it prints the largest difference of any
metric in results.json, the largest absolute difference of any weight in unlearned_model/ and how many
weights differ by more than 1e-5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

SPLITS = ("forget", "retain", "world_facts")


def load_results(run: Path) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (not a finished run)")
    return json.loads(path.read_text())


def headline_row(run: Path, results: dict) -> str:
    cells = [results["method"], str(run)]
    for split in SPLITS:
        before, after = results["before"].get(split), results["after"].get(split)
        cells.append("-" if before is None else f"{before['exact_match']:.3f} → {after['exact_match']:.3f}")
    cells.append(f"{results['aggregate']['before']:.3f} → {results['aggregate']['after']:.3f}")
    memory = results.get("memory_mb_per_process", {})
    cells.append(f"{memory.get('parameters', 0) + memory.get('optimizer_state', 0):.2f}")
    cells.append(str(results.get("processes", 1)))
    return "| " + " | ".join(cells) + " |"


METRICS = ("before", "after", "aggregate", "scores")  # what a run measured (not its timings or memory)


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict, keyed by its path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in numbers(sub, f"{prefix}{key}/").items()}
    return {prefix.rstrip("/"): float(tree)} if isinstance(tree, (int, float)) else {}


def max_metric_difference(a: dict, b: dict) -> tuple[float, str]:
    na, nb = (numbers({k: r[k] for k in METRICS if k in r}) for r in (a, b))
    if na.keys() != nb.keys():
        raise SystemExit(f"error: the runs report different metrics: {sorted(na.keys() ^ nb.keys())[:5]}")
    key = max(na, key=lambda k: abs(na[k] - nb[k]))
    return abs(na[key] - nb[key]), key


def weights(run: Path) -> dict:
    files = sorted((run / "unlearned_model").glob("*.safetensors"))
    if not files:
        raise SystemExit(f"error: {run / 'unlearned_model'} holds no .safetensors files")
    return {name: t for f in files for name, t in load_file(f).items()}


def weight_difference(a: Path, b: Path, tolerance: float = 1e-5) -> tuple[float, str, int, int]:
    """The largest absolute difference (and where), and how many of all entries differ by more than tolerance."""
    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys():
        raise SystemExit(f"error: {a} and {b} hold different tensors: {sorted(wa.keys() ^ wb.keys())[:5]}")
    diffs = {name: (wa[name].float() - wb[name].float()).abs() for name in wa}
    name = max(diffs, key=lambda n: diffs[n].max().item())
    beyond = sum(int((d > tolerance).sum()) for d in diffs.values())
    return diffs[name].max().item(), name, beyond, sum(d.numel() for d in diffs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--weights", action="store_true", help="compare every run's weights with the first's")
    args = parser.parse_args()
    results = [load_results(run) for run in args.runs]
    print(
        "| method | run | forget EM | retain EM | world facts EM | aggregate | params + optimiser state MB/process | processes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run, r in zip(args.runs, results):
        print(headline_row(run, r))
    if args.weights:
        for run, r in zip(args.runs[1:], results[1:]):
            metric, metric_key = max_metric_difference(results[0], r)
            weight, weight_key, beyond, total = weight_difference(args.runs[0], run)
            print(
                f"{run} vs {args.runs[0]}: largest metric difference {metric:.3g} ({metric_key}), "
                f"largest weight difference {weight:.3g} ({weight_key}), "
                f"{beyond} of {total} weights ({beyond / total:.2%}) differ by more than 1e-5"
            )


if __name__ == "__main__":
    main()
