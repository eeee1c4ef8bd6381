"""attribution.t=auto: each layer's t chosen from its scores, against hand-worked layers."""

import pytest
import torch

from simu_lightning.attribution.neurons import select_critical
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.attribution.threshold import auto_critical_neurons, knee_cut, mass_cut
from simu_lightning.utils.errors import SimuError


def test_mass_keeps_the_fewest_neurons_holding_the_share_of_the_positive_attribution():
    s = torch.tensor([1.0, 4.0, -1.0, 3.0, 2.0])  # positive total 10; sorted 4, 3, 2, 1
    assert mass_cut(s, 0.5) == 3.0  # 4 + 3 = 7 >= 5, 4 alone < 5
    assert mass_cut(s, 0.4) == 4.0  # 4 >= 4
    assert mass_cut(s, 1.0) == 1.0  # every positive neuron, never the negative one
    masks, chosen = auto_critical_neurons({"layer": s}, "mass", 0.5)
    assert masks["layer"].tolist() == [False, True, False, True, False]
    assert chosen["layer"] == pytest.approx(3.0 / 4.0)


def test_mass_keeps_ties_at_the_cut_and_nothing_in_a_layer_without_positive_scores():
    masks, chosen = auto_critical_neurons({"tied": torch.tensor([2.0, 1.0, 2.0]), "dead": -torch.ones(3)}, "mass", 0.3)
    assert masks["tied"].tolist() == [True, False, True]  # 2 alone holds 2/5 >= 0.3; the other 2 ties it
    assert masks["dead"].tolist() == [False, False, False] and chosen["dead"] is None


def test_knee_keeps_the_scores_above_where_the_flat_tail_begins():
    # sorted 10, 9, 1, 0.5, 0.2, 0.1: x = i / 5, y = (s - 0.1) / 9.9; (1 - x) - y is
    # 0, -0.099, 0.509, 0.360, 0.190, 0: the knee is the third score, so 10 and 9 are kept
    s = torch.tensor([0.5, 10.0, 0.1, 9.0, 0.2, 1.0])
    assert knee_cut(s) == 9.0
    masks, chosen = auto_critical_neurons({"layer": s}, "knee", 0.5)
    assert masks["layer"].tolist() == [False, True, False, True, False, False]
    assert chosen["layer"] == pytest.approx(0.9)
    assert knee_cut(torch.tensor([3.0, 3.0, 3.0, 3.0])) == 3.0  # no knee: all of them
    assert knee_cut(torch.tensor([5.0, 1.0, -2.0])) == 1.0  # fewer than three positive: all of them


def test_a_fixed_t_reports_itself_for_every_layer_and_auto_is_checked_where_built():
    scores = {"a": torch.tensor([1.0, 0.5]), "b": torch.tensor([2.0, 0.1])}
    masks, chosen = select_critical(scores, 0.4, AttributionSettings().auto)
    assert chosen == {"a": 0.4, "b": 0.4} and masks["b"].tolist() == [True, False]
    assert AttributionSettings(t="auto", auto={"rule": "knee"}).auto == {"rule": "knee", "mass": 0.5}
    with pytest.raises(SimuError, match=r"^attribution.t must be in \(0, 1\] or auto, got often$"):
        AttributionSettings(t="often")
    with pytest.raises(SimuError, match=r"^attribution.auto.rule must be one of mass, knee, got 'elbow'$"):
        AttributionSettings(t="auto", auto={"rule": "elbow"})
    with pytest.raises(SimuError, match=r"^attribution.auto.mass must be in \(0, 1\], got 1.5$"):
        AttributionSettings(t="auto", auto={"mass": 1.5})


def test_the_critical_neurons_image_writes_each_layers_chosen_t_beside_it():
    from simu_lightning.pipeline.dashboards import critical_neurons_figure

    scores = {"a": torch.tensor([1.0, 0.5, 0.1]), "b": -torch.ones(3)}
    masks, chosen = auto_critical_neurons(scores, "mass", 0.5)
    axes = critical_neurons_figure(scores, masks, chosen).axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["0  t=1.00", "1"]  # layer 1 keeps none
    assert axes.get_title() == "critical neurons at t chosen per layer: 1 of 6 (16.7%)"
