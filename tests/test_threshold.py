"""attribution.t=auto: each layer's t chosen from its scores, against hand-worked layers."""

import math

import pytest
import torch

from simu_lightning.attribution.neurons import select_critical
from simu_lightning.attribution import threshold
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


def _kept_by_mass_by_hand(values: list[float], share: float) -> list[bool]:
    """The mass rule as plainly as it can be said: largest first, until the running sum reaches `share` of
    the positive total (exactly summed); every score at least the last one taken (ties) is kept."""
    positive = sorted((v for v in values if v > 0), reverse=True)
    total, running = math.fsum(positive), []
    for v in positive:
        running.append(v)
        if math.fsum(running) >= share * total:
            break
    return [v > 0 and v >= running[-1] for v in values]


def test_mass_one_keeps_every_positive_neuron_of_3000_random_layers_however_their_sums_round():
    """A layer's running sum need not end on its separately rounded total (IndexError in about half of
    these layers before), and a small score can leave a rounded sum unchanged: neither may drop a neuron."""
    generator = torch.Generator().manual_seed(0)
    for draw in range(3000):
        size = int(torch.randint(1, 1500, (), generator=generator))
        s = torch.randn(size, generator=generator, dtype=torch.float64) * 10 ** float(
            torch.randn((), generator=generator)
        )
        masks, chosen = auto_critical_neurons({"layer": s}, "mass", 1.0)
        assert torch.equal(masks["layer"], s > 0), draw
        if (s > 0).any():
            assert chosen["layer"] == float(s[s > 0].min() / s.max()), draw
    s = torch.tensor([1e20, 2.0, 1.0, -3.0], dtype=torch.float64)  # 1e20 + 2 + 1 rounds to 1e20
    assert mass_cut(s, 1.0) == 1.0
    assert auto_critical_neurons({"layer": s}, "mass", 1.0)[0]["layer"].tolist() == [True, True, True, False]


def test_every_share_in_0_1_keeps_the_fewest_largest_neurons_reaching_it_in_3000_random_layers():
    """Against the rule's own statement: every kept score is at least every dropped positive one, the kept
    scores carry the share of the positive total, and without the smallest kept one they would not."""
    generator = torch.Generator().manual_seed(1)
    shares = [1 - 2**-53, 1 - 1e-12, 0.999, 0.5, 1e-9]
    for draw in range(3000):
        size = int(torch.randint(1, 600, (), generator=generator))
        s = torch.randn(size, generator=generator, dtype=torch.float64).exp() - 0.5
        share = shares[draw] if draw < len(shares) else float(torch.rand((), generator=generator, dtype=torch.float64))
        share = share or 1.0
        kept = auto_critical_neurons({"layer": s}, "mass", share)[0]["layer"]
        values = s.tolist()
        assert kept.tolist() == _kept_by_mass_by_hand(values, share), (draw, share)
        positive = [v for v in values if v > 0]
        if not positive:
            assert not kept.any()
            continue
        kept_values = [v for v, k in zip(values, kept.tolist()) if k]
        assert min(kept_values) >= max([v for v in positive if v not in kept_values], default=0.0)
        assert math.fsum(kept_values) >= share * math.fsum(positive)
        if kept_values.count(min(kept_values)) == 1:  # no tie at the cut: one neuron fewer falls short
            assert math.fsum(kept_values) - min(kept_values) < share * math.fsum(positive), (draw, share)


def test_knee_keeps_the_scores_above_a_clear_knee_worked_by_hand():
    # 11 positive scores, sorted 101, 51, 11, 9, 7, 6, 5, 4, 3, 2, 1: x = i / 10, y = (s - 1) / 100, and
    # the distance below the chord (1 - x) - y is 0, 0.4, 0.7, 0.62, 0.54, 0.45, 0.36, 0.27, 0.18, 0.09, 0.
    # The knee is the third score (11), D* = 0.7 >= sqrt(ln(100) / 22) = 0.4575: 101 and 51 are kept.
    s = torch.tensor([5.0, 101.0, 2.0, 9.0, -4.0, 11.0, 1.0, 7.0, 51.0, 3.0, 6.0, 4.0])
    assert threshold.knee_threshold(11) == pytest.approx(0.457521, abs=1e-6)
    knee, distance = threshold.knee_distance(s)
    assert knee == 2 and distance == pytest.approx(0.7)
    assert knee_cut(s) == 51.0
    masks, chosen = auto_critical_neurons({"layer": s}, "knee", 0.5)
    assert masks["layer"].nonzero().flatten().tolist() == [1, 8]
    assert chosen["layer"] == pytest.approx(51.0 / 101.0) and chosen.no_knee == []
    # the same 11 scores times 3, 1e-3 and 2**20 (rounded to float32) keep the same two
    for factor in (3.0, 1e-3, 2.0**20):
        assert torch.equal(auto_critical_neurons({"layer": s * factor}, "knee", 0.5)[0]["layer"], masks["layer"])


