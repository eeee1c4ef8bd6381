"""Issue 45, planted target, seeds 1-9 (planted_more_seeds.sh): zeroth order (Gaussian and sphere) under SIMU's
mask and on every parameter, each paired by seed with its reference (SIMU with Sophia; every parameter with
AdamW): held-out retain EM at forget EM 0.1, worst-case relearning recovery, 4-bit recovery. Mean [95% t
interval] over the seeds both arms have. usage: more_seeds.py DIR"""

import json
import sys
from pathlib import Path

from summarise import LEVEL, METRIC, interval, recovery, worst_relearning

from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.runs import curve_points

PAIRS = [("simu_zo", "simu_sophia"), ("simu_zosphere", "simu_sophia"), ("fo_zo", "fo_adamw"), ("fo_zosphere", "fo_adamw")]


def reads(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    matched = at_forget_level(curve_points(run / "curve.jsonl"), LEVEL, [METRIC]) or {}
    return {"retain": matched.get(METRIC), "relearn": worst_relearning(results), "quant": recovery(results, "quantization_worst")}


def by_seed(root: Path, arm: str) -> dict[str, dict]:
    return {p.parent.name.rpartition("_s")[2]: reads(p.parent) for p in sorted(root.glob(f"{arm}_s*/results.json"))}


if __name__ == "__main__":
    root = Path(sys.argv[1]) / "planted_reporting"
    arms = {arm: by_seed(root, arm) for pair in PAIRS for arm in pair}
    print("| arm | seeds | held-out retain EM at forget EM 0.1 | worst-case relearning recovery | 4-bit recovery |")
    print("|---|---|---|---|---|")
    for arm, runs in arms.items():
        column = {k: interval(r[k] for r in runs.values()) for k in ("retain", "relearn", "quant")}
        print(f"| {arm} | {len(runs)} | {column['retain']} | {column['relearn']} | {column['quant']} |")
    print("\n| arm | against | seeds | paired diff: retain | worst-case relearning | 4-bit |")
    print("|---|---|---|---|---|---|")
    for arm, other in PAIRS:
        seeds = [s for s in arms[arm] if s in arms[other]]

        def paired(key):
            return interval(arms[arm][s][key] - arms[other][s][key] for s in seeds if None not in (arms[arm][s][key], arms[other][s][key]))

        print(f"| {arm} | {other} | {len(seeds)} | {paired('retain')} | {paired('relearn')} | {paired('quant')} |")
