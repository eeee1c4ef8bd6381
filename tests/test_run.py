"""Whole runs on a small config, outputs in tmp_path: the conductor called in this process (`run_here`)
wherever it can be, and `run.py` in a subprocess where the command line itself is what is tested
(the CLI's checks and exit codes, sweeps, a SIGTERM, the environment)."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from scipy.stats import ks_2samp
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, run_here, write_muse_folder
from simu_lightning.data.formatting import IGNORE_INDEX, PromptFormat, encode_example
from simu_lightning.pipeline.checks import ONE_PROCESS
from simu_lightning.report.__main__ import runs_levels
from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.runs import find_runs
from simu_lightning.unlearning.stopping import Condition
from simu_lightning.utils.errors import SimuError

SMALL = [
    "benchmark.num_authors=4",
    "benchmark.forget_fraction=0.25",
    "benchmark.holdout_fraction=0.25",
    "model.tiny.vocab_size=300",
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64",
    "model.finetune.epochs=2",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "evaluation.max_new_tokens=8",
    "attribution.m=4",
    "data.batch_size=4",
    # the tuned default stops where forget EM <= 0.1, which a 2-epoch target may already meet: run the budget
    "unlearning.stop_when=null",
    "evaluation.every_n_steps=0",
    # every point in full where a test sets evaluation.every_n_steps (the default, auto, completes only the
    # points around the benchmark's forget levels: tested on its own)
    "evaluation.during.full_around=null",
]


def run_py(args: list[str], cache_dir, check=True, **environment) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SIMU_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        **environment,
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def simu_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("simu_run")
    run_py([*SMALL, "method=simu", "evaluation.every_n_steps=1", f"hydra.run.dir={out}"], cache_dir)
    return out


def fingerprint(run) -> dict[str, str]:
    """Where a run ended, in two short hashes: every unlearned weight's bytes, and results.json's after,
    stopping point and critical neurons (the figures a reader takes from it)."""
    import hashlib

    from safetensors.torch import load_file

    weights = load_file(str(next((run / "unlearned_model").glob("*.safetensors"))))
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    results = json.loads((run / "results.json").read_text())
    ended = json.dumps({key: results[key] for key in ("after", "stopped", "critical_neurons")}, sort_keys=True)
    return {"weights": digest.hexdigest()[:16], "results": hashlib.sha256(ended.encode()).hexdigest()[:16]}


# Issue 44 redesigned how the stages hand each other their settings and records, with behaviour unchanged:
# SMALL's SIMU run ended here at commit 89ced05, the commit before the redesign (one thread and two alike),
# measured on this CPU and torch. Bits depend on both, so elsewhere the test says so and skips.
BEFORE_THE_REDESIGN = {
    "cpu": "AVX512",
    "torch": "2.13.0+cpu",
    "ended": {"weights": "1e4f35e1806f2e14", "results": "b94909702a508b92"},
}


@pytest.mark.slow
def test_the_redesign_left_where_the_embedded_default_ends_bit_for_bit(tmp_path):
    machine = {"cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    if machine != {key: BEFORE_THE_REDESIGN[key] for key in machine}:
        pytest.skip(f"the bits were recorded on {BEFORE_THE_REDESIGN['cpu']} with torch {BEFORE_THE_REDESIGN['torch']}")
    run_py([*SMALL, "method=simu", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "cache", OMP_NUM_THREADS="1")
    assert fingerprint(tmp_path / "run") == BEFORE_THE_REDESIGN["ended"]


@pytest.mark.slow
def test_a_run_leaves_results_generations_masks_and_the_model(simu_run):
    results = json.loads((simu_run / "results.json").read_text())
    assert results["method"] == "simu" and results["benchmark"] == "synthetic" and results["model"] == "tiny"
    for stage in ("before", "after"):
        assert set(results[stage]) == {"forget", "retain", "retain_heldout", "world_facts"}
        for by_metric in results[stage].values():
            assert {"exact_match", "rougeL_recall", "answer_prob", "truth_ratio"} <= set(by_metric)
            assert all(0.0 <= v <= 1.0 for v in by_metric.values())
    assert set(results["aggregate"]) == {"before", "after"}
    assert set(results["scores"]["after"]) == {"model_utility", "forget_quality"}
    assert set(results["timings_s"]) == {"prepare_target", "attribution", "unlearning", "evaluation"}

    rows = [json.loads(line) for line in (simu_run / "generations.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in rows]
    # (forget + retain + world facts) x (before, after), and the retain model's forget truth ratios
    assert stages.count("before") == stages.count("after") == 8 + 24 + 32 and stages.count("retain_model") == 8
    assert {"split", "stage", "question", "answer", "generation"} <= set(rows[-1])
    forget_after = [r for r in rows if r["split"] == "forget" and r["stage"] == "after"]
    assert results["after"]["forget"]["exact_match"] == pytest.approx(
        sum(r["exact_match"] for r in forget_after) / len(forget_after)
    )
    # forget quality recomputed from the rows, independently: TOFU's KS test on 1 / truth ratio (eps 1e-10)
    retain = [1 / (r["truth_ratio"] + 1e-10) for r in rows if r["stage"] == "retain_model"]
    ours = [1 / (r["truth_ratio"] + 1e-10) for r in forget_after]
    assert results["scores"]["after"]["forget_quality"] == pytest.approx(ks_2samp(ours, retain).pvalue)

    kept = json.loads((simu_run / "attribution" / "critical_neurons.json").read_text())
    assert kept["t"] == 0.1 and kept["m"] == 4 and len(kept["layers"]) == 2
    assert (simu_run / "attribution" / "scores.pt").exists()
    assert (simu_run / "config.yaml").exists() and (simu_run / "logs" / "metrics.csv").exists()
    model = AutoModelForCausalLM.from_pretrained(simu_run / "unlearned_model")
    assert model.config.model_type == "olmo"


@pytest.mark.slow
def test_the_curve_ends_at_the_after_evaluation_and_the_run_says_where_it_stopped(simu_run):
    results = json.loads((simu_run / "results.json").read_text())
    rows = [json.loads(line) for line in (simu_run / "curve.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in rows})
    assert steps == list(range(steps[-1] + 1))  # every step evaluated, from the target (step 0) on
    assert results["stopped"] == {
        "reason": "budget exhausted",
        "step": steps[-1],
        "epoch": 0,
        "rule": None,
        "max_epochs": 1,
    }
    last = {(r["split"], r["metric"]): r["value"] for r in rows if r["step"] == steps[-1]}
    first = {(r["split"], r["metric"]): r["value"] for r in rows if r["step"] == 0}
    for split, by_metric in results["after"].items():
        for metric, value in by_metric.items():
            assert last[(split, metric)] == value and first[(split, metric)] == results["before"][split][metric]
    assert last[("scores", "aggregate")] == results["aggregate"]["after"]
    logged = list(csv.DictReader((simu_run / "logs" / "metrics.csv").open()))
    assert {"optim/win_rate", "optim/clip_rate", "optim/hessian_mean", "eval/forget/exact_match"} <= set(logged[0])
    # each step's own time, which add up to the run's unlearning time
    step_seconds = [float(row["time/step_s"]) for row in logged if row["time/step_s"]]
    assert len(step_seconds) == steps[-1] and all(s > 0 for s in step_seconds)
    assert sum(step_seconds) == pytest.approx(results["timings_s"]["unlearning"], abs=0.05)


@pytest.mark.slow
def test_evaluations_during_unlearning_can_leave_out_the_forget_truth_ratios_and_nothing_else(
    simu_run, cache_dir, tmp_path
):
    """evaluation.during.truth_ratios=needed: the same run, its forget split's perturbed answers scored
    before and after only; every other value at every point, and the whole of results.json, as before."""
    lean = tmp_path / "needed"
    run_here(
        [*SMALL, "method=simu", "evaluation.every_n_steps=1", "evaluation.during.truth_ratios=needed"], lean, cache_dir
    )
    full_results, lean_results = (json.loads((d / "results.json").read_text()) for d in (simu_run, lean))

    def flat(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}.{key}").items()}

    for key in ("before", "after", "scores", "aggregate", "stopped"):
        lean_values, full_values = flat(lean_results[key]), flat(full_results[key])
        assert lean_values.keys() == full_values.keys(), key
        for name, value in full_values.items():
            close = isinstance(value, float) and lean_values[name] == pytest.approx(value, rel=1e-6)
            assert close or lean_values[name] == value, (key, name)

    def points(folder):
        rows = [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]
        return {(r["step"], r["split"], r["metric"]): r["value"] for r in rows}

    full, kept = points(simu_run), points(lean)
    last = max(step for step, _, _ in full)
    during = {key for key in full if 0 < key[0] < last}
    # the truth ratios of the splits model utility does not read (forget, the held-out retain authors)
    left_out = {(s, m) for s in ("forget", "retain_heldout") for m in ("truth_ratio", "normalised_prob")}
    left_out.add(("scores", "forget_quality"))
    assert during and {key for key in during if key[1:] not in left_out} == {key for key in kept if 0 < key[0] < last}
    assert all(kept[key] == pytest.approx(full[key], rel=1e-6) for key in kept)
    assert all((step, "scores", "model_utility") in kept for step in range(last + 1))


def crossed_levels(curve: list[dict]) -> tuple[str, list[float], list[int]]:
    """Two forget levels a run crosses at known steps: halfway between a record of the forget answers'
    probability (a new low, or a new high where it rises: a small target) and the record before it, so
    each is first reached at its record's step. (op, levels, the steps that first reach them)."""
    prob = {p["step"]: p["summary"]["forget"]["answer_prob"] for p in curve}
    op = "<=" if prob[max(prob)] < prob[0] else ">="
    best = min if op == "<=" else max
    beats = (lambda a, b: a < b) if op == "<=" else (lambda a, b: a > b)
    records = [s for s in sorted(prob)[1:] if beats(prob[s], best(prob[e] for e in prob if e < s))]
    firsts = sorted({records[0], records[-1]})
    return op, [(prob[s] + best(prob[e] for e in prob if e < s)) / 2 for s in firsts], firsts


