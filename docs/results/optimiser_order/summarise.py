"""Issue 45, optimiser order: per arm (<mask>_<order>), held-out retain EM where forget EM first reaches 0.1
(the report's matched-forgetting read, report/matched.py), and, in the reporting runs, the attacks' recovery at
that point: 4-bit (the worst of rtn4 and nf4 within the utility margin) and the worst-case relearning search.
Mean [95% t interval] over seeds; paired by seed against simu_sophia. usage: summarise.py DIR [tuning|reporting|planted_tuning|planted_reporting]"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.runs import curve_points
from simu_lightning.unlearning.stopping import StoppingRule

LEVEL = StoppingRule.parse("forget.exact_match<=0.1").conditions[0]
METRIC = "retain_heldout.exact_match"


def interval(values) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return "–"
    if len(values) < 2:
        return f"{values.mean():.3f} (n=1)"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.3f} [{values.mean() - half:.3f}, {values.mean() + half:.3f}]"


def signed(value) -> str:
    return "–" if value is None else f"{value:+.3f}"


def recovery(results: dict, attack: str) -> float | None:
    return ((results.get("robustness") or {}).get(attack) or {}).get("search", {}).get("recovery")


def fixed_recovery(results: dict, metric: str = "rougeL_recall") -> float | None:
    attacked = (results.get("robustness") or {}).get("relearn_forget")
    return attacked["forget"][metric] - attacked["forget_unattacked"][metric] if attacked else None


def worst_relearning(results: dict) -> float | None:
    """The search's worst case, and at least the fixed attack's: this study's runs (at 19eb7cd) searched before
    the search's first trial was the fixed setting (9a78b1f on), which gives the larger of the two."""
    values = [v for v in (recovery(results, "relearn_forget_worst"), fixed_recovery(results)) if v is not None]
    return max(values) if values else None


if __name__ == "__main__":
    root, part = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "reporting"
    runs: dict[str, dict[str, dict]] = {}
    for path in sorted((root / part).glob("*/results.json")):
        name = path.parent.name
        arm, _, tag = name.rpartition("_s" if part.endswith("reporting") else "_lr")
        results = json.loads(path.read_text())
        runs.setdefault(arm, {})[tag] = {
            "matched": at_forget_level(curve_points(path.parent / "curve.jsonl"), LEVEL, [METRIC]),
            "stopped": results["stopped"],
            "quant": recovery(results, "quantization_worst"),
            "relearn": worst_relearning(results),
            "fixed": fixed_recovery(results),
            "update": ((results.get("planted") or {}).get("update") or {}).get("overall", {}).get("auroc"),
        }
    head = "seed" if part.endswith("reporting") else "lr"
    print(f"| arm | {head} | held-out retain EM at forget EM 0.1 | stop step | 4-bit recovery | worst-case relearning recovery |")
    print("|---|---|---|---|---|---|")
    for arm, by in runs.items():
        for tag, r in by.items():
            value = r["matched"].get(METRIC) if r["matched"] else None
            print(
                f"| {arm} | {tag} | {'not reached' if value is None else round(value, 3)} | {r['stopped']['step']} | "
                f"{signed(r['quant'])} | {signed(r['relearn'])} |"
            )
    if part.endswith("reporting"):
        print("\n| arm | held-out retain EM at forget EM 0.1 | 4-bit recovery | relearning recovery, fixed | worst case | paired retain diff vs simu_sophia | update AUROC (planted) |")
        print("|---|---|---|---|---|---|---|")
        base = runs.get("simu_sophia", {})
        for arm, by in runs.items():
            values = {s: (r["matched"] or {}).get(METRIC) for s, r in by.items()}
            pairs = [values[s] - (base[s]["matched"] or {}).get(METRIC) for s in values if s in base and values[s] is not None and base[s]["matched"]]
            print(
                f"| {arm} | {interval(values.values())} ({sum(v is not None for v in values.values())}/{len(values)} reached) | "
                f"{interval(r['quant'] for r in by.values())} | {interval(r['fixed'] for r in by.values())} | "
                f"{interval(r['relearn'] for r in by.values())} | "
                f"{interval(pairs) if arm != 'simu_sophia' else '–'} | {interval(r['update'] for r in by.values())} |"
            )
        # the second part (hybrid_*.sh): each new arm paired by seed with the same mask's AdamW arm, the
        # first-order optimiser 2510.00761 sets its hybrid against (and zosphere with the Gaussian zo arm)
        against = {"hybrid": "adamw", "zosphere": "zo"}
        print("\n| arm | against | paired diff: held-out retain EM at forget EM 0.1 | 4-bit recovery | worst-case relearning recovery |")
        print("|---|---|---|---|---|")
        for arm, by in runs.items():
            mask, _, order = arm.partition("_")
            other = runs.get(f"{mask}_{against.get(order)}")
            if order not in against or not other:
                continue

            def paired(read):
                return interval(read(by[s]) - read(other[s]) for s in by if s in other and read(by[s]) is not None and read(other[s]) is not None)

            print(
                f"| {arm} | {mask}_{against[order]} | {paired(lambda r: (r['matched'] or {}).get(METRIC))} | "
                f"{paired(lambda r: r['quant'])} | {paired(lambda r: r['relearn'])} |"
            )
