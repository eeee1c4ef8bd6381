"""The cross-run report: matched-forgetting interpolation and intervals against hand-computed values,
and the files it writes from run directories laid out as run.py leaves them."""

import csv
import json
import math

import pytest
import yaml

from simu_lightning.evaluation.callback import curve_rows
from simu_lightning.report.__main__ import main
from simu_lightning.report.matched import at_forget_level
from simu_lightning.report.stats import mean_ci
from simu_lightning.unlearning.stopping import Condition

FORGET = [1.0, 0.6, 0.3, 0.0]
RETAIN = [1.0, 0.9, 0.8, 0.5]


def curve(forget=FORGET, retain=RETAIN, every=2):
    return [
        {
            "step": i * every,
            "epoch": 0,
            "summary": {"forget": {"exact_match": f}, "retain": {"exact_match": r}},
            "scores": {"model_utility": r / 2},
        }
        for i, (f, r) in enumerate(zip(forget, retain))
    ]


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


def fake_run(folder, method, seed, forget, retain, commit="c0ffee", **settings):
    folder.mkdir(parents=True)
    points = curve(forget, retain)
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