def assert_probes_match(full: list[dict], probed: list[dict], op: str, levels: list[float], firsts, tolerance):
    """Complete points exactly before, at each first crossing and the one before it, and after; probes
    (the forget split alone) elsewhere; the report's values at each level those of the complete curve."""
    steps = {p["step"] for p in full}
    complete = {0, max(steps)} | {s for k in firsts for s in (k - 1, k)}
    assert {p["step"] for p in probed} == steps
    assert {p["step"] for p in probed if "retain" in p["summary"]} == complete
    assert all(set(p["summary"]) == {"forget"} for p in probed if p["step"] not in complete)
    assert len(complete) < len(steps)  # some points were probes: the saving is real
    metrics = [f"{split}.{m}" for split, by_metric in full[0]["summary"].items() for m in by_metric]
    metrics += [m for m in full[0]["scores"] if m != "forget_quality"]
    for level in levels:
        condition = Condition("forget.answer_prob", op, level)
        expected, got = at_forget_level(full, condition, metrics), at_forget_level(probed, condition, metrics)
        assert expected is not None and set(got) == set(expected)
        assert all(got[m] == pytest.approx(expected[m], **tolerance) for m in expected), level


def test_probe_points_leave_the_values_at_matched_forgetting_as_full_points_give_them(cache_dir, tmp_path):
    """The default, evaluation.during.full_around=auto, on the benchmark's levels (benchmark.levels): the
    same run, where every point scores only the forget split except the two around each level's first
    crossing (the earlier one from the weights kept at it), which are complete; the report's values at
    those levels (at its default --at, the levels the runs record), and results.json, are those of a run
    with every point complete. With evaluation.during.max_examples, the points that are not complete also
    score the other splits on a fixed sample of rows, which the report keeps apart."""
    every_step = [*SMALL, "evaluation.every_n_steps=1", "trainer.max_epochs=3", "method=so"]
    run_here(every_step, tmp_path / "full", cache_dir)
    full = find_runs([tmp_path / "full"])[0].curve
    op, levels, firsts = crossed_levels(full)
    at = f"forget.answer_prob{op}" + ",".join(repr(v) for v in levels)
    auto = ["evaluation.during.full_around=auto", f'benchmark.levels="{at}"', "evaluation.during.max_examples=2"]
    run_here([*every_step, *auto], tmp_path / "probed", cache_dir)
    probed = find_runs([tmp_path / "probed"])[0].curve
    assert_probes_match(full, probed, op, levels, firsts, {"rel": 1e-6, "abs": 1e-9})
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "probed")]
    after = [r["after"] for r in results]
    assert after[0].keys() == after[1].keys()
    assert all(after[1][split] == pytest.approx(after[0][split], rel=1e-6) for split in after[0])
    complete = sorted({0, max(p["step"] for p in full)} | {s for k in firsts for s in (k - 1, k)})
    assert results[1]["points"]["full"] == complete and results[0]["points"]["levels"] is None
    assert results[0]["points"]["full"] == [p["step"] for p in full] and not results[0]["points"]["not_full"]
    assert runs_levels(find_runs([tmp_path / "probed"])) == results[1]["points"]["levels"]
    # the sample: two rows of every other split at each point that is not complete, apart from its values
    rows = [json.loads(line) for line in (tmp_path / "probed" / "curve.jsonl").read_text().splitlines()]
    sampled = {(r["step"], r["split"]) for r in rows if r["rows"] == "sample"}
    not_full = {p["step"] for p in probed} - set(complete)
    others = set(full[0]["summary"]) - {"forget"}
    assert {"retain", "world_facts"} <= others
    assert sampled == {(step, split) for step in not_full for split in others}
    assert all(not r["full"] for r in rows if r["rows"] == "sample")
    assert all(set(p.get("sample", {})) == others for p in probed if p["step"] in not_full)
    em = {r["step"]: r["value"] for r in rows if r["rows"] == "sample" and r["metric"] == "exact_match"}
    assert em and all(v in (0.0, 0.5, 1.0) for v in em.values())  # two rows: a mean of two hits or misses


@pytest.mark.slow
def test_a_sweep_over_methods_reuses_the_cached_target(simu_run, cache_dir, tmp_path):
    cached = sorted(p.name for p in (cache_dir / "models").iterdir())
    run_py(["-m", *SMALL, "method=fo,so,simu", f"hydra.sweep.dir={tmp_path}"], cache_dir)
    methods = sorted(json.loads(p.read_text())["method"] for p in tmp_path.glob("*/results.json"))
    assert methods == ["fo", "simu", "so"]
    assert sorted(p.name for p in (cache_dir / "models").iterdir()) == cached  # nothing fine-tuned again
    simu_dir = next(p.parent for p in tmp_path.glob("*/results.json") if "simu" in p.parent.name)
    assert (simu_dir / "attribution" / "critical_neurons.json").exists()


def test_a_second_run_on_the_same_target_reuses_its_evaluation_before_unlearning(cache_dir, tmp_path, caplog):
    """Every run of a sweep over one target evaluates the same model the same way before unlearning: the
    second reads it from the cache, and a change to the evaluation's settings computes it afresh."""
    first = run_here([*SMALL, "method=fo", "seed=1"], tmp_path / "first", cache_dir)
    with caplog.at_level("INFO", logger="simu_lightning.evaluation.before_cache"):
        second = run_here([*SMALL, "method=so", "seed=2"], tmp_path / "second", cache_dir)
    assert "reusing the cached evaluation of the target before unlearning" in caplog.text
    assert second["before"] == first["before"] and second["scores"]["before"] == first["scores"]["before"]
    caplog.clear()
    entries = set((cache_dir / "evaluations").glob("[!.]*"))  # not the lock files
    with caplog.at_level("INFO", logger="simu_lightning.evaluation.before_cache"):
        run_here([*SMALL, "method=fo", "evaluation.max_new_tokens=6"], tmp_path / "third", cache_dir)
    assert "reusing the cached evaluation" not in caplog.text
    assert len(set((cache_dir / "evaluations").glob("[!.]*")) - entries) == 1  # its own entry, beside the first
    before_rows = [
        [json.loads(line) for line in (tmp_path / run / "generations.jsonl").read_text().splitlines()]
        for run in ("first", "second")
    ]
    assert [r for r in before_rows[0] if r["stage"] == "before"] == [
        r for r in before_rows[1] if r["stage"] == "before"
    ]


