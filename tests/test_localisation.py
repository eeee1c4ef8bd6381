"""Localisation scores against a constructed score table, every figure worked out by hand."""

import pytest
import torch

from simu_lightning.attribution.localisation import localisation

# layer A: planted {0, 1, 2}; selected (the scores >= 0.45) {0, 2, 3}. Layer B: nothing planted, selected {0}.
SCORES = {"A": torch.tensor([0.9, 0.1, 0.7, 0.8, 0.05, 0.2, 0.0, 0.3]), "B": torch.tensor([0.5, 0.4, 0.0, -0.1])}
PLANTED = {"A": torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]).bool(), "B": torch.zeros(4, dtype=torch.bool)}
SELECTED = {name: scores >= 0.45 for name, scores in SCORES.items()}


def test_per_layer_figures_by_hand():
    a, b = (localisation(SELECTED, SCORES, PLANTED)["layers"][name] for name in ("A", "B"))
    # C & P = {0, 2}: precision 2/3, recall 2/3; C | P = {0, 1, 2, 3}: Jaccard 2/4
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
    assert a["jaccard"] == pytest.approx(1 / 2)
    # the top |P| = 3 by score are 0 (0.9), 3 (0.8), 2 (0.7): two of them planted
    assert a["precision_at_p"] == pytest.approx(2 / 3)
    # planted 0.9 beats all 5 others, 0.1 beats 0.05 and 0.0, 0.7 beats 4: 11 of 15 pairs
    assert a["auroc"] == pytest.approx(11 / 15)
    # a layer with nothing planted: what it selects is all wrong; recall, P@|P| and AUROC are undefined
    assert b == {"precision": 0.0, "recall": None, "jaccard": 0.0, "precision_at_p": None, "auroc": None}


def test_overall_figures_pool_the_layers():
    overall = localisation(SELECTED, SCORES, PLANTED)["overall"]
    # selected A0 A2 A3 B0, two of them planted; union A0-A3 B0
    assert overall["precision"] == pytest.approx(2 / 4) and overall["recall"] == pytest.approx(2 / 3)
    assert overall["jaccard"] == pytest.approx(2 / 5)
    assert overall["precision_at_p"] == pytest.approx(2 / 3)  # the top 3 of all 12 are A0, A3, A2
    # against 9 unplanted: 0.9 beats 9, 0.1 beats 4 (0.05, 0.0, 0.0, -0.1), 0.7 beats 8
    assert overall["auroc"] == pytest.approx(21 / 27)


def test_the_oracle_scores_perfectly_and_layers_must_match():
    oracle = localisation(PLANTED, {k: v.float() for k, v in PLANTED.items()}, PLANTED)["overall"]
    assert oracle == {"precision": 1.0, "recall": 1.0, "jaccard": 1.0, "precision_at_p": 1.0, "auroc": 1.0}
    with pytest.raises(ValueError, match="different layers"):
        localisation({"A": SELECTED["A"]}, SCORES, PLANTED)
