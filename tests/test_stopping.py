"""The stopping rule and the evaluation during unlearning, driven by a scripted sequence of evaluations."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from simu_lightning.utils.errors import SimuError
from simu_lightning.evaluation import callback as evaluation_callback
from simu_lightning.evaluation.metrics import unlearning_aggregate
from simu_lightning.evaluation.probe import probe_plan, resolved_full_around, snapshot, weights_of
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation
from simu_lightning.optim.hybrid import FirstZerothHybrid
from simu_lightning.pipeline.stopping import StopWhen
from simu_lightning.unlearning.stopping import ForgetLevels, StoppingRule

SETTINGS = EvaluationSettings(max_length=32, max_new_tokens=4, batch_size=2)


class Scripted:
    """An evaluator that returns forget EM from the script, one value per call (before first)."""

    settings = SETTINGS
    benchmark = SimpleNamespace(aggregate=unlearning_aggregate)  # the aggregate the benchmark's config names

    def __init__(self, forget_em: list[float]):
        self.script = iter(forget_em)

    def __call__(self, model, stage, settings=None, benchmark=None):
        em = next(self.script)
        summary = {
            "forget": {"exact_match": em, "rougeL_recall": em},
            "retain": {"exact_match": 0.9, "rougeL_recall": 0.95},
        }
        return Evaluation(
            summary, {"model_utility": 0.5}, [{"split": "forget", "stage": stage, "index": 0, "exact_match": em}]
        )


def fit_callbacks(evaluator, tmp_path, rule: StoppingRule | None, **settings):
    """The evaluation callback and the stopping rule's, as pipeline/unlearn.py pairs them."""
    evaluations = evaluation_callback.UnlearningEvaluation(
        evaluator, tmp_path, ends_at=rule.holds if rule is not None else None, **settings
    )
    return evaluations, StopWhen(rule, evaluations)


def hook(name: str, callbacks, *args) -> None:
    """A fit's hook, called on its callbacks in their order."""
    for callback in callbacks:
        getattr(callback, name)(*args)


def drive(monkeypatch, tmp_path, forget_em, rule, steps, every=1, optimizer=None):
    """Run the callbacks' hooks as a fit would: before, then a step at a time until it stops (`optimizer`:
    the fit's, whose step count follows the fit's)."""
    callbacks = fit_callbacks(Scripted(forget_em), tmp_path, StoppingRule.parse(rule), every_n_steps=every)
    trainer = SimpleNamespace(
        global_step=0, current_epoch=0, should_stop=False, loggers=[], is_global_zero=True, ckpt_path=None
    )
    if optimizer is not None:
        trainer.optimizers = [optimizer]
    module = SimpleNamespace(model=None)
    hook("on_fit_start", callbacks, trainer, module)
    hook("on_train_start", callbacks, trainer, module)
    while not trainer.should_stop and trainer.global_step < steps:
        trainer.global_step += 1
        trainer.current_epoch = (trainer.global_step - 1) // 2
        if optimizer is not None:
            optimizer.steps = trainer.global_step
        hook("on_train_batch_end", callbacks, trainer, module, None, None, 0)
    hook("on_fit_end", callbacks, trainer, module)
    return *callbacks, trainer


def test_unlearning_stops_at_the_first_point_that_meets_the_condition(monkeypatch, tmp_path):
    # before 1.0, then steps 1..: 0.8, 0.5, 0.1 (meets <= 0.1), 0.0 (never reached)
    cb, stop, trainer = drive(monkeypatch, tmp_path, [1.0, 0.8, 0.5, 0.1, 0.0], "forget.exact_match<=0.1", steps=10)
    assert trainer.global_step == 3 and trainer.should_stop
    assert stop.stopped == {"reason": "condition met", "step": 3, "epoch": 1}
    assert cb.after.summary["forget"]["exact_match"] == 0.1  # the model at the stop is "after"
    assert {r["stage"] for r in cb.after.rows} == {"after"}
    assert [p["step"] for p in cb.points] == [0, 1, 2, 3]


def test_the_hybrid_finishes_its_zeroth_order_round_after_the_rule_holds(monkeypatch, tmp_path):
    """2 first-order steps then 2 zeroth-order ones, in turn: the rule holds at step 3 (the first zeroth-order
    round's first step), so the fit runs on to step 4, the round's end, and "after" is the model there."""
    hybrid = FirstZerothHybrid([torch.nn.Parameter(torch.zeros(2))], steps_each=2)
    em = [1.0, 0.8, 0.5, 0.1, 0.05, 0.0]
    cb, stop, trainer = drive(monkeypatch, tmp_path, em, "forget.exact_match<=0.1", steps=10, optimizer=hybrid)
    assert trainer.global_step == 4 and trainer.should_stop
    assert stop.stopped == {"reason": "condition met", "step": 4, "epoch": 1, "met_at": {"step": 3, "epoch": 1}}
    assert cb.after.summary["forget"]["exact_match"] == 0.05
    # met at the end of a zeroth-order round (step 4 of 2 + 2), it stops there
    em = [1.0, 0.8, 0.5, 0.3, 0.1, 0.0]
    _, stop, trainer = drive(monkeypatch, tmp_path / "b", em, "forget.exact_match<=0.1", steps=10, optimizer=hybrid)
    assert trainer.global_step == 4 and stop.stopped == {"reason": "condition met", "step": 4, "epoch": 1}