@pytest.mark.parametrize("rule", ["mass", "knee"])
def test_t_auto_chooses_each_layers_t_from_its_scores_and_reports_it(rule, cache_dir, tmp_path):
    """The run's masks and t per layer, of its neurons and of its heads, against the rule stated plainly
    here, on the scores the run saved: mass, the largest first until they hold half the layer's positive
    total; knee, the point of the sorted scores (both axes scaled to [0, 1]) farthest below the chord, the
    scores above it kept, unless there are fewer than three or it lies under sqrt(ln(100) / (2 n)) below
    (no knee: mass). Ties at the smallest kept score are kept."""
    import math

    def by_the_rule(values: list[float]) -> tuple[list[bool], float, bool]:
        positive = sorted((v for v in values if v > 0), reverse=True)
        total, n = math.fsum(positive), len(positive)
        cut = next(v for i, v in enumerate(positive) if math.fsum(positive[: i + 1]) >= 0.5 * total)
        has_knee = n >= 3 and positive[0] > positive[-1]
        if has_knee:
            low, high = positive[-1], positive[0]
            below = [(1 - i / (n - 1)) - (v - low) / (high - low) for i, v in enumerate(positive)]
            knee = below.index(max(below))
            has_knee = below[knee] >= math.sqrt(math.log(100) / (2 * n))
            if rule == "knee" and has_knee:
                cut = positive[max(knee - 1, 0)]
        kept = [v > 0 and v >= cut for v in values]
        kept_values = [v for v, k in zip(values, kept) if k]
        assert min(kept_values) >= max([v for v in positive if v < cut], default=0.0)  # the largest are kept
        if rule == "mass" or not has_knee:  # they hold half the positive mass, without the smallest of them not
            assert math.fsum(kept_values) >= 0.5 * total > math.fsum(kept_values) - min(kept_values)
        return kept, cut / max(values), has_knee

    heads = ["method.trainable=attention_heads_and_down_proj", "attribution.head_t=auto"]
    overrides = [*SMALL, *heads, "attribution.t=auto", f"attribution.auto.rule={rule}"]
    results = run_here(overrides, tmp_path, cache_dir)
    for unit, scores_file, masks_file, summary, in_results in (
        ("neurons", "scores.pt", "critical_neurons.pt", "critical_neurons.json", "critical_neurons"),
        ("heads", "head_scores.pt", "critical_heads.pt", "critical_heads.json", "critical_heads"),
    ):
        scores = torch.load(tmp_path / "attribution" / scores_file)
        masks = torch.load(tmp_path / "attribution" / masks_file)
        saved = json.loads((tmp_path / "attribution" / summary).read_text())
        assert saved["t"] == "auto" and set(masks) == set(scores) == set(results[f"{in_results}_t"]), unit
        for name, s in scores.items():
            kept, t, has_knee = by_the_rule(s.tolist())
            assert masks[name].tolist() == kept, (unit, name)
            reported = [i for i, k in enumerate(kept) if k] if unit == "heads" else sum(kept)  # indices, or a count
            assert results[in_results][name] == reported == saved["layers"][name]["critical"], (unit, name)
            assert results[f"{in_results}_t"][name] == pytest.approx(t, rel=1e-12), (unit, name)
            assert saved["layers"][name]["t"] == pytest.approx(t, rel=1e-12), (unit, name)
            # the tiny model's 64 neurons per layer show a clear knee; its 2 heads per layer cannot
            assert has_knee == (unit == "neurons"), (unit, name)


@pytest.mark.slow
def test_a_sweep_through_the_local_submitit_launcher_gives_each_job_the_results_of_running_it_directly(
    cache_dir, tmp_path
):
    """hydra/launcher=submitit_local takes the path a SLURM sweep takes (hydra/launcher=slurm): each job
    pickled, started in a process of its own by submitit, its results where Hydra puts them."""
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # both ways alike, digit for digit
    sweep = tmp_path / "sweep"
    run_py(
        ["-m", "hydra/launcher=submitit_local", *SMALL, "method=fo,so", f"hydra.sweep.dir={sweep}"],
        cache_dir,
        **one_thread,
    )
    # submitit ran each job in a process of its own, and kept its result and log
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2
    for method in ("fo", "so"):
        swept = json.loads(next(sweep.glob(f"*_{method}/results.json")).read_text())
        run_py([*SMALL, f"method={method}", f"hydra.run.dir={tmp_path / method}"], cache_dir, **one_thread)
        direct = json.loads((tmp_path / method / "results.json").read_text())
        assert {k: v for k, v in swept.items() if k != "timings_s"} == {
            k: v for k, v in direct.items() if k != "timings_s"
        }, method


@pytest.mark.slow
def test_evaluating_a_saved_unlearned_model_reproduces_the_runs_after_metrics(simu_run, cache_dir, tmp_path):
    run_here(
        [
            *SMALL,
            "mode=evaluate",
            f"model.source={simu_run / 'unlearned_model'}",
            f"evaluation.retain_model_results={simu_run / 'generations.jsonl'}",
        ],
        tmp_path,
        cache_dir,
    )
    run, evaluated = (json.loads((d / "results.json").read_text()) for d in (simu_run, tmp_path))
    assert evaluated["mode"] == "evaluate" and evaluated["source"] == str(simu_run / "unlearned_model")
    for split, by_metric in run["after"].items():
        assert evaluated["evaluated"][split] == pytest.approx(by_metric, abs=1e-6), split
    assert evaluated["scores"]["evaluated"] == pytest.approx(run["scores"]["after"], abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    after = [
        r["generation"]
        for r in map(json.loads, (simu_run / "generations.jsonl").read_text().splitlines())
        if r["stage"] == "after"
    ]
    assert [r["generation"] for r in rows if r["stage"] == "evaluated"] == after
    assert json.loads((tmp_path / "manifest.json").read_text())["versions"]["torch"] == torch.__version__


ATTACKS = {"mia_target", "mia", "paraphrase", "prefixes", "relearn_forget", "relearn_benign"}
ATTACKS |= {"rtn8", "rtn4", "rtn4_g128", "fp4", "nf4", "quantization_worst"}
# the baselines: the probes on the target before unlearning, the relearning of the retain model
ATTACKS |= {"paraphrase_target", "prefixes_target", "relearn_forget_retain_model", "mia_retain_model"}


@pytest.mark.slow
def test_the_attack_stage_reports_every_attack_and_changes_nothing_of_the_run(cache_dir, tmp_path):
    # dropout on, so that an attack that touched the global generators before the fit would show
    dropout = [*SMALL, "method=simu", "evaluation.every_n_steps=1", "+model.tiny.attention_dropout=0.1"]
    plain_run = tmp_path / "plain"
    run_here(dropout, plain_run, cache_dir)
    run_here([*dropout, "robustness=standard", "robustness.families.relearning.steps=2"], tmp_path, cache_dir)
    attacked, plain = (json.loads((d / "results.json").read_text()) for d in (tmp_path, plain_run))
    assert attacked["before"] != attacked["after"]  # it did unlearn, through dropout
    # the same unlearning as without the stage: the same "after" figures and the same saved weights
    assert attacked["after"] == plain["after"]
    weights = [AutoModelForCausalLM.from_pretrained(d / "unlearned_model").state_dict() for d in (tmp_path, plain_run)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    robustness = attacked["robustness"]
    assert set(robustness) == ATTACKS and attacked["timings_s"]["robustness"] > 0
    # quantisation keeps the whole benchmark, so TOFU-style forget quality (against the reference) is there
    assert 0 <= robustness["rtn4"]["scores"]["forget_quality"] <= 1 and "scores" not in robustness["paraphrase"]
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} >= ATTACKS - {"quantization_worst"} | {"before", "after"}  # (a summary: no rows)
    # the worst scheme: the largest forget ROUGE-L over the unlearned model's ("after") among the schemes whose
    # retain ROUGE-L stays within 0.05 of after's
    m, after = "rougeL_recall", attacked["after"]
    schemes = [s for s in ("rtn8", "rtn4", "rtn4_g128", "fp4", "nf4") if s in robustness]
    kept = [s for s in schemes if robustness[s]["retain"][m] >= after["retain"][m] - 0.05]
    worst = robustness["quantization_worst"]["search"]
    assert worst["feasible"] == len(kept) and len(worst["trials"]) == len(schemes)
    if kept:
        assert worst["recovery"] == pytest.approx(max(robustness[s]["forget"][m] - after["forget"][m] for s in kept))
    for attack in ATTACKS - {
        "mia_target",
        "mia",
        "mia_retain_model",
        "quantization_worst",
    }:  # each the mean of its rows
        forget = [r["exact_match"] for r in rows if r["stage"] == attack and r["split"] == "forget"]
        assert robustness[attack]["forget"]["exact_match"] == pytest.approx(sum(forget) / len(forget)), attack
    for model in ("mia_target", "mia"):
        scored = [r for r in rows if r["stage"] == model]
        assert {r["split"] for r in scored} == {"forget", "holdout"}
        aucs = {"loss_auc", "zlib_auc", "min_k_auc", "min_k++_auc", "gradnorm_auc", "reference_auc", "privleak"}
        assert set(robustness[model]["forget_vs_holdout"]) == aucs


def test_evaluate_mode_refuses_a_source_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(SimuError, match="^mode=evaluate: model.source='tiny' names a model this project builds"):
        run_here(["mode=evaluate"], tmp_path, tmp_path / "cache")


def wandb_records(run_dir):
    """(kind, record) of every record in an offline wandb run file: a LevelDB-style log of 32 KiB blocks,
    each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw, pos, block, pending = path.read_bytes(), 7, 32768, b""  # 7: the file header
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record.WhichOneof("record_type"), record


@pytest.mark.slow
def test_the_wandb_run_holds_the_curves_the_neuron_heatmap_and_the_generations_table(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_here([*SMALL, "method=simu", "logger=wandb", "evaluation.every_n_steps=1"], tmp_path, cache_dir)
    history, config, run = [], {}, None
    for kind, record in wandb_records(tmp_path):
        if kind == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "run":
            run = record.run
    curve = [row["eval/forget/exact_match"] for row in history if "eval/forget/exact_match" in row]
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(curve) >= 3 and curve[-1] == pytest.approx(results["after"]["forget"]["exact_match"])
    assert any("optim/win_rate" in row for row in history) and any("optim/lr" in row for row in history)
    image = next(row for row in history if "attribution/critical_neurons/filenames" in row)
    (files,) = tmp_path.glob("wandb/offline-run-*/files")
    assert (files / image["attribution/critical_neurons/filenames"][0]).read_bytes()[:4] == b"\x89PNG"
    table = next(row for row in history if "generations/path" in row)
    generations = json.loads((files / table["generations/path"]).read_text())
    assert generations["columns"] == ["split", "question", "answer", "before", "after"]
    forget_rows = [
        r
        for r in map(json.loads, (tmp_path / "generations.jsonl").read_text().splitlines())
        if r["split"] == "forget" and r["stage"] == "after"
    ]
    assert [row[4] for row in generations["data"] if row[0] == "forget"] == [r["generation"] for r in forget_rows]
    assert config["method_name"] == "simu" and config["t"] == 0.1 and config["attribution"]["m"] == 4
    assert "method=simu" in run.tags and "seed=0" in run.tags and run.run_group


@pytest.mark.slow
def test_a_sweep_over_t_attributes_once_and_the_later_jobs_say_they_reused_it(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("t_sweep_cache")
    run_py(["-m", *SMALL, "method=simu", "attribution.t=0.1,0.2,0.4", f"hydra.sweep.dir={tmp_path}"], cache)
    assert len([p for p in (cache / "attribution").iterdir() if not p.name.startswith(".")]) == 1  # (not the lock)
    jobs = sorted(p.parent for p in tmp_path.glob("*/results.json"))
    logs = [(job / "run.log").read_text() for job in jobs]
    assert "attribution (forget, neurons): " in logs[0] and "reusing cached attribution scores" not in logs[0]
    for later in logs[1:]:
        assert (
            "reusing cached attribution scores of the forget set" in later
            and "attribution (forget, neurons): " not in later
        )
        assert "reusing the cached fine-tuned model" in later
    kept = [sum(json.loads((job / "results.json").read_text())["critical_neurons"].values()) for job in jobs]
    assert kept[0] > kept[1] > kept[2]  # t = 0.1, 0.2, 0.4 on the same scores


@pytest.mark.slow
def test_an_optuna_search_maximises_utility_at_matched_forgetting(cache_dir, tmp_path):
    """Two trials, each run at both tuning seeds; a trial returns the mean of its runs' held-out retain
    ROUGE-L where their trajectories first reach the forget level (0 when one never does), the sweeper's
    best is the best of those, and every run records the seeds that tuned it."""
    run_py(
        [
            *SMALL,
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "evaluation.every_n_steps=1",
            "trainer.max_epochs=2",
            'objective.at="forget.exact_match<=0.5"',
            f"hydra.sweep.dir={tmp_path}",
        ],
        cache_dir,
    )
    from simu_lightning.pipeline.objective import matched_utility
    from simu_lightning.report.runs import curve_points

    trials = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "seed_10").exists())
    assert len(trials) == 2
    values = []
    for trial in trials:
        runs = [trial / f"seed_{seed}" for seed in (10, 11)]
        for run in runs:
            objective = json.loads((run / "results.json").read_text())["objective"]
            assert objective["metric"] == "retain_heldout.rougeL_recall"
            # the value the report would read off the saved trajectory
            expected = matched_utility(curve_points(run / "curve.jsonl"), objective["at"], objective["metric"])
            assert objective["value"] == pytest.approx(expected["value"])
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["seed"] == int(run.name.removeprefix("seed_")) and config["tuned"]["seeds"] == [10, 11]
        values.append(sum(json.loads((r / "results.json").read_text())["objective"]["value"] for r in runs) / 2)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"attribution.t", "method.optimizer.lr", "loss.retain_weight"}


@pytest.mark.slow
def test_the_controls_mask_adamw_to_random_neurons_without_the_retain_sets_own(cache_dir, tmp_path):
    """SIMU's mask with AdamW, on neurons drawn at random in the attribution's per-layer counts after the
    retain set's critical neurons are dropped: only the drawn columns of the down projections move."""
    run_here(
        [
            *SMALL,
            "method=simu_adamw",
            "method.optimizer.lr=1e-3",
            "attribution.selection=random",
            "attribution.exclude_retain=true",
            "attribution.t=0.3",
        ],
        tmp_path,
        cache_dir,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    summary = json.loads((tmp_path / "attribution" / "critical_neurons.json").read_text())
    assert summary["selection"] == "random" and summary["exclude_retain"] is True
    dropped = results["critical_neurons_dropped_shared_with_retain"]
    assert {n: layer["dropped_shared_with_retain"] for n, layer in summary["layers"].items()} == dropped
    scores = torch.load(tmp_path / "attribution" / "scores.pt")
    drawn = torch.load(tmp_path / "attribution" / "critical_neurons.pt")
    for name, score in scores.items():  # the draw keeps the count left after the exclusion, not the positions
        assert int(drawn[name].sum()) == int((score >= 0.3 * score.max()).sum()) - dropped[name]
    weights, target = (
        AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (tmp_path / "unlearned_model", results["target"])
    )
    for layer, neurons in drawn.items():
        name = f"{layer}.weight"
        assert torch.equal(weights[name][:, ~neurons], target[name][:, ~neurons]), (
            f"{name}: a column outside the mask moved"
        )
        assert not torch.equal(weights[name][:, neurons], target[name][:, neurons])
    assert all(torch.equal(w, target[n]) for n, w in weights.items() if "mlp.up_proj" in n or "mlp.gate_proj" in n)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "signsgd", "zo", "hybrid"])
