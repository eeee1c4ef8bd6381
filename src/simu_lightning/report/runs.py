"""Run directories as the report reads them: results, trajectory, and the settings that tell runs apart.

Runs are grouped by their resolved configuration (`config.yaml`, as run.py saved it), less what may
differ between the seeds of one experiment: the seed, the paths, the logging, the probe points and which seeds
tuned the values (`tuned.seeds`). Two sweeps made with different config files, benchmarks, models or tuned values
are therefore never pooled, and a group is named by its method and every setting in which it differs from the
others. A run given twice (a sweep and one of its run folders) counts once; a seed that repeats inside a group is
refused, and so is a group that pools a run whose seed tuned its settings with runs that report them.
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
    # how a run stopped short (mode=prepare since issue 44): runs that unlearned had it false
    "prepare_only",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # the architecture written out for the memory planner (conf/model/*.yaml): the model is model.source
    "model.config",
    # which points between the levels are complete: the values at the levels are the same (evaluation/probe.py)
    "evaluation.during.full_around",
    "benchmark.levels",
    # the utility curve on a fixed sample between the full points: kept apart, never read at the levels
    "evaluation.during.max_examples",
    # which seeds chose a tuned file's values: where the values came from, not what the run does (TUNED)
    "tuned.seeds",
)
# the seeds that tuned a run's settings (conf/tuned/*.yaml, an Optuna search): a run with one of them is a
# tuning run, whose figures are not held out
TUNED = "tuned.seeds"
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
    own_seed: object = None  # the configuration's `seed`
    tuned_seeds: tuple = ()  # the configuration's tuned.seeds: the seeds that chose its tuned values


def curve_points(path: Path) -> list[dict]:
    """`curve.jsonl` rows folded back into points {"step", "epoch", "summary": {split: {metric: v}}, "scores",
    "full"}, with the values on the fixed sample of rows apart ("sample": {split: {metric: v}})."""
    points: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            point = points.setdefault(
                row["step"], {"step": row["step"], "epoch": row["epoch"], "summary": {}, "scores": {}}
            )
            point["full"] = row.get("full", True)
            if row.get("rows", "all") == "sample":  # the fixed sample of a point that is not full: apart
                point.setdefault("sample", {}).setdefault(row["split"], {})[row["metric"]] = row["value"]
            elif row["split"] == "scores":
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


def tuned_seeds(config: dict, source: Path) -> tuple[int, ...]:
    """tuned.seeds of a resolved configuration (a list of ints; absent or null: none)."""
    tuned = config.get("tuned")
    seeds = tuned.get("seeds") if isinstance(tuned, dict) else None
    if seeds is None:
        return ()
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SimuError(f"{source}: {TUNED} must be a list of seeds (integers), got {seeds!r}")
    return tuple(seeds)


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
        own_seed=flat.get("seed"),
        tuned_seeds=tuned_seeds(config, config_file),
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


def lacks(settings: dict[str, object], node: str) -> bool:
    """Whether `settings` have nothing under `node` (absent, null or empty: robustness=null)."""
    return not has_entries_under(settings, node)


def differing(settings: list[dict[str, object]]) -> list[str]:
    """The settings whose values are not the same in every one of `settings`. A node that some lack
    altogether (robustness: null, or no unlearning.requests at all) is named, and so is every setting
    under it whose values differ among those that have it (unlearning.requests.masks=per_request against
    =union): a label then tells apart every two configurations, wherever they differ."""
    keys = sorted({k for s in settings for k in s})
    changed = [k for k in keys if len({json.dumps(value_of(s, k), sort_keys=True) for s in settings}) > 1]
    named = set()
    for node in sorted({absent_node(k, settings) for k in changed}):
        named.add(node)
        having = [s for s in settings if not lacks(s, node)]
        if len(having) > 1 and any(k.startswith(node + ".") for k in changed):
            named |= {k for k in differing(having) if k.startswith(node + ".")}
    return sorted(named)


def absent_node(key: str, settings: list[dict[str, object]]) -> str:
    """The outermost node above `key` that some of `settings` lack altogether (else `key` itself)."""
    parts = key.split(".")
    for end in range(1, len(parts)):
        node = ".".join(parts[:end])
        if any(lacks(s, node) for s in settings):
            return node
    return key


def shows(run: Run, key: str, keys: list[str]) -> bool:
    """Whether a label names `key` for `run`: not when the run lacks a named node above it (a run without
    unlearning.requests is named by `unlearning.requests=null`, not by each setting under it)."""
    return not any(key.startswith(node + ".") and lacks(run.settings, node) for node in keys)


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
        setting_of(run, k)
        for k in keys
        if k != "method.name" and (not k.startswith("method.") or k in method_keys) and shows(run, k, keys)
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
        values = Counter(setting_of(run, key) for run in groups if shows(run, key, keys))
        if not values:
            continue
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


def identity(run: Run) -> str:
    """What tells a run's group from the others: its settings (the label names them)."""
    return json.dumps(run.settings, sort_keys=True, default=str)


