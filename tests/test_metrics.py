import math

import pytest

from simu_lightning.evaluation import metrics


@pytest.mark.parametrize("generation, answer, expected", [
    ("  Paris. ", "paris", 1.0),
    ("PARIS!", "Paris", 1.0),
    ("Paris is nice.", "Paris", 0.0),
    ("The Pacific Ocean", "the pacific ocean.", 1.0),
    ("Pari", "Paris", 0.0),
])
def test_exact_match_ignores_case_space_and_trailing_punctuation(generation, answer, expected):
    assert metrics.exact_match(generation, answer) == expected


def test_rouge_l_recall_by_hand():
    # LCS(the cat sat on the mat | the cat on a mat) = the cat on mat: 4 of the answer's 6 tokens
    assert metrics.rouge_l_recall("the cat on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert metrics.rouge_l_recall("the cats sat", "the cat sat") == pytest.approx(1.0)  # stemmer on
    assert metrics.rouge_l_recall("", "the cat") == 0.0


def test_answer_probability_is_the_geometric_mean_token_probability():
    assert metrics.answer_probability(math.log(0.5) + math.log(0.125), 2) == pytest.approx(0.25)


def test_harmonic_mean_and_aggregate():
    assert metrics.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([0.5, 0.0]) == 0.0
    summary = {"forget": {"exact_match": 0.5, "rougeL_recall": 0.75},
               "retain": {"exact_match": 1.0, "rougeL_recall": 0.5}}
    # hmean(0.5, 0.25, 1.0, 0.5) = 4 / (2 + 4 + 1 + 2)
    assert metrics.unlearning_aggregate(summary) == pytest.approx(4 / 9)


def test_split_summary_keeps_every_metric_even_when_the_first_value_is_zero():
    from simu_lightning.evaluation.qa import summarise

    rows = [{"exact_match": 0.0, "rougeL_recall": metrics.rouge_l_recall("", "Paris"), "answer_prob": 0.5},
            {"exact_match": 1.0, "rougeL_recall": 1.0, "answer_prob": 0.7}]
    assert summarise(rows, forget=True) == pytest.approx({"exact_match": 0.5, "rougeL_recall": 0.5, "answer_prob": 0.6})