def test_a_rule_never_met_runs_the_budget_and_says_so(monkeypatch, tmp_path):
    cb, stop, trainer = drive(monkeypatch, tmp_path, [1.0, 0.9, 0.8, 0.7, 0.6], "forget.exact_match<=0.1", steps=4)
    assert trainer.global_step == 4 and not trainer.should_stop
    assert stop.stopped == {"reason": "budget exhausted", "step": 4, "epoch": 1}
    assert cb.after.summary["forget"]["exact_match"] == 0.6


def test_points_between_evaluations_are_skipped_and_the_end_is_evaluated(monkeypatch, tmp_path):
    # every 2 steps over 5 steps: points at 0, 2, 4 and the after evaluation at 5
    cb, stop, _ = drive(monkeypatch, tmp_path, [1.0, 0.9, 0.8, 0.7], None, steps=5, every=2)
    assert [p["step"] for p in cb.points] == [0, 2, 4, 5]
    assert stop.stopped["reason"] == "budget exhausted" and cb.after.summary["forget"]["exact_match"] == 0.7
    rows = (tmp_path / "curve.jsonl").read_text().splitlines()
    assert len(rows) == 4 * (2 * 2 + 2)  # 4 points x (2 splits x 2 metrics + model utility + aggregate)


def test_a_resumed_run_that_had_stopped_unlearns_no_further(monkeypatch, tmp_path):
    callbacks = drive(monkeypatch, tmp_path, [1.0, 0.05], "forget.exact_match<=0.1", steps=10)[:2]
    resumed = fit_callbacks(Scripted([]), tmp_path, StoppingRule.parse("forget.exact_match<=0.1"), every_n_steps=1)
    for callback, before in zip(resumed, callbacks):
        callback.load_state_dict(before.state_dict())
    trainer = SimpleNamespace(should_stop=False, global_step=1)
    hook("on_train_start", resumed, trainer, None)
    assert trainer.should_stop and resumed[1].stopped["step"] == 1


@pytest.mark.parametrize(
    "text, problem",
    [
        ("forget.exact_match=0.1", "is not a condition"),
        ("forget.exact_match<=high", "is not a condition"),
    ],
)
def test_malformed_rules_are_refused_with_the_setting_named(text, problem):
    with pytest.raises(SimuError, match=rf"unlearning.stop_when=.*{problem}"):
        StoppingRule.parse(text)


def test_a_rule_on_an_unknown_metric_names_what_exists():
    rule = StoppingRule.parse("forget.exact_matc<=0.1 and forget_quality>=0.05")
    point = {"summary": {"forget": {"exact_match": 1.0}}, "scores": {"forget_quality": 0.01}}
    with pytest.raises(SimuError, match="split 'forget' has no 'exact_matc' \\(it has: exact_match"):
        rule.check_names(point)


def test_conditions_joined_with_and_must_all_hold():
    rule = StoppingRule.parse("forget.exact_match<=0.1 and forget_quality>=0.05")
    assert not rule.holds({"summary": {"forget": {"exact_match": 0.0}}, "scores": {"forget_quality": 0.01}})
    assert rule.holds({"summary": {"forget": {"exact_match": 0.1}}, "scores": {"forget_quality": 0.05}})


@dataclass
class TwoSplits:
    """A benchmark of two splits, forget and retain (what `view` narrows a probe to)."""

    splits: dict
    eval_splits: tuple = ("forget", "retain")
    aggregate = None

    def __getitem__(self, name):
        return self.splits[name]


class ByWeight:
    """An evaluator that reads the model's one weight w: forget EM = w, retain EM = 1 - w, on the splits
    of the benchmark it is given."""

    settings = SETTINGS

    def __init__(self):
        self.benchmark = TwoSplits({"forget": "forget rows", "retain": "retain rows"})
        self.calls, self.likelihoods = [], []  # the splits of each call, and those given likelihoods
        self.given = []  # the settings of each call

    def __call__(self, model, stage, settings=None, benchmark=None):
        w = float(model.weight.detach())
        splits = (benchmark or self.benchmark).eval_splits
        self.calls.append(splits)
        self.likelihoods.append(getattr(settings, "likelihood_splits", None))
        self.given.append(settings)
        values = {"forget": w, "retain": round(1 - w, 6)}
        return Evaluation({s: {"exact_match": values[s]} for s in splits}, {}, [])


