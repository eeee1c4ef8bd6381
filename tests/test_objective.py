"""The search objective: utility where the trajectory first reaches a forget level, else a penalty."""

import pytest

from simu_lightning.utils.errors import SimuError
from simu_lightning.pipeline.objective import matched_utility


def point(step, forget_em, retain_rouge):
    return {
        "step": step,
        "summary": {"forget": {"exact_match": forget_em}, "retain": {"rougeL_recall": retain_rouge}},
        "scores": {},
    }


def test_the_objective_interpolates_at_the_crossing_and_penalises_a_run_that_never_forgets():
    curve = [point(0, 0.9, 1.0), point(2, 0.5, 0.9), point(4, 0.1, 0.7)]
    # forget EM 0.5 -> 0.1 crosses 0.2 three quarters of the way: retain 0.9 + 0.75 * (0.7 - 0.9) = 0.75, step 3.5
    here = matched_utility(curve, "forget.exact_match<=0.2", "retain.rougeL_recall")
    assert here["value"] == pytest.approx(0.75) and here["step"] == pytest.approx(3.5) and here["reached"]
    never = matched_utility(curve[:2], "forget.exact_match<=0.2", "retain.rougeL_recall", unreached=-1.0)
    assert never == {
        "at": "forget.exact_match<=0.2",
        "metric": "retain.rougeL_recall",
        "value": -1.0,
        "reached": False,
        "step": None,
    }


def test_an_objective_of_two_conditions_is_refused():
    with pytest.raises(SimuError, match="objective.at="):
        matched_utility([], "forget.exact_match<=0.2 and forget_quality>=0.05", "retain.rougeL_recall")
