"""Run directories as the report reads them: results, trajectory and the settings that tell runs apart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from simu_lightning.errors import SimuError

IGNORED_OVERRIDES = ("seed", "hydra.", "trainer.enable_progress_bar", "paths.")


@dataclass
class Run:
    path: Path
    method: str
    setting: str  # the overrides that tell this run's group apart (not method, seed, or shared by all)
    seed: int | None
    results: dict
    curve: list[dict] = field(default_factory=list)  # points {"step", "summary", "scores"}, by step

    @property
    def group(self) -> str:
        return f"{self.method} {self.setting}".strip()


def curve_points(path: Path) -> list[dict]:
    """`curve.jsonl` rows folded back into points {"step", "epoch", "summary": {split: {metric: v}}, "scores"}."""
    points: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            point = points.setdefault(
                row["step"], {"step": row["step"], "epoch": row["epoch"], "summary": {}, "scores": {}}
            )
            if row["split"] == "scores":
                point["scores"][row["metric"]] = row["value"]
            else:
                point["summary"].setdefault(row["split"], {})[row["metric"]] = row["value"]
        except (json.JSONDecodeError, KeyError) as err:
            raise SimuError(f"{path}:{number}: not a curve row (step, epoch, split, metric, value): {err}") from None
    return [points[step] for step in sorted(points)]


def _overrides(run_dir: Path) -> list[str]:
    file = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(file.read_text()) or []) if file.exists() else []


def load_run(run_dir: Path) -> Run:
    results = json.loads((run_dir / "results.json").read_text())
    overrides = [o for o in _overrides(run_dir) if not o.startswith(IGNORED_OVERRIDES) and not o.startswith("method=")]
    # (find_runs drops the overrides every run shares: they name the setting, not a difference)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    curve = run_dir / "curve.jsonl"
    return Run(
        run_dir,
        results["method"],
        " ".join(sorted(overrides)),
        (config or {}).get("seed"),
        results,
        curve_points(curve) if curve.exists() else [],
    )


def find_runs(folders: list[str | Path]) -> list[Run]:
    """Every run below the given folders (each a run directory, a sweep folder, or a folder of either)."""
    runs = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise SimuError(f"{folder}: no such folder")
        found = sorted(
            {p.parent for p in folder.rglob("results.json")}
            | ({folder} if (folder / "results.json").exists() else set())
        )
        if not found:
            raise SimuError(f"{folder}: no run in it (a run directory holds results.json)")
        runs += [load_run(d) for d in found]
    shared = set.intersection(*(set(r.setting.split()) for r in runs)) if runs else set()
    for run in runs:
        run.setting = " ".join(o for o in run.setting.split() if o not in shared)
    return runs