def probe_run(tmp_path, restart_at=None, old_checkpoint=False, stop_when=None, during_truth_ratio_splits=None):
    """Ten steps of -0.1 on w = 1.0, a point every 2 steps, forget levels 0.75 and 0.3; `restart_at`: a
    new process takes over after that step, with the callback's state as a checkpoint file gives it back
    (`old_checkpoint`: one written before checkpoints kept the probe point's weights); with `stop_when`,
    the loop ends where it stops, and the fit with it. Returns the callbacks (evaluation, stopping)."""
    stop_when = StoppingRule.parse(stop_when) if stop_when else None
    model = torch.nn.Linear(1, 1, bias=False)
    evaluator = ByWeight()
    probe = probe_plan(
        "forget.exact_match<=0.75,0.3", None, ("forget", "retain"), (), generation_metrics=("exact_match",)
    )

    def callback():
        return fit_callbacks(
            evaluator,
            tmp_path,
            stop_when,
            every_n_steps=2,
            probe=probe,
            during_truth_ratio_splits=during_truth_ratio_splits,
        )

    optimizer = SimpleNamespace(param_groups=[{"params": [model.weight]}])
    trainer = SimpleNamespace(
        global_step=0,
        current_epoch=0,
        should_stop=False,
        loggers=[],
        is_global_zero=True,
        ckpt_path=None,
        optimizers=[optimizer],
    )
    module = SimpleNamespace(model=model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    callbacks = callback()
    hook("on_fit_start", callbacks, trainer, module)
    hook("on_train_start", callbacks, trainer, module)
    for step in range(1, 11):
        with torch.no_grad():
            model.weight.sub_(0.1)
        trainer.global_step = step
        hook("on_train_batch_end", callbacks, trainer, module, None, None, 0)
        if step == restart_at:
            torch.save([c.state_dict() for c in callbacks], tmp_path / "state.pt")
            states, callbacks = torch.load(tmp_path / "state.pt", weights_only=True), callback()
            if old_checkpoint:
                states[0].pop("probed")
            for c, state in zip(callbacks, states):
                c.load_state_dict(state)
            hook("on_train_start", callbacks, trainer, module)
        if trainer.should_stop:
            break
    if stop_when is not None:
        hook("on_train_end", callbacks, trainer, module)
    return callbacks, evaluator


def complete_points(cb) -> dict[int, float]:
    return {p["step"]: p["summary"]["retain"]["exact_match"] for p in cb.points if "retain" in p["summary"]}


def test_the_point_a_run_stops_at_is_evaluated_once_with_the_settings_of_after(tmp_path):
    """The points during score only model utility's truth ratios (retain); the run stops at step 8, where
    forget EM 0.2 first meets the rule: that point is "after", scored once, with every truth ratio."""
    (cb, stop), evaluator = probe_run(
        tmp_path, stop_when="forget.exact_match<=0.3", during_truth_ratio_splits=("retain",)
    )
    assert stop.stopped["step"] == 8 and cb.points[-1]["step"] == 8
    complete = [s for s in evaluator.given if s is not None and s.likelihood_splits is None]
    # before; step 2 and step 4 (reaches 0.75); step 6 and step 8: after's settings there, and no more
    assert [s.truth_ratio_splits for s in complete] == [None, ("retain",), ("retain",), ("retain",), None]
    assert cb.after.summary == cb.points[-1]["summary"]
    assert cb.after.summary["retain"]["exact_match"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "levels, stop_when, likelihoods, truth_ratios",
    [
        ("forget.exact_match<=0.5,0.1", "forget.exact_match<=0.1", (), ()),  # generations only
        ("forget.rougeL_recall<=0.4", "forget.answer_prob<=0.1", ("forget",), ()),
        ("forget.exact_match<=0.5", "retain.truth_ratio>=0.5", ("retain",), ("retain",)),
    ],
)
def test_a_probe_point_scores_likelihoods_only_on_splits_read_through_them(
    levels, stop_when, likelihoods, truth_ratios
):
    probe = probe_plan(
        levels,
        StoppingRule.parse(stop_when),
        ("forget", "retain"),
        ("truth_ratio", "normalised_prob"),
        generation_metrics=("exact_match", "rougeL_recall", "contains_answer"),
    )
    assert (probe.likelihood_splits, probe.truth_ratio_splits) == (likelihoods, truth_ratios)


def test_probe_points_complete_the_point_before_a_crossing_from_the_weights_kept_at_it(tmp_path):
    (cb, _), evaluator = probe_run(tmp_path)
    # forget 0.8 at step 2, 0.6 at 4 (reaches 0.75), 0.4 at 6, 0.2 at 8 (reaches 0.3), 0.0 at 10
    assert complete_points(cb) == {0: 0.0, 2: 0.2, 4: 0.4, 6: 0.6, 8: 0.8}
    assert set(cb.points[-1]["summary"]) == {"forget"} and cb.points[-1]["step"] == 10  # a probe
    assert evaluator.calls.count(("forget",)) == 5  # one probe a point; complete points on top
    # the probes read forget exact match alone: no likelihood; the complete points score every split's
    probes = [i for i, splits in enumerate(evaluator.calls) if splits == ("forget",)]
    assert all(evaluator.likelihoods[i] == () for i in probes)
    assert all(evaluator.likelihoods[i] is None for i in range(len(evaluator.calls)) if i not in probes)
    assert cb._probed is None  # no copy is kept once every level is reached


def test_a_restart_anywhere_completes_the_point_before_a_crossing_from_the_checkpoints_copy(tmp_path, caplog):
    (whole, _), _ = probe_run(tmp_path / "whole")
    for restart_at in (6, 7):  # at a point's step (the model holds its weights) and between points
        (tmp_path / str(restart_at)).mkdir()
        (cb, _), _ = probe_run(tmp_path / str(restart_at), restart_at=restart_at)
        assert complete_points(cb) == complete_points(whole) == {0: 0.0, 2: 0.2, 4: 0.4, 6: 0.6, 8: 0.8}
    assert "were not kept" not in caplog.text
    (tmp_path / "old").mkdir()
    with caplog.at_level("WARNING"):
        (cb, _), _ = probe_run(tmp_path / "old", restart_at=7, old_checkpoint=True)  # step 6's weights are gone
    assert set(complete_points(cb)) == {0, 2, 4, 8}
    assert "forget.exact_match<=0.3 first holds at step 8" in caplog.text and "(step 6)" in caplog.text


def test_the_kept_weights_are_evaluated_and_the_current_ones_come_back_bit_for_bit():
    layer = torch.nn.Linear(3, 2)
    kept = snapshot(list(layer.parameters()))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    current = [p.detach().clone() for p in layer.parameters()]
    with weights_of(list(layer.parameters()), kept):
        assert all(torch.equal(p, k) for p, k in zip(layer.parameters(), kept))
    assert all(torch.equal(p, c) for p, c in zip(layer.parameters(), current))


def test_forget_levels_name_each_levels_first_crossing():
    levels = ForgetLevels.parse("forget.rougeL_recall<=0.4,0.2")
    points = [{"summary": {"forget": {"rougeL_recall": v}}, "scores": {}} for v in (0.9, 0.35, 0.5, 0.1)]
    reached = [levels.first_reached(points[:i], p) for i, p in enumerate(points)]
    assert [[c.value for c in r] for r in reached] == [[], [0.4], [], [0.2]]  # 0.4 again at 0.1: not first
    assert not levels.all_reached(points[:3]) and levels.all_reached(points)
    with pytest.raises(SimuError, match=r"^--at='forget.rougeL_recall=0.4': expected METRIC<=LEVELS"):
        ForgetLevels.parse("forget.rougeL_recall=0.4")


@pytest.mark.parametrize(
    "full_around, levels, rule, processes, expected",
    [
        ("auto", "forget.exact_match<=0.5,0.2,0.1", "forget.exact_match<=0.1", 1, "forget.exact_match<=0.5,0.2,0.1"),
        ("auto", None, "forget.rougeL_recall<=0.3", 1, "forget.rougeL_recall<=0.3"),
        ("auto", None, "forget.exact_match<=0.1 and retain.exact_match>=0.9", 1, None),  # two conditions
        ("auto", None, "forget_quality>=0.05", 1, None),  # a score reads every split
        ("auto", None, None, 1, None),
        ("auto", "forget.exact_match<=0.5", None, 2, None),  # sharded: every point in full
        ("forget.answer_prob<=0.2", "forget.exact_match<=0.5", None, 1, "forget.answer_prob<=0.2"),
        (None, "forget.exact_match<=0.5", "forget.exact_match<=0.1", 1, None),
    ],
)
def test_auto_completes_the_points_around_the_benchmarks_levels_else_the_stopping_rules(
    full_around, levels, rule, processes, expected
):
    stop = StoppingRule.parse(rule) if rule else None
    got, _ = resolved_full_around(full_around, levels, stop, processes)
    assert got == expected
    if expected is not None:  # what the callback is given evaluates the same levels
        assert str(probe_plan(got, stop, ("forget", "retain"), ()).levels) == str(ForgetLevels.parse(expected))