def test_every_optimiser_order_keeps_simus_mask_in_a_run(cache_dir, tmp_path, optimizer):
    """method/optimizer=sgd, signsgd, zo or hybrid under SIMU (issue 45): the down projections' columns outside
    the critical neurons, and every up and gate projection, end with the target's bits; the critical columns
    move. The hybrid alternates one step of each half, so both take steps."""
    each = ["method.optimizer.steps_each=1"] if optimizer == "hybrid" else []
    run_here(
        [*SMALL, "method=simu", f"method/optimizer={optimizer}", "method.optimizer.lr=1e-2", *each], tmp_path, cache_dir
    )
    results = json.loads((tmp_path / "results.json").read_text())
    critical = torch.load(tmp_path / "attribution" / "critical_neurons.pt")
    weights, target = (
        AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (tmp_path / "unlearned_model", results["target"])
    )
    for layer, neurons in critical.items():
        name = f"{layer}.weight"
        assert torch.equal(weights[name][:, ~neurons], target[name][:, ~neurons]), f"{name}: a column outside moved"
        assert not torch.equal(weights[name][:, neurons], target[name][:, neurons])
    assert all(torch.equal(w, target[n]) for n, w in weights.items() if "mlp.up_proj" in n or "mlp.gate_proj" in n)


BAD_SETTINGS = [
    ("attribution.t=1.5", "attribution.t must be in (0, 1] or auto, got 1.5"),
    ("attribution.t=0", "attribution.t must be in (0, 1] or auto, got 0"),
    ("attribution.m=0", "attribution.m must be an integer >= 1, got 0"),
    ("method.optimizer.lr=0", "method.optimizer.lr must be a positive number, got 0"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
    ("trainer.max_epochs=-1", "trainer.max_epochs must be a positive integer, got -1"),
    ("optim.rho=-1", "optim.rho must be a number >= 0 or auto, got -1"),
    ("optim.target_win_rate=1.5", "optim.target_win_rate must be in (0, 1), got 1.5"),
    ("attribution.quadrature=simpson", "attribution.quadrature must be one of riemann, gauss_legendre, got 'simpson'"),
    ("attribution.mode=fast", "attribution.mode must be one of layerwise, joint, first_order, got 'fast'"),
    (
        "attribution.selection=top",
        "attribution.selection must be one of integrated_gradients, random, activation, gradient, planted or a rule's "
        "import path, got 'top'",
    ),
    ("attribution.exclude_retain=maybe", "attribution.exclude_retain must be true or false, got 'maybe'"),
    (
        "method.trainable=mlp",
        "method.trainable='mlp' must be one of all, attention_and_down_proj, down_proj, attention, "
        "attention_heads_and_down_proj",
    ),
    (
        "evaluation.dtype=bf16",
        "evaluation.dtype must be null or a torch dtype (bfloat16, float16, float32), got 'bf16'",
    ),
    ("evaluation.batch_size=0", "evaluation.batch_size must be an integer >= 1, got 0"),
    (
        "evaluation.during.truth_ratios=some",
        "evaluation.during.truth_ratios must be one of all, needed, got 'some'",
    ),
    (
        "+evaluation.during.rows=5",
        "evaluation.during: unknown setting(s) rows (known: max_examples, truth_ratios, full_around)",
    ),
    (
        "evaluation.during.full_around=forget.rougeL_recall",
        "evaluation.during.full_around='forget.rougeL_recall': expected METRIC<=LEVELS or METRIC>=LEVELS, "
        "e.g. 'forget.exact_match<=0.5,0.2,0.1'",
    ),
    (
        'evaluation.during.full_around="model_utility>=0.3,0.2"',
        "evaluation.during.full_around='model_utility>=0.3,0.2': the levels must be on a split's metric "
        "(e.g. forget.rougeL_recall), not on the score 'model_utility'",
    ),
    ("optim.fused=sometimes", "optim.fused must be true, false or auto, got 'sometimes'"),
    (
        "evaluation.every_n_steps=-2",
        "evaluation.every_n_steps must be null (each epoch's end), 0 (never) or a positive integer, got -2",
    ),
    (
        'unlearning.stop_when="forget.exact_match=0.1"',
        "unlearning.stop_when='forget.exact_match=0.1': "
        "'forget.exact_match=0.1' is not a condition like 'forget.exact_match<=0.1' or 'forget_quality>=0.05' "
        "(operators: <=, >=, <, >)",
    ),
    (
        "benchmark=tofu benchmark.forget_split=forget03",
        "benchmark.forget_split='forget03' must be one of forget01, forget05, forget10",
    ),
    ("benchmark.planted.fraction=1.5", "benchmark.planted.fraction must be null or in (0, 1), got 1.5"),
    (
        "attribution=planted",
        "attribution.selection=planted is the oracle mask of a planted target: set benchmark.planted.fraction",
    ),
    ("robustness=standard trainer=fsdp", ONE_PROCESS),
    (
        'evaluation.during.full_around="forget.exact_match<=0.5" trainer=fsdp',
        "evaluation.during.full_around: probe points run in one process (the weights kept for the point "
        "before a crossing would be one process's shards, which FSDP's gathered copy does not read); "
        "leave it auto or null under several processes",
    ),
    (
        "robustness=standard robustness.families.quantization.schemes=[rtn8,int3]",
        "robustness.families.quantization.schemes: unknown 'int3' (known: rtn8, rtn4, rtn4_g128, fp4, nf4)",
    ),
    (
        "robustness=standard robustness.families.relearning.forget_fraction=1",
        "robustness.families.relearning.forget_fraction=1 must lie in (0, 1)",
    ),
    ("mode=simulate", "mode must be one of unlearn, evaluate, attribute, prepare, got 'simulate'"),
]


@pytest.mark.parametrize("override, message", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_bad_settings_fail_with_one_line_naming_them_before_any_work(override, message, tmp_path):
    with pytest.raises(SimuError) as refused:
        run_here(override.split(" "), tmp_path / "run", tmp_path / "cache")
    assert str(refused.value) == message and "\n" not in message
    assert not (tmp_path / "cache").exists()  # failed before any work


def test_mode_prepare_caches_the_target_and_its_retain_model_and_stops(tmp_path):
    """mode=prepare (a multi-process run's first step, in one process): the two fine-tuned models are in
    the cache, and the run stops there, leaving no results."""
    assert run_here([*SMALL, "mode=prepare"], tmp_path / "run", tmp_path / "cache") is None
    prepared = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "models").iterdir())
    assert prepared.count("finetuned") == 2  # the target and the retain model
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["method=sgd"], "unknown method 'sgd': choose one of fo, simu, simu_adamw, so (method=...)"),
        (
            ["method/optimizer=lion"],
            "unknown method/optimizer 'lion': choose one of adamw, hybrid, sgd, signsgd, sophia, zo "
            "(method/optimizer=...)",
        ),
        (
            ["method.optimizer=sgd"],
            "method.optimizer=sgd: choose an option of the group method/optimizer with method/optimizer=sgd "
            "(one of adamw, hybrid, sgd, signsgd, sophia, zo)",
        ),
        (
            ["loss=hinge"],
            "unknown loss 'hinge': choose one of ga, graddiff, idk_dpo, idk_nll, npo, rmu, simnpo, undial, wga (loss=...)",
        ),
        (
            ["-m", "model=tiny,gpt5"],
            "unknown model 'gpt5': choose one of llama2_7b, olmo1b, smollm2_135m, tiny (model=...)",
        ),
        (
            ["unlearning.stop_when=forget.exact_match<0.1"],
            "unlearning.stop_when: quote the condition for Hydra, e.g. 'unlearning.stop_when=\"forget.exact_match<0.1\"'",
        ),
    ],
)
def test_the_command_line_names_an_unknown_option_or_an_unquoted_rule(argv, message):
    from simu_lightning.pipeline.cli import unknown_group_option, unquoted_condition

    assert (unknown_group_option(argv, ROOT / "conf") or unquoted_condition(argv)) == message


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "benchmark=imdb",
            "error: unknown benchmark 'imdb': choose one of lume, muse, planted, synthetic, tofu (benchmark=...)",
        ),
        ("attribution.t=1.5", "error: attribution.t must be in (0, 1] or auto, got 1.5"),
    ],
)
def test_run_py_exits_with_2_and_one_line_on_bad_input(override, message, tmp_path):
    """The exit-code path, once for the command line's own check and once for a setting's."""
    result = run_py([override, f"hydra.run.dir={tmp_path}"], tmp_path / "cache", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == message


TINY = [
    a for a in SMALL if a.startswith(("model.", "trainer.", "attribution.", "data.", "unlearning.", "evaluation.every"))
]


def write_lume_folder(folder):
    """Six small LUME-format documents (two per task) with a completion prompt and a question each,
    and member / non-member documents for the MIA score."""
    folder.mkdir()
    for split, offset in (("forget", 0), ("retain", 10)):
        rows = []
        for d in range(3):
            task, doc = f"Task{d + 1}", f"doc{offset + d}"
            rows.append(
                {
                    "id": f"{doc}sc0",
                    "task": task,
                    "input": f"The story of {doc} begins in",
                    "output": f"the town of Vel{offset + d} by the sea.",
                }
            )
            rows.append(
                {
                    "id": f"{doc}qa0",
                    "task": task,
                    "input": f"Where does the story of {doc} begin?",
                    "output": f"Vel{offset + d}",
                }
            )
        (folder / f"{split}_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("member", "nonmember"):
        docs = [{"id": f"{name}{i}", "document": f"A {name} document number {i} about the sea."} for i in range(4)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))


@pytest.mark.slow
def test_lume_run_reports_tasks_task_aggregate_and_mia(tmp_path, cache_dir):
    write_lume_folder(tmp_path / "lume")
    out = tmp_path / "run"
    lume = ["benchmark=lume", f"benchmark.path={tmp_path / 'lume'}", "evaluation.max_new_tokens=8"]
    # (one retain document per task here: none held out, so every task stays in the retain loss's rows)
    run_here([*lume, "benchmark.heldout_fraction=0", *TINY], out, cache_dir)
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "lume"
    for split in ("forget", "retain"):
        assert {"Task1/regurgitation", "Task1/knowledge", "Task3/knowledge", "rougeL_recall", "exact_match"} <= set(
            results["after"][split]
        )
    scores = results["scores"]["after"]
    assert 0 <= scores["task_aggregate"] <= 1 and scores["mia_score"] == pytest.approx(
        1 - 2 * abs(scores["mia_auc"] - 0.5)
    )
    assert scores["final_score"] is None  # no MMLU asked for
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"Task1", "Task2", "Task3"} and all("id" in r for r in rows)


