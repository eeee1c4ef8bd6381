"""Run directories as the report reads them: results, trajectory, and the settings that tell runs apart.

Runs are grouped by their resolved configuration (`config.yaml`, as run.py saved it), less what may
differ between the seeds of one experiment: the seed, the paths, the logging and the probe points. Two sweeps made
with different config files, benchmarks, models or tuned values are therefore never pooled, and a
group is named by its method and every setting in which it differs from the others. A run given
twice (a sweep and one of its run folders) counts once; a seed that repeats inside a group is refused.
"""

from __future__ import annotations

import json
from collections import Counter
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from simu_lightning.utils.errors import SimuError

# a run's seeds: the run's own, and where a planted target put its facts (it follows the run's by default)
SEEDS = ("seed", "benchmark.planted.seed")
# what the seeds of one experiment may differ in: the seeds, where files go, how it is logged
IGNORED = (
    *SEEDS,
    "paths",
    "logger",
    "rerun",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # the architecture written out for the memory planner (conf/model/*.yaml): the model is model.source
    "model.config",
    # which points between the levels are complete: the values at the levels are the same (evaluation/probe.py)
    "evaluation.during.full_around",
)
MISSING = "<absent>"


@dataclass
class Run:
    path: Path
    method: str
    seed: int | tuple | None  # the run's seed, or (seed, planting seed) on a planted target
    results: dict
    settings: dict[str, object]  # the flattened resolved configuration, less IGNORED
    commit: str | None = None  # manifest.json's git commit ("+dirty" when the checkout had changes)
    curve: list[dict] = field(default_factory=list)  # points {"step", "summary", "scores"}, by step
    group: str = ""  # the method and the settings that tell this run's group from the others (find_runs)


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


