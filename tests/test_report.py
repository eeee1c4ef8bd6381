"""The cross-run report: matched-forgetting interpolation and intervals against hand-computed values,
and the files it writes from run directories laid out as run.py leaves them."""

import csv
import json
import math

from pathlib import Path

import pytest
import yaml

from simu_lightning.evaluation.callback import curve_rows
from simu_lightning.report.__main__ import main
from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.stats import mean_ci
from simu_lightning.unlearning.stopping import Condition

FORGET = [1.0, 0.6, 0.3, 0.0]
RETAIN = [1.0, 0.9, 0.8, 0.5]


def curve(forget=FORGET, retain=RETAIN, every=2, heldout=None):
    """`heldout`: the held-out retain authors' EM at each point (a split of its own), when given."""
    points = [
        {
            "step": i * every,
            "epoch": 0,
            "summary": {"forget": {"exact_match": f}, "retain": {"exact_match": r}},
            "scores": {"model_utility": r / 2},
        }
        for i, (f, r) in enumerate(zip(forget, retain))
    ]
    for point, h in zip(points, heldout or []):
        point["summary"]["retain_heldout"] = {"exact_match": h}
    return points


@pytest.mark.parametrize(
    "level, step, retain",
    [
        (1.0, 0.0, 1.0),  # met by the target itself
        (0.5, 2 + 2 / 3, 0.9 - 0.1 / 3),  # between steps 2 (0.6) and 4 (0.3): a third of the way
        (0.3, 4.0, 0.8),  # met exactly at a point
        (0.1, 4 + 4 / 3, 0.8 - 0.2),  # between 4 (0.3) and 6 (0.0): two thirds of the way
    ],
)
def test_utility_at_a_forget_level_is_interpolated_between_the_points_around_the_crossing(level, step, retain):
    here = at_forget_level(
        curve(), Condition("forget.exact_match", "<=", level), ["retain.exact_match", "model_utility"]
    )
    assert here["step"] == pytest.approx(step)
    assert here["retain.exact_match"] == pytest.approx(retain)
    assert here["model_utility"] == pytest.approx(retain / 2)


def test_a_level_never_reached_gives_nothing():
    assert at_forget_level(curve(), Condition("forget.exact_match", "<=", -0.1), ["retain.exact_match"]) is None


def test_the_first_crossing_counts_even_if_the_run_relearns_later():
    here = at_forget_level(
        curve(forget=[1.0, 0.0, 0.8, 0.0]), Condition("forget.exact_match", "<=", 0.5), ["retain.exact_match"]
    )
    assert here["step"] == pytest.approx(1.0)  # half way from step 0 (1.0) to step 2 (0.0)


def test_mean_and_student_t_interval():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert mean == 2.0 and low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5, 0.5])[1:] == (0.5, 0.5)


def config_of(method, seed, **settings):
    """A resolved configuration as run.py saves it (config.yaml), in miniature."""
    config = {
        "seed": seed,
        "method": {"name": method, "trainable": "all" if method == "fo" else "attention_and_down_proj"},
        "benchmark": {"_target_": "simu_lightning.data.synthetic.load", "num_authors": 20},
        "optim": {"rho": 20.0},
        "robustness": None,
        "paths": {"output_dir": f"/runs/{method}/{seed}"},
        "logger": {"csv": {"save_dir": f"/runs/{method}/{seed}"}},
    }
    for key, value in settings.items():
        node = config
        *parents, last = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