def tuning_runs(runs: list[Run]) -> set[Path]:
    """The runs whose seed tuned their settings: a seed in the tuned.seeds of a run with the same settings.
    Not only its own: runs with the same settings and seed give the same figures, so a seed that one file
    records as tuning these values tuned every run that repeats them (a re-tuned file's older runs too)."""
    tuned: dict[str, set] = {}
    for run in runs:
        tuned.setdefault(identity(run), set()).update(run.tuned_seeds)
    return {run.path for run in runs if run.own_seed is not None and run.own_seed in tuned[identity(run)]}


def seeds_text(members: list[Run]) -> str:
    """ "seed 0" or "seeds 1, 2": the seeds of some runs, in order."""
    seeds = ", ".join(str(r.seed) for r in sorted(members, key=lambda r: str(r.seed)))
    return f"seed{'s' if len(members) > 1 else ''} {seeds}"


def refuse_pooled_tuning(runs: list[Run], tuning: set[Path]) -> None:
    """A group that pools tuning runs with runs that report the tuned settings is refused: its mean would
    hold the seeds that chose the settings, so it is not held out."""
    for group, members in by_group(runs).items():
        tuners = [r for r in members if r.path in tuning]
        held_out = [r for r in members if r.path not in tuning]
        if tuners and held_out:
            raise SimuError(
                f"group {group!r} pools tuning runs with the runs that report their settings: {seeds_text(tuners)} "
                f"tuned them ({TUNED}, in {', '.join(str(r.path) for r in tuners)}), {seeds_text(held_out)} "
                f"report{'s' if len(held_out) == 1 else ''} them; pass --exclude-tuning to leave the tuning runs "
                "out, or give the report the held-out runs alone"
            )


def tuning_only(runs: list[Run], tuning: set[Path]) -> dict[str, str]:
    """The groups made of tuning runs alone, with their seeds: reported, but not held out."""
    return {g: seeds_text(m) for g, m in by_group(runs).items() if all(r.path in tuning for r in m)}


def load_runs(folders: list[str | Path]) -> list[Run]:
    """Every run below the given folders (each a run directory, a sweep folder, or a folder of either), once."""
    paths = sorted({d.resolve() for folder in map(Path, folders) for d in run_dirs(folder)})
    return [load_run(d) for d in paths]


def label_runs(runs: list[Run], tuning: set[Path], exclude_tuning: bool = False) -> list[Run]:
    """The runs to report, each labelled with its group: a seed repeated in a group, or tuning runs pooled
    with held-out ones, refused; tuning runs left out with `exclude_tuning`."""
    if exclude_tuning and tuning:
        runs = [r for r in runs if r.path not in tuning]
        if not runs:
            raise SimuError(f"every run given is a tuning run (its seed is in {TUNED}): nothing is left to report")
    name_groups(runs)
    check_seeds(runs)
    refuse_pooled_tuning(runs, tuning)
    return runs


def find_runs(folders: list[str | Path], exclude_tuning: bool = False) -> list[Run]:
    """Every run below the given folders, each once, labelled with its group; tuning runs kept apart."""
    runs = load_runs(folders)
    return label_runs(runs, tuning_runs(runs), exclude_tuning)


SMALL_FILES = ("results.json", "curve.jsonl", "config.yaml", "manifest.json", ".hydra/overrides.yaml")


def common_folder(runs: list[Run]) -> Path:
    """The folder every run is below (a single run's parent): runs are named by their path below it."""
    return Path(os.path.commonpath([str(r.path) for r in runs])) if len(runs) > 1 else runs[0].path.parent


def archive(runs: list[Run], folder: Path) -> None:
    """Each run's small files (no weights, no generations) under `folder`, one sub-folder per run named by
    its path below the runs' common folder, so that the report can be rebuilt from them."""
    common = common_folder(runs)
    for run in runs:
        for name in SMALL_FILES:
            source = run.path / name
            if source.exists():
                target = folder / run.path.relative_to(common) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