def _no_knee_layers() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "linear": torch.linspace(0.01, 1.0, 1000),
        **{f"uniform{i}": torch.rand(1000) for i in range(3)},
        # a knee to the eye, but 6 uniform scores lie this far below the chord (D* = 0.509, under
        # sqrt(ln(100) / 12) = 0.619) in about one layer in 20: too few to tell
        "six": torch.tensor([0.5, 10.0, 0.1, 9.0, 0.2, 1.0]),
        "equal": torch.tensor([3.0, 3.0, 3.0, 3.0]),
        "two": torch.tensor([5.0, 1.0, -2.0]),  # fewer than three positive scores
    }


def test_a_layer_without_a_knee_takes_the_mass_rule_and_says_so_once(caplog):
    layers = _no_knee_layers()
    with caplog.at_level("INFO", logger="simu_lightning.attribution.threshold"):
        masks, chosen = auto_critical_neurons(layers, "knee", 0.5)
    by_mass, mass_t = auto_critical_neurons(layers, "mass", 0.5)
    assert chosen.no_knee == list(layers)
    for name, s in layers.items():
        assert knee_cut(s) is None, name
        assert masks[name].tolist() == _kept_by_mass_by_hand(s.tolist(), 0.5), name
        assert torch.equal(masks[name], by_mass[name]) and chosen[name] == mass_t[name], name
        assert sum(f" {name} has no knee " in r.getMessage() for r in caplog.records if r.levelname == "INFO") == 1
    # linear from 0.01 to 1: the largest 296 carry half (1 - 1/sqrt(2) of the range, less the 0.01 offset)
    assert {name: int(m.sum()) for name, m in masks.items()} == {
        "linear": 296,
        "uniform0": 291,
        "uniform1": 291,
        "uniform2": 297,
        "six": 2,  # 10 + 9 of 20.8: the two that the eye sees above the knee
        "equal": 4,  # ties at the cut
        "two": 1,
    }
    assert "largest distance below the chord 0.509 < 0.619 for 6 positive scores" in caplog.text
    assert "two has no knee (fewer than three positive scores)" in caplog.text
    masks, chosen = auto_critical_neurons(layers, "knee", 1.0)  # the fallback's share is auto.mass
    assert all(torch.equal(masks[name], s > 0) for name, s in layers.items())


def test_the_knee_rule_keeps_the_same_neurons_when_a_layers_scores_are_scaled():
    """Scores times a positive constant (rounded to float32, as a run's scores are) keep the same set:
    without a knee (which before followed rounding noise: 448 linear scores, 306 of them times 3) and with
    one (exponential, log-normal, Pareto and normal scores, 8 to 4096 per layer)."""
    layers = _no_knee_layers()
    generator = torch.Generator().manual_seed(2)
    for draw in range(150):
        size = 8 * 2 ** (draw % 10)
        layers[f"exponential{draw}"] = torch.empty(size).exponential_(generator=generator)
        layers[f"lognormal{draw}"] = torch.randn(size, generator=generator).exp()
        layers[f"pareto{draw}"] = torch.rand(size, generator=generator) ** -1.0
        layers[f"normal{draw}"] = torch.randn(size, generator=generator)
    masks, _ = auto_critical_neurons(layers, "knee", 0.5)
    for factor in (3.0, 1e-3, 7.1, 2.0**-30):
        scaled, _ = auto_critical_neurons({name: s * factor for name, s in layers.items()}, "knee", 0.5)
        assert [name for name in layers if not torch.equal(scaled[name], masks[name])] == [], factor


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