def flatten(node, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": value} of a nested config; an empty or null node is one entry, lists are values."""
    if not isinstance(node, dict) or not node:
        return {prefix: json.dumps(node) if isinstance(node, list) else node}
    flat = {}
    for key, value in node.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def ignored(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in IGNORED)


def commit_of(run_dir: Path) -> str | None:
    file = run_dir / "manifest.json"
    if not file.exists():
        return None
    git = json.loads(file.read_text()).get("git") or {}
    return f"{git['commit']}{'+dirty' if git.get('dirty') else ''}" if git.get("commit") else None


def load_run(run_dir: Path) -> Run:
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise SimuError(f"{run_dir}: no config.yaml (the report groups runs by the resolved configuration in it)")
    config = yaml.safe_load(config_file.read_text()) or {}
    results = json.loads((run_dir / "results.json").read_text())
    flat = flatten(config)
    seeds = tuple(flat[k] for k in SEEDS if flat.get(k) is not None)
    curve = run_dir / "curve.jsonl"
    return Run(
        run_dir,
        results["method"],
        seeds[0] if len(seeds) == 1 else (seeds or None),
        results,
        {k: v for k, v in flat.items() if not ignored(k)},
        commit_of(run_dir),
        curve_points(curve) if curve.exists() else [],
    )


def run_dirs(folder: Path) -> list[Path]:
    if not folder.exists():
        raise SimuError(f"{folder}: no such folder")
    found = {p.parent for p in folder.rglob("results.json")}
    if not found:
        raise SimuError(f"{folder}: no run in it (a run directory holds results.json)")
    return sorted(found)


def value_of(settings: dict[str, object], key: str) -> object:
    """The setting `key`; one a run's configuration lacks altogether is null, as a setting added since
    comes with null for "as before" (attribution.head_t): runs from before it was added still pool with
    runs that leave it null. A node set only in some (robustness.families...) stays absent."""
    if key in settings:
        return settings[key]
    return MISSING if has_entries_under(settings, key) else None


def has_entries_under(settings: dict[str, object], node: str) -> bool:
    return any(k.startswith(node + ".") for k in settings)


def differing(settings: list[dict[str, object]]) -> list[str]:
    """The settings whose values are not the same in every one of `settings`, a node that some lack
    altogether (robustness: null, or no unlearning.requests at all) named once rather than by each of its
    entries."""
    keys = sorted({k for s in settings for k in s})
    changed = [k for k in keys if len({json.dumps(value_of(s, k), sort_keys=True) for s in settings}) > 1]
    nodes = [k for k in changed if any(s.get(k, MISSING) is None for s in settings)]
    kept = [k for k in changed if not any(k.startswith(node + ".") for node in nodes)]
    return sorted({absent_node(k, settings) for k in kept})


def absent_node(key: str, settings: list[dict[str, object]]) -> str:
    """The outermost node above `key` that some of `settings` lack altogether (else `key` itself)."""
    parts = key.split(".")
    for end in range(1, len(parts)):
        node = ".".join(parts[:end])
        if any(node not in s and not has_entries_under(s, node) for s in settings):
            return node
    return key


def shown(value) -> str:
    if isinstance(value, str) and value.count(".") >= 2 and " " not in value:  # a _target_: its last name
        return value.rsplit(".", 1)[-1]
    return "null" if value is None else str(value)


def setting_of(run: Run, key: str) -> str:
    value = value_of(run.settings, key)  # MISSING: the node is set (robustness=standard); None: null or predated
    return f"{key}={'on' if value is MISSING else shown(value)}"


def group_label(run: Run, keys: list[str], method_keys: set[str], shared: dict[str, str] | None = None) -> str:
    """The method, then each differing setting (the method's own settings only where they differ
    between runs of the same method: the rest come with its name), but for the `shared` values most
    groups hold."""
    parts = [
        setting_of(run, k) for k in keys if k != "method.name" and (not k.startswith("method.") or k in method_keys)
    ]
    return " ".join([run.method, *(p for p in parts if p not in (shared or {}).values())])


def differing_settings(runs: list[Run]) -> list[str]:
    """The settings in which the groups' configurations differ (the report names each)."""
    configs = {json.dumps(run.settings, sort_keys=True, default=str): run.settings for run in runs}
    return differing(list(configs.values()))


def shared_settings(runs: list[Run], keys: list[str]) -> dict[str, str]:
    """Per differing setting outside the method's own, the value (as `key=value`) that more than half of
    the groups hold: a control that changes one setting is then named by that setting alone."""
    groups = {json.dumps(run.settings, sort_keys=True, default=str): run for run in runs}.values()
    shared = {}
    for key in keys:
        if key.startswith("method."):
            continue
        values = Counter(setting_of(run, key) for run in groups)
        value, count = values.most_common(1)[0]
        if count > len(groups) / 2:
            shared[key] = value
    return shared


def naming(runs: list[Run]) -> tuple[list[str], set[str], dict[str, str]]:
    """What the group labels are made of: the differing settings, the method's own settings that differ
    within a method, and the shared values the labels leave out. Two configurations still get two labels:
    a setting they differ in has the shared value in one of them at most, so the other names it."""
    keys = differing_settings(runs)
    methods = {r.method for r in runs}
    method_keys = {
        k
        for k in keys
        if k.startswith("method.") and any(len({setting_of(r, k) for r in runs if r.method == m}) > 1 for m in methods)
    }
    return keys, method_keys, shared_settings(runs, keys)


def name_groups(runs: list[Run]) -> None:
    """Give every run its group label."""
    keys, method_keys, shared = naming(runs)
    for run in runs:
        run.group = group_label(run, keys, method_keys, shared)


def by_group(runs: list[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.group, []).append(run)
    return dict(sorted(grouped.items()))


def check_seeds(runs: list[Run]) -> None:
    """A seed twice in one group is refused: one run given twice, or two sweeps with the same settings."""
    for group, members in by_group(runs).items():
        seen: dict[object, Path] = {}
        for run in members:
            if run.seed in seen:
                raise SimuError(
                    f"group {group!r}: seed {run.seed} twice, in {seen[run.seed]} and {run.path} (the same "
                    "settings run twice: give the report one of them)"
                )
            seen[run.seed] = run.path


def mixed_commits(runs: list[Run]) -> dict[str, list[str]]:
    """The groups whose runs come from more than one git commit (manifest.json), with the commits."""
    commits = {g: sorted({r.commit or "unknown" for r in members}) for g, members in by_group(runs).items()}
    return {g: c for g, c in commits.items() if len(c) > 1}


def find_runs(folders: list[str | Path]) -> list[Run]:
    """Every run below the given folders (each a run directory, a sweep folder, or a folder of either),
    each once, labelled with its group."""
    paths = sorted({d.resolve() for folder in map(Path, folders) for d in run_dirs(folder)})
    runs = [load_run(d) for d in paths]
    name_groups(runs)
    check_seeds(runs)
    return runs


SMALL_FILES = ("results.json", "curve.jsonl", "config.yaml", "manifest.json", ".hydra/overrides.yaml")


def archive(runs: list[Run], folder: Path) -> None:
    """Each run's small files (no weights, no generations) under `folder`, one sub-folder per run named by
    its path below the runs' common folder, so that the report can be rebuilt from them."""
    common = Path(os.path.commonpath([str(r.path) for r in runs])) if len(runs) > 1 else runs[0].path.parent
    for run in runs:
        for name in SMALL_FILES:
            source = run.path / name
            if source.exists():
                target = folder / run.path.relative_to(common) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