def fake_run(folder, method, seed, forget, retain, commit="c0ffee", heldout=None, **settings):
    folder.mkdir(parents=True)
    points = curve(forget, retain, heldout=heldout)
    after = points[-1]
    results = {
        "method": method,
        "before": points[0]["summary"],
        "after": after["summary"],
        "aggregate": {"before": 0.0, "after": 0.5},
        "scores": {"before": {}, "after": after["scores"]},
        "stopped": {"reason": "condition met", "step": after["step"], "epoch": 0},
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "curve.jsonl").write_text("\n".join(json.dumps(r) for r in curve_rows(points)) + "\n")
    (folder / "config.yaml").write_text(yaml.safe_dump(config_of(method, seed, **settings)))
    (folder / "manifest.json").write_text(json.dumps({"git": {"commit": commit, "dirty": False}}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method={method}", f"seed={seed}"]))


def test_the_report_groups_runs_by_method_and_writes_its_three_files(tmp_path):
    sweep = tmp_path / "multirun"
    fake_run(sweep / "0_fo", "fo", 0, [1.0, 0.6, 0.3, 0.0], [1.0, 0.9, 0.8, 0.5])
    fake_run(sweep / "1_fo", "fo", 1, [1.0, 0.6, 0.3, 0.0], [1.0, 0.7, 0.6, 0.3])
    fake_run(sweep / "2_simu", "simu", 0, [1.0, 0.9, 0.8, 0.7], [1.0, 1.0, 1.0, 1.0])
    assert main([str(sweep)]) == 0
    rows = (sweep / "report.csv").read_text().splitlines()
    # fo at forget EM <= 0.5: retain 0.9 - 0.1/3 and 0.7 - 0.1/3, mean 0.7667; simu never gets there
    fo = next(r for r in rows if r.startswith("matched,fo,forget.exact_match<=0.5,retain.exact_match,"))
    assert float(fo.split(",")[6]) == pytest.approx(0.8 - 0.1 / 3)
    assert fo.split(",")[4:6] == ["2", "2"]
    assert any(r.startswith("matched,simu,forget.exact_match<=0.5,step,1,0,") for r in rows)
    report = (sweep / "report.md").read_text()
    assert "| fo | 2/2 |" in report and "| simu | 0/1 |" in report
    assert (sweep / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_the_held_out_retain_authors_are_read_at_matched_forgetting_and_after(tmp_path):
    """The utility a comparison reports is the held-out retain split's: at forget EM <= 0.5 it is
    interpolated a third of the way from step 2 (0.9) to step 4 (0.6), 0.8; after, 0.4."""
    fake_run(tmp_path / "0_simu", "simu", 0, [1.0, 0.6, 0.3, 0.0], [1.0, 0.9, 0.8, 0.5], heldout=[1.0, 0.9, 0.6, 0.4])
    assert main([str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    at = {(r["table"], r["level"], r["metric"]): float(r["mean"]) for r in rows}
    assert at[("matched", "forget.exact_match<=0.5", "retain_heldout.exact_match")] == pytest.approx(0.8)
    assert at[("after", "", "retain_heldout.exact_match")] == pytest.approx(0.4)
    report = (tmp_path / "report.md").read_text()
    assert report.count("held-out retain EM") >= 2  # the after table and each level's


def test_a_folder_without_runs_is_refused_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no run in it (a run directory holds results.json)"


def test_runs_are_grouped_by_their_resolved_configuration_and_named_by_what_differs(tmp_path):
    from simu_lightning.report.runs import find_runs

    fake_run(tmp_path / "a" / "0_simu", "simu", 0, FORGET, RETAIN)
    fake_run(tmp_path / "a" / "1_fo", "fo", 0, FORGET, RETAIN)
    # a second sweep whose config file tuned another rho, and one with the attack stage: never pooled
    fake_run(tmp_path / "b" / "0_simu", "simu", 0, FORGET, RETAIN, **{"optim.rho": 1.2})
    fake_run(tmp_path / "c" / "0_simu", "simu", 0, FORGET, RETAIN, robustness={"mia": {"k": 0.4}})
    # the method's own settings show only where they differ within a method; a value most groups share
    # (rho 20, no attack stage) is left out of the names, so a control is named by what it changes
    fake_run(tmp_path / "d" / "0_simu", "simu", 0, FORGET, RETAIN, **{"method.trainable": "down_proj"})
    assert sorted(r.group for r in find_runs([tmp_path])) == [
        "fo method.trainable=all",
        "simu method.trainable=attention_and_down_proj",
        "simu method.trainable=attention_and_down_proj optim.rho=1.2",
        "simu method.trainable=attention_and_down_proj robustness=on",
        "simu method.trainable=down_proj",
    ]
    assert main([str(tmp_path), "--out", str(tmp_path / "all")]) == 0
    assert (
        "has the value most groups share: `optim.rho=20.0`, `robustness=null`."
        in (tmp_path / "all" / "report.md").read_text()
    )
    # seeds, paths and loggers differ between the seeds of one experiment: one group
    for seed in (1, 2):
        fake_run(tmp_path / "a" / f"{seed + 1}_simu", "simu", seed, FORGET, RETAIN)
    assert main([str(tmp_path / "a")]) == 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Seeds per group: fo: 0; simu: 0, 1, 2." in report
    assert "they differ in: `method.name`, `method.trainable`." in report


def test_a_setting_added_since_with_null_pools_with_runs_that_predate_it(tmp_path):
    """A run whose configuration lacks a setting (made before attribution.head_t existed) and one with it
    null are one group; a value other than null is still told apart, and named."""
    from simu_lightning.report.runs import find_runs

    fake_run(tmp_path / "old" / "0_simu", "simu", 0, FORGET, RETAIN)
    fake_run(tmp_path / "new" / "1_simu", "simu", 1, FORGET, RETAIN, **{"method.head_t": None})
    assert sorted(r.group for r in find_runs([tmp_path])) == ["simu", "simu"]
    fake_run(tmp_path / "new" / "2_simu", "simu", 2, FORGET, RETAIN, **{"method.head_t": 0.5})
    assert sorted(r.group for r in find_runs([tmp_path])) == [
        "simu method.head_t=0.5",
        "simu method.head_t=null",
        "simu method.head_t=null",
    ]
    # a node only some runs have (unlearning/requests=sequential) is named once, not by each entry
    fake_run(
        tmp_path / "seq" / "0_simu", "simu", 0, FORGET, RETAIN, **{"method.head_t": None, "requests": {"count": 5}}
    )
    assert "simu method.head_t=null requests=on" in {r.group for r in find_runs([tmp_path])}


def test_runs_with_probe_points_pool_with_runs_whose_every_point_is_complete(tmp_path):
    """evaluation.during.full_around changes which points between the levels are complete, not a value at
    a level: a seed made with it and one made before it existed are one group."""
    from simu_lightning.report.runs import find_runs

    fake_run(tmp_path / "old" / "0_fo", "fo", 0, FORGET, RETAIN)
    at = {"evaluation.during.full_around": "forget.exact_match<=0.5,0.2,0.1"}
    fake_run(tmp_path / "new" / "1_fo", "fo", 1, FORGET, RETAIN, **at)
    assert [r.group for r in find_runs([tmp_path])] == ["fo", "fo"]


def test_a_run_given_twice_counts_once(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(3):
        fake_run(sweep / f"{seed}_simu", "simu", seed, FORGET, [1.0, 0.9, 0.8, 0.5 + seed / 10])
    assert main([str(sweep), str(sweep / "0_simu"), str(tmp_path / "sweep" / ".." / "sweep" / "1_simu")]) == 0
    row = next(r for r in csv.DictReader((sweep / "report.csv").open()) if r["metric"] == "retain.exact_match")
    mean, low, high = mean_ci([0.5, 0.6, 0.7])
    assert int(row["n"]) == 3 and float(row["ci_low"]) == pytest.approx(low)


def test_a_seed_repeated_in_one_group_is_refused_in_one_line(tmp_path, capsys):
    fake_run(tmp_path / "monday" / "0_simu", "simu", 0, FORGET, RETAIN)
    fake_run(tmp_path / "tuesday" / "0_simu", "simu", 0, FORGET, RETAIN)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: group 'simu': seed 0 twice, in {tmp_path / 'monday' / '0_simu'} and {tmp_path / 'tuesday' / '0_simu'} "
        "(the same settings run twice: give the report one of them)"
    )


def test_a_group_that_mixes_commits_is_pointed_out(tmp_path, capsys):
    fake_run(tmp_path / "0_simu", "simu", 0, FORGET, RETAIN, commit="aaa")
    fake_run(tmp_path / "1_simu", "simu", 1, FORGET, RETAIN, commit="bbb")
    assert main([str(tmp_path)]) == 0
    assert "warning: group 'simu' mixes git commits aaa, bbb (manifest.json)" in capsys.readouterr().err
    assert "Warning: group simu mixes git commits aaa, bbb." in (tmp_path / "report.md").read_text()


def test_the_robustness_table_gives_each_attack_its_mean_and_interval_over_seeds(tmp_path):
    for seed, (recovered, auc) in enumerate(((0.4, 0.9), (0.6, 0.7), (0.5, 0.8))):
        run = tmp_path / f"{seed}_simu"
        fake_run(run, "simu", seed, FORGET, RETAIN)
        results = json.loads((run / "results.json").read_text())
        results["robustness"] = {
            "rtn4": {"forget": {"exact_match": recovered}, "retain": {"exact_match": 0.9}},
            "mia": {"forget_vs_holdout": {"loss_auc": auc, "zlib_auc": 0.5}},
        }
        (run / "results.json").write_text(json.dumps(results))
    fake_run(tmp_path / "3_fo", "fo", 0, FORGET, RETAIN)  # ran without the attack stage: no robustness rows
    assert main([str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    rtn4 = next(
        r for r in rows if r["table"] == "robustness" and r["level"] == "rtn4" and r["metric"] == "forget.exact_match"
    )
    mean, low, high = mean_ci([0.4, 0.6, 0.5])
    assert (rtn4["group"], int(rtn4["n"])) == ("simu", 3)
    assert float(rtn4["mean"]) == pytest.approx(mean) and float(rtn4["ci_low"]) == pytest.approx(low)
    assert not any(r["table"] == "robustness" and r["group"] == "fo" for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "## Robustness: simu (3 runs)" in report and "## Robustness: fo" not in report
    assert f"| rtn4 | forget | {mean:.3f} [{low:.3f}, {high:.3f}] |" in report
    assert "| mia | forget_vs_holdout |" not in report  # the AUCs have their own table
    auc_mean, auc_low, auc_high = mean_ci([0.9, 0.7, 0.8])
    assert f"| mia | {auc_mean:.3f} [{auc_low:.3f}, {auc_high:.3f}] | 0.500 [0.500, 0.500] |" in report


def test_a_report_rebuilt_from_the_archived_small_files_gives_the_same_tables(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        fake_run(sweep / f"{seed}_simu", "simu", seed, FORGET, [1.0, 0.9, 0.8, 0.5 + seed / 10])
        (sweep / f"{seed}_simu" / "generations.jsonl").write_text("{}\n")  # large: not archived
    assert main([str(sweep), "--archive", str(tmp_path / "kept")]) == 0
    assert sorted(p.name for p in (tmp_path / "kept" / "0_simu").iterdir()) == [
        ".hydra",
        "config.yaml",
        "curve.jsonl",
        "manifest.json",
        "results.json",
    ]
    assert main([str(tmp_path / "kept"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.csv").read_text() == (sweep / "report.csv").read_text()


def attribution_run(folder, seed, precision):
    """A mode=attribute run on a planted target: a mask and its localisation figures, no unlearning."""
    folder.mkdir(parents=True)
    figures = {"precision": precision, "recall": 0.5, "jaccard": 0.4, "precision_at_p": 0.6, "auroc": 0.9}
    results = {"mode": "attribute", "method": "simu", "localisation": {"overall": figures, "layers": {"0": figures}}}
    (folder / "results.json").write_text(json.dumps(results))
    config = config_of("simu", seed)
    config["benchmark"]["planted"] = {"seed": seed}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_report_of_attributions_alone_gives_the_localisation_table_and_no_unlearning_tables(tmp_path):
    sweep = tmp_path / "multirun"
    attribution_run(sweep / "0_simu", 0, 0.8)
    attribution_run(sweep / "1_simu", 1, 0.6)
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "## After unlearning" not in report and "matched forgetting" not in report
    assert "pareto.png" not in report and not (sweep / "pareto.png").exists()
    tables = {line.split(",")[0] for line in (sweep / "report.csv").read_text().splitlines()[1:]}
    assert "matched" not in tables and "localisation" in tables  # no empty matched rows in the CSV either
    assert "Seeds per group (seed, benchmark.planted.seed): simu: (0, 0), (1, 1)." in report
    half = 12.706205 * math.sqrt(0.02) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n), sd of (0.8, 0.6)
    assert f"| simu | 2 | 0.700 [{0.7 - half:.3f}, {0.7 + half:.3f}] |" in report


def test_a_value_only_half_the_groups_hold_stays_in_every_name(tmp_path):
    from simu_lightning.report.runs import find_runs

    fake_run(tmp_path / "a" / "0_simu", "simu", 0, FORGET, RETAIN, **{"optim.rho": 20.0})
    fake_run(tmp_path / "b" / "0_simu", "simu", 0, FORGET, RETAIN, **{"optim.rho": 1.2})
    assert sorted(r.group for r in find_runs([tmp_path])) == ["simu optim.rho=1.2", "simu optim.rho=20.0"]


def test_the_requests_table_follows_each_requests_forget_score_over_the_later_requests(tmp_path):
    """After request k, request j's rows are the `forget` split of request j's own evaluation and a
    `request_<j>` split of every later one; each figure is a mean and Student-t interval over seeds."""
    forgotten = {0: (0.1, 0.3), 1: (0.2, 0.5)}  # (request 1 after request 1, request 1 after request 2)
    for seed, (own, later) in forgotten.items():
        run = tmp_path / f"{seed}_simu"
        fake_run(run, "simu", seed, FORGET, RETAIN)
        results = json.loads((run / "results.json").read_text())
        results["requests"] = [
            {"request": 1, "after": {"forget": {"exact_match": own}, "retain": {"exact_match": 0.9 - seed / 10}}},
            {
                "request": 2,
                "after": {
                    "forget": {"exact_match": 0.0},
                    "request_1": {"exact_match": later},
                    "retain": {"exact_match": 0.8},
                },
            },
        ]
        (run / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path), "--at", "forget.exact_match<=0.5", "--y", "retain.exact_match"]) == 0
    rows = [r for r in csv.DictReader((tmp_path / "report.csv").open()) if r["table"] == "requests"]
    figure = {(r["level"], r["metric"]): r for r in rows}
    assert set(figure) == {
        ("after request 1", "retain.exact_match"),
        ("after request 1", "request_1.exact_match"),
        ("after request 2", "retain.exact_match"),
        ("after request 2", "request_1.exact_match"),
        ("after request 2", "request_2.exact_match"),
    }
    mean, low, high = mean_ci([0.3, 0.5])
    came_back = figure[("after request 2", "request_1.exact_match")]
    assert float(came_back["mean"]) == pytest.approx(0.4) and float(came_back["ci_low"]) == pytest.approx(low)
    assert float(figure[("after request 1", "retain.exact_match")]["mean"]) == pytest.approx(0.85)
    report = (tmp_path / "report.md").read_text()
    assert "| | retain EM | request 1 forget EM | request 2 forget EM |" in report
    assert (
        f"| after request 2 | 0.800 [0.800, 0.800] | {mean:.3f} [{low:.3f}, {high:.3f}] | 0.000 [0.000, 0.000] |"
        in report
    )
    assert (tmp_path / "requests.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_that_differ_under_a_node_other_runs_lack_are_told_apart(tmp_path, capsys):
    """Next to a run without continual requests, masks=per_request and masks=union are two groups (not one
    `unlearning.requests=on` group refused for its repeated seeds); so are relearning.steps=30 and =2 next to
    a run without the attack stage."""
    from simu_lightning.report.runs import find_runs

    requests, stop = {"count": 2, "by": "author"}, {"unlearning.stop_when": "forget.exact_match<=0.1"}
    fake_run(tmp_path / "a" / "0_simu", "simu", 0, FORGET, RETAIN, **stop, **{"unlearning.requests": None})
    for masks in ("per_request", "union"):
        in_turn = {"unlearning.requests": requests | {"masks": masks}}
        fake_run(tmp_path / masks / "0_simu", "simu", 0, FORGET, RETAIN, **stop, **in_turn)
    assert sorted(r.group for r in find_runs([tmp_path])) == [
        "simu unlearning.requests.masks=per_request",
        "simu unlearning.requests.masks=union",
        "simu unlearning.requests=null",
    ]
    assert main([str(tmp_path)]) == 0, capsys.readouterr().err
    # a run whose configuration lacks the node altogether is named the same way
    (tmp_path / "a" / "0_simu" / "config.yaml").write_text(yaml.safe_dump(config_of("simu", 0, **stop)))
    assert "simu unlearning.requests=null" in {r.group for r in find_runs([tmp_path])}

    attacks = tmp_path / "attacks"
    fake_run(attacks / "none" / "1_simu", "simu", 1, FORGET, RETAIN)  # robustness: null
    for steps in (30, 2):
        relearning = {"robustness": {"families": {"relearning": {"steps": steps, "lr": 1e-5}}}}
        fake_run(attacks / str(steps) / "1_simu", "simu", 1, FORGET, RETAIN, **relearning)
    assert sorted(r.group for r in find_runs([attacks])) == [
        "simu robustness.families.relearning.steps=2",
        "simu robustness.families.relearning.steps=30",
        "simu robustness=null",
    ]
    assert main([str(attacks)]) == 0, capsys.readouterr().err


# a hand-worked paired example: arm and reference at three shared seeds
ARM = [0.50, 0.60, 0.70]
REFERENCE = [0.60, 0.68, 0.82]  # differences -0.10, -0.08, -0.12
T_975_2 = 4.302653  # Student's t, 97.5% quantile, 2 degrees of freedom


def hand_worked():
    """The paired differences' mean and 95% half-width, with plain arithmetic."""
    diffs = [a - b for a, b in zip(ARM, REFERENCE)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    return diffs, mean, T_975_2 * sd / math.sqrt(3)


def test_a_paired_difference_against_a_hand_worked_example_and_scipys_tests():
    from scipy import stats

    from simu_lightning.report.stats import paired

    diffs, mean, half = hand_worked()
    assert mean == pytest.approx(-0.10) and half == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    found = paired(ARM, REFERENCE)
    assert (found.mean, found.low, found.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-6)
    assert found.p == pytest.approx(stats.ttest_rel(ARM, REFERENCE).pvalue)
    assert (found.ahead, found.behind, found.seeds) == (0, 3, "3 of 3 behind")
    assert found.verdict == "behind" and found.tost_p is None  # no margin: never "level"
    # TOST at margin 0.2: both one-sided tests of the differences reject (t = 8.66 and -25.98, 2 dof)
    wide = paired(ARM, REFERENCE, margin=0.2)
    lower = stats.ttest_1samp(diffs, -0.2, alternative="greater").pvalue
    upper = stats.ttest_1samp(diffs, 0.2, alternative="less").pvalue
    assert lower == pytest.approx(stats.t.sf((mean + 0.2) / (0.02 / math.sqrt(3)), 2))
    assert wide.tost_p == pytest.approx(max(lower, upper)) and wide.tost_p < 0.05
    assert wide.verdict == "level"
    # at margin 0.1 the mean sits on the margin: t = 0, p = 0.5, so the interval decides
    narrow = paired(ARM, REFERENCE, margin=0.1)
    assert narrow.tost_p == pytest.approx(0.5) and narrow.verdict == "behind"
    # an interval that holds 0: "no difference detected"; the seeds still point each way
    mixed = paired([0.5, 0.6, 0.7], [0.6, 0.5, 0.8])  # -0.1, +0.1, -0.1
    assert mixed.verdict == "no difference detected" and mixed.seeds == "2 of 3 behind, 1 ahead"
    assert mixed.p == pytest.approx(stats.ttest_rel([0.5, 0.6, 0.7], [0.6, 0.5, 0.8]).pvalue)


def test_groups_without_shared_seeds_get_welch_and_unequal_seed_sets_pair_on_the_shared_ones():
    from scipy import stats

    from simu_lightning.report.stats import difference

    # Welch by hand: means 2 and 4, variances 1 and 2, so se^2 = 1/3 + 2/2 and dof = (4/3)^2 / ((1/3)^2/2 + 1)
    first, second = {0: 1.0, 1: 2.0, 2: 3.0}, {5: 3.0, 6: 5.0}
    found = difference(first, second)
    se, dof = math.sqrt(4 / 3), (4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1)
    half = stats.t.ppf(0.975, dof) * se
    assert found.pairing == "Welch" and found.described == "Welch, 3 and 2 runs" and found.seeds == ""
    assert (found.mean, found.low, found.high) == pytest.approx((-2.0, -2.0 - half, -2.0 + half))
    assert found.p == pytest.approx(stats.ttest_ind([1, 2, 3], [3, 5], equal_var=False).pvalue)
    # seeds 0-2 against 1-3: the two shared seeds are paired, the others left out
    found = difference({0: 0.9, 1: 0.5, 2: 0.7}, {1: 0.6, 2: 0.9, 3: 0.1})
    diffs = [0.5 - 0.6, 0.7 - 0.9]
    half = 12.706205 * math.sqrt(sum((d + 0.15) ** 2 for d in diffs)) / math.sqrt(2)  # t(0.975, 1), sd, n = 2
    assert found.described == "paired on 2 shared seeds (3 and 3 runs)" and found.seeds == "2 of 2 behind"
    assert (found.mean, found.low, found.high) == pytest.approx((-0.15, -0.15 - half, -0.15 + half))


def test_the_report_pairs_arms_by_seed_and_says_level_only_under_a_margin(tmp_path, capsys):
    """At forget EM 0.3 (met at the third point) each run's retain EM is its third value: simu minus fo is
    the hand-worked example, paired by seed; a group with other seeds gets Welch's interval."""
    for seed, (arm, reference) in enumerate(zip(ARM, REFERENCE)):
        fake_run(tmp_path / f"{seed}_simu", "simu", seed, FORGET, [1.0, 0.9, arm, 0.4])
        fake_run(tmp_path / f"{seed}_fo", "fo", seed, FORGET, [1.0, 0.9, reference, 0.4])
    for seed in (7, 8):  # another optimiser on other seeds: nothing to pair
        fake_run(tmp_path / f"{seed}_so", "so", seed, FORGET, [1.0, 0.9, 0.55 + seed / 100, 0.4])
    at = ["--at", "forget.exact_match<=0.3", "--y", "retain.exact_match"]
    assert main([str(tmp_path), *at]) == 0, capsys.readouterr().err
    _, mean, half = hand_worked()
    report = (tmp_path / "report.md").read_text()
    assert "## Differences at matched forgetting: simu minus each group" in report
    assert (
        f"| fo | forget.exact_match<=0.3 | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] "
        "| paired, 3 seeds | 3 of 3 behind | behind |"
    ) in report
    # simu 0.5, 0.6, 0.7 against so 0.62, 0.63: Welch
    assert "| so | forget.exact_match<=0.3 | -0.025 [" in report
    assert "| Welch, 3 and 2 runs | – | no difference detected |" in report
    rows = [r for r in csv.DictReader((tmp_path / "report.csv").open()) if r["table"] == "compared"]
    fo = next(r for r in rows if r["versus"] == "fo" and r["metric"] == "retain.exact_match")
    assert (fo["pairs"], fo["ahead"], fo["behind"], fo["verdict"]) == ("3", "0", "3", "behind")
    assert float(fo["ci_low"]) == pytest.approx(mean - half, abs=1e-6)
    # with a margin the TOST decides "level" (0.2 holds, 0.1 does not)
    assert main([str(tmp_path), *at, "--margin", "0.2"]) == 0
    assert "| paired, 3 seeds | 3 of 3 behind | level |" in (tmp_path / "report.md").read_text()
    assert main([str(tmp_path), *at, "--margin", "0.1"]) == 0
    assert "| paired, 3 seeds | 3 of 3 behind | behind |" in (tmp_path / "report.md").read_text()
    assert main([str(tmp_path), *at, "--compare", "fo"]) == 0
    assert "## Differences at matched forgetting: fo minus each group" in (tmp_path / "report.md").read_text()
    capsys.readouterr()
    assert main([str(tmp_path), *at, "--margin", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --margin must be a positive number, got -1.0"


def with_results(run, **entries):
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps(results | entries))


def test_sophia_runs_with_a_median_win_rate_outside_its_range_are_flagged(tmp_path, capsys):
    for seed, rate in enumerate((0.05, 0.3, 0.62)):
        fake_run(tmp_path / f"{seed}_simu", "simu", seed, FORGET, RETAIN)
        with_results(tmp_path / f"{seed}_simu", sophia={"median_win_rate": rate, "steps": 6})
    fake_run(tmp_path / "0_fo", "fo", 0, FORGET, RETAIN)  # AdamW: no win rate
    assert main([str(tmp_path)]) == 0
    assert "warning: 2 of 3 Sophia runs have a median win rate outside 0.1-0.5" in capsys.readouterr().err
    report = (tmp_path / "report.md").read_text()
    assert "2 of 3 Sophia runs have a median win rate outside 0.1-0.5." in report
    group = "simu"
    assert f"| {group} | 0 | 0_simu | 0.050 | **outside** |" in report
    assert f"| {group} | 1 | 1_simu | 0.300 |  |" in report
    assert f"| {group} | 2 | 2_simu | 0.620 | **outside** |" in report
    flags = {r["run"]: r["flag"] for r in csv.DictReader((tmp_path / "report.csv").open()) if r["table"] == "runs"}
    assert flags == {"0_simu": "outside 0.1-0.5", "1_simu": "", "2_simu": "outside 0.1-0.5"}


def test_each_groups_trained_parameters_and_attention_share_are_stated(tmp_path):
    draws = {"simu": [(1000, 600, 400), (1020, 600, 420)], "fo": [(5000, 1000, 1000), (5000, 1000, 1000)]}
    for method, counts in draws.items():
        for seed, (total, attention, down) in enumerate(counts):
            fake_run(tmp_path / f"{seed}_{method}", method, seed, FORGET, RETAIN)
            trained = {"total": total, "attention": attention, "down_proj": down}
            with_results(tmp_path / f"{seed}_{method}", trained_parameters=trained)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    shares = (600 / 1000 + 600 / 1020) / 2
    assert "| group | runs | trained parameters | attention | down_proj | attention share |" in report
    assert f"| simu | 2 | 1,010 (1,000-1,020) | 600 | 410 (400-420) | {shares:.3f} ({600 / 1020:.3f}-0.600) |" in report
    assert "| fo | 2 | 5,000 | 1,000 | 1,000 | 0.200 |" in report
    rows = {(r["group"], r["metric"]): r for r in csv.DictReader((tmp_path / "report.csv").open())}
    share = rows[("simu", "trained_parameters.attention_share")]
    assert float(share["mean"]) == pytest.approx(shares) and share["n"] == "2"


def test_a_run_whose_seed_tuned_its_settings_is_not_pooled_with_runs_that_report_them(tmp_path, capsys):
    """tuned.seeds names the seeds that chose a tuned file's values: such a run and the held-out seeds are
    refused as one group; --exclude-tuning leaves it out. tuned.seeds is not part of a group's identity."""
    from simu_lightning.report.runs import find_runs

    for seed in range(3):
        fake_run(tmp_path / f"{seed}_simu", "simu", seed, FORGET, RETAIN, **{"tuned.seeds": [0]})
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: group 'simu' pools tuning runs with the runs that report their settings: seed 0 tuned them "
        f"(tuned.seeds, in {tmp_path / '0_simu'}), seeds 1, 2 report them; pass --exclude-tuning to leave the "
        "tuning runs out, or give the report the held-out runs alone"
    )
    assert main([str(tmp_path), "--exclude-tuning"]) == 0
    assert "Left out 1 tuning run(s), whose seed tuned their settings (tuned.seeds): seed 0." in capsys.readouterr().err
    report = (tmp_path / "report.md").read_text()
    assert "Seeds per group: simu: 1, 2." in report and "Left out 1 tuning run(s)" in report
    # a run made before the file recorded its seeds (or re-tuned on other seeds) groups with them
    fake_run(tmp_path / "3_simu", "simu", 3, FORGET, RETAIN)
    fake_run(tmp_path / "4_simu", "simu", 4, FORGET, RETAIN, **{"tuned.seeds": [0, 1]})
    assert {r.group for r in find_runs([tmp_path], exclude_tuning=True)} == {"simu"}
    assert sorted(r.seed for r in find_runs([tmp_path], exclude_tuning=True)) == [2, 3, 4]
    # runs without tuned.seeds are accepted as before; a group of tuning runs alone is reported, and said so
    tuning = tmp_path / "search"
    fake_run(tuning / "0_fo", "fo", 0, FORGET, RETAIN, **{"tuned.seeds": [0]})
    assert main([str(tuning)]) == 0
    assert "warning: Group fo holds only tuning runs (seed 0, in tuned.seeds)" in capsys.readouterr().err


SMOLLM2 = Path(__file__).resolve().parents[1] / "docs" / "results" / "smollm2"


def test_the_committed_smollm2_runs_pair_simu_and_fo_by_seed_and_flag_the_win_rates(tmp_path, capsys):
    """The archived SmolLM2 study: SIMU - FO at forget ROUGE-L 0.4 in retain ROUGE-L, paired over seeds 0-2
    (recomputed here from each run's trajectory with plain arithmetic), and 9 of the 15 Sophia runs outside
    0.1-0.5 (0.52-0.64, one at 0.097, and 0.98-0.999 for the down projections alone)."""
    from simu_lightning.report.runs import find_runs

    at = ["--at", "forget.rougeL_recall<=0.4,0.3,0.2", "--y", "retain.rougeL_recall"]
    folders = [str(SMOLLM2 / "sweep1"), str(SMOLLM2 / "sweep2")]
    assert main([*folders, "--out", str(tmp_path), *at]) == 0
    assert "warning: 9 of 15 Sophia runs have a median win rate outside 0.1-0.5" in capsys.readouterr().err
    runs = find_runs(folders)
    level = Condition("forget.rougeL_recall", "<=", 0.4)
    retain = {
        (r.method, r.seed): at_forget_level(r.curve, level, ["retain.rougeL_recall"])["retain.rougeL_recall"]
        for r in runs
        if r.method in ("simu", "fo") and "robustness=on" in r.group
    }
    diffs = [retain[("simu", s)] - retain[("fo", s)] for s in range(3)]
    mean = sum(diffs) / 3
    half = T_975_2 * math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    assert mean == pytest.approx(-0.115, abs=5e-4) and all(d < 0 for d in diffs)
    report = (tmp_path / "report.md").read_text()
    assert (
        "| fo method.trainable=all robustness=on | forget.rougeL_recall<=0.4 | "
        f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | paired, 3 seeds | 3 of 3 behind | behind |"
    ) in report
    assert "| fo method.trainable=all robustness=on | forget.rougeL_recall<=0.4 | -0.115 [-0.147, -0.083] |" in report
