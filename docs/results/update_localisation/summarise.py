"""Issue 45: the update-localisation table from the run folders (results.json planted.update and localisation):
per layout and arm, mean [95% t interval] over seeds; paired by seed against simu. usage: summarise.py DIR"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ARMS = ("oracle", "simu", "random", "fo", "so")


def interval(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return f"{values.mean():.3f} (n={len(values)})"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.3f} [{values.mean() - half:.3f}, {values.mean() + half:.3f}]"


def read(folder: Path) -> dict:
    runs = {}
    for path in sorted(folder.glob("*_s*/results.json")):
        arm, seed = path.parent.name.rsplit("_s", 1)
        r = json.loads(path.read_text())
        runs[arm, int(seed)] = {
            "auroc": r["planted"]["update"]["overall"]["auroc"],
            "mass_in_p": r["planted"]["update"]["overall"]["mass_in_p"],
            "selection_auroc": (r.get("localisation") or {}).get("overall", {}).get("auroc"),
            "forget_em": r["after"]["forget"]["exact_match"],
            "step": r["stopped"]["step"],
            "reason": r["stopped"]["reason"],
        }
    return runs


def table(layout: str, runs: dict) -> list[str]:
    seeds = sorted({s for _, s in runs})
    lines = [f"### {layout} (seeds {', '.join(map(str, seeds))})", ""]
    lines += ["| arm | update AUROC | share of the change in P | selection AUROC | stop step | condition met |"]
    lines += ["|---|---|---|---|---|---|"]
    for arm in ARMS:
        got = [runs[arm, s] for s in seeds if (arm, s) in runs]
        if not got:
            continue
        sel = [g["selection_auroc"] for g in got if g["selection_auroc"] is not None]
        lines.append(
            f"| {arm} | {interval([g['auroc'] for g in got])} | {interval([g['mass_in_p'] for g in got])} | "
            f"{interval(sel) if sel else '–'} | {interval([g['step'] for g in got])} | "
            f"{sum(g['reason'] == 'condition met' for g in got)}/{len(got)} |"
        )
    lines += ["", "Update AUROC, paired by seed: arm minus simu", "", "| arm | difference | seeds |", "|---|---|---|"]
    for arm in ARMS:
        pairs = [runs[arm, s]["auroc"] - runs["simu", s]["auroc"] for s in seeds if (arm, s) in runs and ("simu", s) in runs]
        if arm != "simu" and pairs:
            lines.append(f"| {arm} | {interval(pairs)} | {len(pairs)} |")
    return lines + [""]


if __name__ == "__main__":
    root = Path(sys.argv[1])
    out = []
    for layout in ("spread", "concentrated"):
        if (root / layout).is_dir():
            out += table(layout, read(root / layout))
    print("\n".join(out))