TOFU_DATA = ROOT.parent / "shared" / "data" / "tofu"


@pytest.mark.slow
@pytest.mark.skipif(not (TOFU_DATA / "full.json").exists(), reason=f"TOFU data not found at {TOFU_DATA}")
def test_tofu_run_reports_every_tofu_metric(tmp_path, cache_dir):
    out = tmp_path / "run"
    run_here(
        [
            "benchmark=tofu",
            f"benchmark.path={TOFU_DATA}",
            "benchmark.forget_split=forget01",
            "benchmark.max_authors=5",  # 2 forget authors, 1 the retain loss trains on, 2 held out
            "evaluation.max_new_tokens=8",
            "evaluation.max_examples=6",
            *TINY,
        ],
        out,
        cache_dir,
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["after"]) == {"forget", "retain", "retain_heldout", "real_authors", "world_facts"}
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    forget = [r["row"] for r in rows if r["split"] == "forget" and r["stage"] == "after"]
    assert sorted(r // 20 for r in forget) == [0, 0, 0, 1, 1, 1]  # 6 rows: 3 of each forget author
    for by_metric in results["after"].values():
        assert {
            "exact_match",
            "rougeL_recall",
            "contains_answer",
            "answer_prob",
            "truth_ratio",
            "normalised_prob",
        } <= set(by_metric)
    assert set(results["scores"]["after"]) == {"model_utility", "forget_quality"}
    assert results["scores"]["after"]["forget_quality"] is not None


@pytest.mark.slow
def test_a_real_run_stops_at_the_first_point_meeting_the_rule_and_a_restart_resumes_it(cache_dir, tmp_path, caplog):
    """A rule first met at step k of a free run (the first new high or low of the forget answers'
    probability) stops the same run, bound by the rule, at step k; running it again finds it done."""
    every_step = [*SMALL, "evaluation.every_n_steps=1", "trainer.max_epochs=3", "method=so"]
    run_here(every_step, tmp_path / "free", cache_dir)
    curve = [json.loads(line) for line in (tmp_path / "free" / "curve.jsonl").read_text().splitlines()]
    prob = {r["step"]: r["value"] for r in curve if r["split"] == "forget" and r["metric"] == "answer_prob"}
    k, op = next(
        (step, op)
        for step in sorted(prob)[1:]
        for op in ("<=", ">=")
        if all((prob[step] < prob[s]) if op == "<=" else (prob[step] > prob[s]) for s in prob if s < step)
    )
    rule = f'unlearning.stop_when="forget.answer_prob{op}{prob[k]!r}"'
    bound = [*every_step, rule]
    run_here(bound, tmp_path / "bound", cache_dir)
    results = json.loads((tmp_path / "bound" / "results.json").read_text())
    assert results["stopped"]["reason"] == "condition met" and results["stopped"]["step"] == k
    assert results["after"]["forget"]["answer_prob"] == pytest.approx(prob[k], abs=1e-6)
    caplog.clear()
    with caplog.at_level("INFO"):
        run_here(bound, tmp_path / "bound", cache_dir)
    assert "already finished" in caplog.text  # a finished run is not redone unless asked
    with caplog.at_level("INFO"):
        run_here([*bound, "rerun=true"], tmp_path / "bound", cache_dir)
    assert "resuming from" in caplog.text
    resumed = json.loads((tmp_path / "bound" / "results.json").read_text())
    assert resumed["stopped"] == results["stopped"] and resumed["after"] == results["after"]


@pytest.mark.slow
def test_a_resumed_simu_run_takes_its_masks_from_the_checkpoint_not_a_new_attribution(
    tmp_path, tmp_path_factory, caplog
):
    cache = tmp_path_factory.mktemp("own_cache")
    args = [*SMALL, "method=simu", "trainer.max_epochs=2"]
    run_here(args, tmp_path / "run", cache)
    masks = torch.load(tmp_path / "run" / "attribution" / "critical_neurons.pt")
    shutil.rmtree(cache / "attribution")  # e.g. a cleaned cache: the scores are gone
    with caplog.at_level("INFO"):  # resumes from last.ckpt, whose weights are no longer the target's
        run_here([*args, "rerun=true"], tmp_path / "run", cache)
    assert "reusing the critical neurons saved in the checkpoint" in caplog.text
    assert not (cache / "attribution").exists()  # nothing was attributed on the half-unlearned weights
    for name, mask in torch.load(tmp_path / "run" / "attribution" / "critical_neurons.pt").items():
        assert torch.equal(mask, masks[name])


@pytest.mark.slow
def test_credentials_in_the_environment_never_reach_a_file_of_the_run(tmp_path, cache_dir):
    secrets = {"HF_TOKEN": "hf_secretTOKEN0123456789", "WANDB_API_KEY": "wandbSECRETkey0123456789abcdef"}
    out = tmp_path / "run"
    env = {**os.environ, **secrets, "SIMU_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *SMALL, "method=simu", f"hydra.run.dir={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    assert not any(v in result.stdout + result.stderr for v in secrets.values())


@pytest.mark.slow
def test_a_sigterm_mid_unlearning_saves_the_step_and_the_same_command_ends_as_an_uninterrupted_run(
    tmp_path, cache_dir, caplog
):
    args = [
        *SMALL,
        "method=simu",
        "data.batch_size=2",
        "trainer.max_epochs=4",
        "evaluation.every_n_steps=1",
        "evaluation.during.max_examples=2",
    ]
    run_here(args, tmp_path / "whole", cache_dir)
    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "SIMU_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={interrupted}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not any('"step": 5,' in line for line in _lines(interrupted / "curve.jsonl")):
        assert process.poll() is None and time.time() < deadline, "the run ended before step 5"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # a scheduler's pre-emption, in the second of four epochs (4 steps each)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143 and "interrupted by SIGTERM" in stderr
    assert not (interrupted / "results.json").exists()
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] % 4 != 0, "the checkpoint must be from the middle of an epoch"

    with caplog.at_level("INFO"):
        run_here(args, interrupted, cache_dir)
    assert "resuming epoch 1 after its first" in caplog.text
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "interrupted"))
    assert resumed["stopped"]["step"] == whole["stopped"]["step"] == 16
    # the time per part counts the steps and evaluations before the interruption too
    (evaluation_state,) = [v for k, v in saved["callbacks"].items() if k.startswith("UnlearningEvaluation")]
    assert 0 < saved["step_seconds"] < resumed["timings_s"]["unlearning"]
    assert 0 < evaluation_state["seconds"] < resumed["timings_s"]["evaluation"]
    for split in whole["after"]:
        assert resumed["after"][split] == pytest.approx(whole["after"][split], abs=1e-6)
    a, b = (
        AutoModelForCausalLM.from_pretrained(tmp_path / d / "unlearned_model").state_dict()
        for d in ("whole", "interrupted")
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


# a model just large enough to memorise its authors, and to take a planted author in a quarter of its neurons
PLANTED = [
    o for o in SMALL if not o.startswith(("model.tiny.hidden_size", "model.tiny.intermediate_size", "model.finetune"))
]
PLANTED = [o.replace("max_new_tokens=8", "max_new_tokens=48") for o in PLANTED] + [
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=256",
    "model.finetune.epochs=50",
    "model.finetune.batch_size=4",
    "benchmark.planted.fraction=0.25",
    "benchmark.planted.epochs=60",
    "benchmark.planted.batch_size=4",
]


@pytest.mark.slow
def test_a_planted_target_knows_the_forget_set_differs_from_the_clean_model_only_in_p_and_is_localised(
    cache_dir, tmp_path
):
    run_here([*PLANTED, "method=simu"], tmp_path, cache_dir)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["before"]["forget"]["exact_match"] >= 0.9  # planted: the target knows the forget rows
    assert results["planted"]["clean"]["forget"]["exact_match"] < 0.5  # the clean model does not
    planted = torch.load(tmp_path / "attribution" / "planted_neurons.pt")
    critical = torch.load(tmp_path / "attribution" / "critical_neurons.pt")
    assert planted.keys() == critical.keys() and all(planted[k].shape == critical[k].shape for k in planted)
    assert results["planted"]["neurons"] == {k: 64 for k in planted}  # a quarter of 256 neurons per layer
    # outside P every parameter is the clean model's, bit for bit; inside P the forget set was written
    target, clean = (
        AutoModelForCausalLM.from_pretrained(p) for p in (results["target"], results["planted"]["clean_model"])
    )
    target, clean = target.state_dict(), clean.state_dict()
    for name, value in target.items():
        layer = next((k for k in planted if name.startswith(k.rsplit(".", 2)[0] + ".")), None)
        p = planted[layer] if layer and ".mlp." in name else None
        if p is None:
            assert torch.equal(value, clean[name]), name
        elif name.endswith("down_proj.weight"):
            assert torch.equal(value[:, ~p], clean[name][:, ~p]) and not torch.equal(value[:, p], clean[name][:, p])
        else:  # gate and up rows
            assert torch.equal(value[~p], clean[name][~p]) and not torch.equal(value[p], clean[name][p]), name
    figures = results["localisation"]["overall"]
    assert set(figures) == {"precision", "recall", "jaccard", "precision_at_p", "auroc"}
    assert figures["recall"] == pytest.approx(
        sum(int((critical[k] & planted[k]).sum()) for k in planted) / sum(int(planted[k].sum()) for k in planted)
    )
    # where the update landed (issue 45): each neuron's change over its down column and gate and up rows, from
    # the saved weights, against P as scipy's Mann-Whitney U over (planted x unplanted) pairs
    from scipy.stats import mannwhitneyu

    unlearned = AutoModelForCausalLM.from_pretrained(tmp_path / "unlearned_model").state_dict()
    changes = []
    for layer in planted:
        prefix = layer.rsplit(".", 1)[0]
        squares = (unlearned[f"{layer}.weight"] - target[f"{layer}.weight"]).double().square().sum(0)
        for up in ("gate_proj", "up_proj"):
            squares += (unlearned[f"{prefix}.{up}.weight"] - target[f"{prefix}.{up}.weight"]).double().square().sum(1)
        changes.append(squares.sqrt())
    change, p = torch.cat(changes), torch.cat([planted[k] for k in planted])
    u = mannwhitneyu(change[p].numpy(), change[~p].numpy()).statistic
    update = results["planted"]["update"]["overall"]
    assert update["auroc"] == pytest.approx(u / (int(p.sum()) * int((~p).sum())), abs=1e-12)
    assert update["mass_in_p"] == pytest.approx(float(change[p].square().sum() / change.square().sum()), rel=1e-9)


@pytest.mark.slow
def test_attribute_mode_selects_and_scores_neurons_without_unlearning(cache_dir, tmp_path):
    run_here([*PLANTED, "mode=attribute", "attribution=planted"], tmp_path, cache_dir)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "attribute" and "after" not in results and not (tmp_path / "unlearned_model").exists()
    assert results["localisation"]["overall"] == {  # the oracle finds P exactly
        "precision": 1.0,
        "recall": 1.0,
        "jaccard": 1.0,
        "precision_at_p": 1.0,
        "auroc": 1.0,
    }
    with pytest.raises(SimuError, match=r"^mode=attribute: method 'fo' selects no neurons \(use method=simu\)$"):
        run_here(["mode=attribute", "method=fo"], tmp_path / "fo", cache_dir)


@pytest.mark.slow
def test_an_attack_family_added_from_a_test_config_runs_in_its_place(cache_dir, tmp_path):
    """Adding an attack is one file (tests/toy_attack.py) and one YAML node (tests/conf/robustness/toy.yaml)."""
    others = [f"robustness.families.{name}=null" for name in ("probes", "quantization", "relearning")]
    search = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"
    results = run_here([*SMALL, "method=fo", search, "robustness=toy", *others], tmp_path, cache_dir)
    robustness = results["robustness"]
    # the retain model and the target before unlearning, then the unlearned model
    assert list(robustness) == ["mia_retain_model", "mia_target", "toy_target", "mia", "toy_found", "toy"]
    assert robustness["toy_found"]["before"] == {"shift": 0.5}  # what its `before` returned reached `after`
    assert robustness["toy_target"]["device"]["type"] == "cpu"  # the run's device
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    shifted = [r["exact_match"] for r in rows if r["stage"] == "toy" and r["split"] == "forget"]
    assert len(shifted) == len([r for r in rows if r["stage"] == "after" and r["split"] == "forget"])
    assert robustness["toy"]["forget"]["exact_match"] == pytest.approx(sum(shifted) / len(shifted))


@pytest.mark.slow
def test_a_loss_added_as_docs_extending_says_is_the_runs_objective(cache_dir, tmp_path):
    """docs/extending.md, "A loss": one class (tests/toy_loss.py) and one YAML node (tests/conf/loss/toy.yaml),
    chosen with loss=toy. The run calls it at every step: its terms are logged as unlearn/<name>, and the
    loss it minimised is the one the class returns from them (-forget + 3 retain)."""
    search = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"
    run_here([*SMALL, "method=fo", search, "loss=toy"], tmp_path, cache_dir)
    steps = [row for row in csv.DictReader((tmp_path / "logs" / "metrics.csv").open()) if row.get("unlearn/gap")]
    assert steps, "no step logged the toy loss's terms"
    for row in steps:
        forget, retain = float(row["unlearn/forget"]), float(row["unlearn/retain"])
        assert float(row["unlearn/gap"]) == pytest.approx(forget - retain, rel=1e-5, abs=1e-6)
        assert float(row["unlearn/loss"]) == pytest.approx(-forget + 3.0 * retain, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_selection_rule_added_as_docs_extending_says_chooses_the_runs_mask(cache_dir, tmp_path):
    """docs/extending.md, "A selection rule": one class (tests/toy_selection.py) named by its import path. The
    run masks to, per layer, as many neurons as integrated gradients keeps at t (their scores, cached beside
    the rule's), the highest by the rule's own scores."""
    from simu_lightning.attribution.neurons import critical_neurons

    rule = "toy_selection.SquaredActivation"
    run_here([*SMALL, "method=simu", f"attribution.selection={rule}"], tmp_path, cache_dir)
    summary = json.loads((tmp_path / "attribution" / "critical_neurons.json").read_text())
    assert summary["selection"] == rule
    keys = json.loads((tmp_path / "manifest.json").read_text())["cache_keys"]
    scores = torch.load(cache_dir / "attribution" / keys["attribution_forget"] / "scores.pt")
    ig = torch.load(cache_dir / "attribution" / keys["attribution_forget_integrated_gradients"] / "scores.pt")
    kept = torch.load(tmp_path / "attribution" / "critical_neurons.pt")
    for name, mask in kept.items():
        count = int(critical_neurons(ig, summary["t"])[name].sum())
        assert int(mask.sum()) == count > 0
        top = set(torch.sort(scores[name], descending=True, stable=True).indices[:count].tolist())
        assert set(mask.nonzero().flatten().tolist()) == top


# each objective and the term it logs (logs/metrics.csv: unlearn/<term>)
OBJECTIVES = {
    "simnpo": "simnpo",
    "rmu": "misdirect",
    "idk_nll": "refusal_nll",
    "idk_dpo": "dpo",
    "wga": "wga",
    "undial": "undial",
}


# What lets the direction each objective moves the forget answers be seen in 4 steps (measured, issue 41):
# - a target that knows them: SMALL's 2-epoch target gives them probability 0.005, where an objective that
#   pushes them away has nothing to push (SimNPO's and WGA's forget terms vanish); 40 epochs at 1e-2: 0.66;
# - the objective's own term alone (retain weight 0): under the tuned retain weight 10 the retain term
#   decided the direction (WGA with its forget term's sign flipped still made the forget answers less likely);
# - one learning rate for every pair, 2e-3: at the tuned rates 4 steps of RMU under SIMU moved their NLL by
#   2e-4; at 2e-3 the least moved pair (SIMU with SimNPO) raises it by 0.010 (0.438 -> 0.448).
WHERE_FORGETTING_SHOWS = [
    "model.finetune.epochs=40",
    "model.finetune.lr=1e-2",
    "loss.retain_weight=0",
    "method.optimizer.lr=2e-3",
]
TEACHES_A_REFUSAL = {"idk_nll", "idk_dpo"}
# every objective here but IdkNLL pushes the forget answer away (IdkDPO prefers the refusal *to* it);
# IdkNLL only teaches the refusal
PUSHES_THE_ANSWER_AWAY = set(OBJECTIVES) - {"idk_nll"}


def answer_log_probs(model_dir, pairs: list[tuple[str, str]]) -> list[float]:
    """Per (question, answer): the mean log-probability of the answer's tokens, its EOS included, after the
    prompt, from the model's plain logits, one pair at a time (what `answer_prob` exponentiates)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for question, answer in pairs:
        example = encode_example(tokenizer, PromptFormat(), question, answer, max_length=128)
        ids, labels = torch.tensor(example["input_ids"]), torch.tensor(example["labels"])
        with torch.no_grad():
            log_probs = model(ids[None]).logits[0].log_softmax(-1)
        positions = (labels != IGNORE_INDEX).nonzero().flatten()  # the token at t is predicted at t - 1
        out.append(log_probs[positions - 1, labels[positions]].mean().item())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fo", "so", "simu"])
@pytest.mark.parametrize("loss", sorted(OBJECTIVES))
def test_every_objective_unlearns_end_to_end_under_every_method(loss, method, cache_dir, tmp_path):
    """Method and objective are separate choices: each objective under AdamW, Sophia and SIMU's mask. Each
    moves the forget answers its own way, and each method moves only what it trains."""
    small = [o for o in SMALL if not o.startswith("trainer.max_epochs")]
    layer = ["loss.layer=1"] if loss == "rmu" else []  # the small model has 2 layers
    overrides = [*small, *WHERE_FORGETTING_SHOWS, f"loss={loss}", f"method={method}", "trainer.max_epochs=2", *layer]
    results = run_here(overrides, tmp_path, cache_dir)
    assert results["stopped"]["step"] == 4 and results["method"] == method
    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert f"unlearn/{OBJECTIVES[loss]}" in header
    weights, target = (
        AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (tmp_path / "unlearned_model", results["target"])
    )
    assert all(torch.isfinite(w).all() for w in weights.values())
    moved = {name for name in weights if not torch.equal(weights[name], target[name])}
    if method == "simu":
        # the mask held: every column of a down projection outside its critical neurons is the target's
        critical = torch.load(tmp_path / "attribution" / "critical_neurons.pt")
        assert set(critical) == {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
        for layer_name, neurons in critical.items():
            name = f"{layer_name}.weight"
            assert 0 < int(neurons.sum()) < len(neurons), name  # else "outside the mask" says nothing
            assert torch.equal(weights[name][:, ~neurons], target[name][:, ~neurons]), f"{name}: outside the mask"
            assert not torch.equal(weights[name][:, neurons], target[name][:, neurons]), name
        # and nothing outside SIMU's parameters (attention and down projections) moved
        assert moved == {n for n in weights if ".self_attn." in n or ".mlp.down_proj." in n}
    else:
        # fo and so train every parameter: every one the objective's gradient reaches moved. RMU's loss reads
        # the activations of the last layer (loss.layer=1), so it never reaches the output head.
        assert moved == set(weights) - ({"lm_head.weight"} if loss == "rmu" else set())

    # the forget answers' probability by hand, before (the target) and after (the saved model): the run
    # recorded the same, and each objective moved it its own way
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    forget = [(r["question"], r["answer"]) for r in rows if r["split"] == "forget" and r["stage"] == "after"]
    assert len(forget) == 8  # 1 forget author of 4, 8 questions each
    unlearned = tmp_path / "unlearned_model"
    before, after = (answer_log_probs(d, forget) for d in (results["target"], unlearned))
    prob_before, prob_after = (sum(math.exp(lp) for lp in lps) / len(lps) for lps in (before, after))
    nll_before, nll_after = (-sum(lps) / len(lps) for lps in (before, after))
    assert results["before"]["forget"]["answer_prob"] == pytest.approx(prob_before, rel=1e-4)
    assert results["after"]["forget"]["answer_prob"] == pytest.approx(prob_after, rel=1e-4)
    assert prob_before > 0.5  # a target that knows them: there is something to push away
    if loss in PUSHES_THE_ANSWER_AWAY:
        assert prob_after < prob_before and nll_after > nll_before
    if loss in TEACHES_A_REFUSAL:  # every refusal of the run's list after every forget question: more likely
        refusals = yaml.safe_load((tmp_path / "config.yaml").read_text())["loss"]["refusals"]
        pairs = [(question, refusal) for question, _ in forget for refusal in refusals]
        refusal_before, refusal_after = (answer_log_probs(d, pairs) for d in (results["target"], unlearned))
        assert -sum(refusal_after) / len(pairs) < -sum(refusal_before) / len(pairs)  # a lower mean NLL


BASELINES = {"mia_target", "mia_retain_model", "paraphrase_target", "prefixes_target", "relearn_forget_retain_model"}


@pytest.mark.slow
def test_the_attack_baselines_on_the_target_are_made_once_and_read_as_they_were_made(tmp_path, monkeypatch):
    """The attack stage's `before` (on the target and the retain model) depends on neither the seed nor the
    method: the first run caches it, a run of another seed and method reads it (the retain model is never
    loaded), and what it then reports equals, attack for attack, a run that computes everything afresh."""
    from simu_lightning.pipeline import baselines

    cache = tmp_path / "cache"
    attack = [*SMALL, "robustness=standard", "robustness.families.relearning.steps=2"]
    attack += ["robustness.families.quantization.schemes=[rtn8]"]
    first = run_here([*attack, "method=fo", "seed=0"], tmp_path / "first", cache)
    assert len(list(cache.glob("evaluations/*/attacks.json"))) == 1
    fresh = run_here([*attack, "method=simu", "seed=1", "evaluation.cache_before=false"], tmp_path / "fresh", cache)

    def no_retain_model(*args, **kwargs):
        raise AssertionError("the retain model was loaded: the cached baselines were not read")

    monkeypatch.setattr(baselines, "load_retain_model", no_retain_model)
    read = run_here([*attack, "method=simu", "seed=1"], tmp_path / "read", cache)
    assert {a: read["robustness"][a] for a in BASELINES} == {a: first["robustness"][a] for a in BASELINES}
    assert read["robustness"] == fresh["robustness"]  # the after-attacks too: the reference attack, PrivLeak

    def baseline_rows(run):
        rows = [json.loads(line) for line in (tmp_path / run / "generations.jsonl").read_text().splitlines()]
        return [r for r in rows if r["stage"] in BASELINES]

    assert baseline_rows("read") == baseline_rows("fresh")


@pytest.mark.slow
def test_the_worst_case_relearning_search_finds_at_least_every_grid_points_recovery(tmp_path, cache_dir):
    """robustness.families.relearning.search over a grid of two learning rates (issue 45): each run's fixed
    attack, at one grid point, is computed by the fixed attack's own code (recovery: the forget answers'
    probability on the held-out rows after relearning minus forget_unattacked's); the search, which visits both
    points, reports a
    worst case at least as large as either point's, and as large as the larger of the two (utility margin 1:
    every trial feasible)."""
    grid = "{lr: [1.0e-3, 1.0e-2]}"
    others = [f"robustness.families.{name}=null" for name in ("mia", "probes", "quantization")]
    attack = [*SMALL, "method=fo", "robustness=standard", *others, "robustness.families.relearning.steps=10"]
    attack += ["robustness.families.relearning.benign=false"]
    search = f"robustness.families.relearning.search={{grid: {grid}, utility_margin: 1.0, metric: answer_prob}}"
    fixed, worst = {}, []
    for lr in (1.0e-3, 1.0e-2):
        results = run_here([*attack, f"robustness.families.relearning.lr={lr}", search], tmp_path / str(lr), cache_dir)
        attacked = results["robustness"]["relearn_forget"]
        fixed[lr] = attacked["forget"]["answer_prob"] - attacked["forget_unattacked"]["answer_prob"]
        worst.append(results["robustness"]["relearn_forget_worst"]["search"])
    for found in worst:
        assert found["feasible"] == 2 and {t["lr"] for t in found["trials"]} == set(fixed)
        assert all(found["recovery"] >= recovery - 1e-12 for recovery in fixed.values())
        assert found["recovery"] == pytest.approx(max(fixed.values()), abs=1e-12)
        assert fixed[found["settings"]["lr"]] == pytest.approx(found["recovery"], abs=1e-12)
    assert fixed[1.0e-3] != fixed[1.0e-2]  # (two points that differ: the search had a choice to make)


@pytest.mark.slow
def test_the_worst_case_search_starts_from_the_fixed_attack_and_never_reports_less(tmp_path, cache_dir):
    """An Optuna search (TPE, 3 trials): its first trial is the fixed attack's setting, whose recovery equals the
    fixed attack's own (computed by relearn_forget), so the worst case is at least that."""
    others = [f"robustness.families.{name}=null" for name in ("mia", "probes", "quantization")]
    attack = [*SMALL, "method=fo", "robustness=standard", *others, "robustness.families.relearning.steps=10"]
    attack += ["robustness.families.relearning.benign=false", "robustness.families.relearning.lr=1.0e-3"]
    search = "robustness.families.relearning.search={trials: 3, utility_margin: 1.0, metric: answer_prob}"
    results = run_here([*attack, search], tmp_path, cache_dir)
    attacked, found = results["robustness"]["relearn_forget"], results["robustness"]["relearn_forget_worst"]["search"]
    fixed = attacked["forget"]["answer_prob"] - attacked["forget_unattacked"]["answer_prob"]
    first = found["trials"][0]
    assert (first["lr"], first["steps"], first["forget_fraction"]) == (1.0e-3, 10, 0.25)
    assert first["recovery"] == pytest.approx(fixed, abs=1e-12) and len(found["trials"]) == 3
    assert found["recovery"] >= fixed - 1e-12


@pytest.mark.slow
def test_a_muse_run_unlearns_raw_text_and_reports_muses_criteria(tmp_path, cache_dir):
    """MUSE's data is not on these machines: a folder the test writes in the hub's layout."""
    folder = write_muse_folder(tmp_path / "muse")
    results = run_here(
        [
            "benchmark=muse",
            f"benchmark.path={folder}",
            *TINY,
            "robustness=standard",
            "robustness.families.relearning.steps=2",
        ],
        tmp_path / "run",
        cache_dir,
    )
    assert set(results["after"]) == {"verbmem", "knowmem_forget", "knowmem_retain"}
    assert set(results["scores"]["after"]) == {"verbmem_f", "knowmem_f", "knowmem_r", "mia_min_k_auc"}
    assert results["scores"]["after"]["verbmem_f"] == pytest.approx(results["after"]["verbmem"]["rougeL_f1"])
    mia = results["robustness"]["mia"]["forget_vs_holdout"]
    retain = results["robustness"]["mia_retain_model"]["forget_vs_holdout"]
    assert mia["privleak"] == pytest.approx(
        ((1 - mia["min_k_auc"]) - (1 - retain["min_k_auc"])) / (1 - retain["min_k_auc"] + 1e-10) * 100
    )
    assert (
        "forget" in results["robustness"]["relearn_forget"]
        and "nll" in results["robustness"]["relearn_forget"]["forget"]
    )


def write_harness_task(folder):
    """A local lm-eval task: multiple choice over a JSON Lines file written here, read offline."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green"], "label": 0},
        {"question": "How many legs does a cat have?", "choices": ["two", "four"], "label": 1},
        {"question": "What is frozen water called?", "choices": ["ice", "steam"], "label": 0},
    ]
    (folder / "facts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "toy_facts.yaml").write_text(
        "task: toy_facts\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'facts.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return docs


@pytest.mark.slow
def test_a_local_lm_eval_task_runs_before_and_after_unlearning_offline(cache_dir, tmp_path):
    docs = write_harness_task(tmp_path / "tasks")
    harness = ["evaluation.lm_eval.tasks=[toy_facts]", f"evaluation.lm_eval.include_path={tmp_path / 'tasks'}"]
    results = run_here([*SMALL, "method=fo", *harness], tmp_path / "run", cache_dir)
    scores = results["lm_eval"]
    assert set(scores) == {"before", "after"}
    # the accuracy, recomputed: the choice whose continuation " <choice>" the model finds likelier, per doc
    from transformers import AutoTokenizer

    from simu_lightning.data.formatting import collate
    from simu_lightning.likelihood import answer_log_likelihood

    for stage, folder in (("before", results["target"]), ("after", tmp_path / "run" / "unlearned_model")):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        right = 0
        for doc in docs:
            context = tokenizer(f"Question: {doc['question']}\nAnswer:")["input_ids"]
            likelihoods = []
            for choice in doc["choices"]:
                answer = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
                batch = collate([{"input_ids": context + answer, "labels": [-100] * len(context) + answer}], 0)
                with torch.no_grad():
                    likelihoods.append(float(answer_log_likelihood(model, batch)[0]))
            right += likelihoods.index(max(likelihoods)) == doc["label"]
        assert scores[stage]["toy_facts"]["acc,none"] == pytest.approx(right / len(docs)), stage
