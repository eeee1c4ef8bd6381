import math

import pytest
import torch
from types import SimpleNamespace

from simu_lightning.data.formatting import IGNORE_INDEX, PromptFormat
from simu_lightning.evaluation import metrics
from simu_lightning.evaluation.qa import summarise
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.likelihood import answer_log_likelihood


@pytest.mark.parametrize(
    "generation, answer, expected",
    [
        ("  Paris. ", "paris", 1.0),
        ("PARIS!", "Paris", 1.0),
        ("Paris is nice.", "Paris", 0.0),
        ("The Pacific Ocean", "the pacific ocean.", 1.0),
        ("Pari", "Paris", 0.0),
    ],
)
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
    summary = {
        "forget": {"exact_match": 0.5, "rougeL_recall": 0.75},
        "retain": {"exact_match": 1.0, "rougeL_recall": 0.5},
    }
    # hmean(0.5, 0.25, 1.0, 0.5) = 4 / (2 + 4 + 1 + 2)
    assert metrics.unlearning_aggregate(summary) == pytest.approx(4 / 9)


def test_split_summary_keeps_every_metric_even_when_the_first_value_is_zero():
    rows = [
        {"exact_match": 0.0, "rougeL_recall": metrics.rouge_l_recall("", "Paris"), "answer_prob": 0.5},
        {"exact_match": 1.0, "rougeL_recall": 1.0, "answer_prob": 0.7},
    ]
    assert summarise(rows, forget=True) == pytest.approx({"exact_match": 0.5, "rougeL_recall": 0.5, "answer_prob": 0.6})


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are given: position t predicts token logits[t].argmax() next."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the evaluation finds a device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits[:, : input_ids.shape[1]].expand(len(input_ids), -1, -1))


def test_exact_memorization_is_the_share_of_answer_tokens_the_argmax_predicts_eos_left_out():
    """Sequence [prompt 5, answer 1 2 3, EOS 9, pad]: the labels are 1, 2, 3, 9 (positions 1-4), predicted
    by the logits at positions 0-3, whose argmaxes are 1, 7, 3, 9. open-unlearning drops the last
    labelled token (the EOS) from exact memorisation: two hits of three -> 2/3 (counting the EOS would
    give 3/4). The probability keeps every labelled token, the EOS included. The prompt position and
    the padding are never counted, whatever the argmax there."""
    vocab = 10
    argmax = torch.tensor([[1, 7, 3, 9, 4, 0]])  # position 4 predicts the pad (ignored), 5 predicts nothing
    logits = torch.nn.functional.one_hot(argmax, vocab).float()
    batch = {
        "input_ids": torch.tensor([[5, 1, 2, 3, 9, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
        "labels": torch.tensor([[IGNORE_INDEX, 1, 2, 3, 9, IGNORE_INDEX]]),
    }
    total, count, hits, counted, prefix = answer_log_likelihood(FixedLogits(logits), batch, with_hits=True)
    assert count.tolist() == [4] and hits.tolist() == [2] and counted.tolist() == [3]
    # extraction: the argmax misses answer token 2 (of 1 2 3): only "3" follows from what precedes it
    assert prefix.tolist() == [2]
    # log-probabilities of the one-hot logits: e / (e + 9) where the argmax is the label, else 1 / (e + 9)
    hit, miss = math.log(math.e / (math.e + 9)), math.log(1 / (math.e + 9))
    assert total.item() == pytest.approx(3 * hit + miss)


def test_exact_memorization_of_an_answer_that_is_only_its_eos_is_left_out_of_the_split_mean():
    from simu_lightning.evaluation.qa import answer_scores

    class Tokenizer:  # one token per character; "" encodes to nothing, so the answer is the EOS alone
        is_fast, eos_token_id, pad_token_id = False, 9, 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1 + ord(c) % 7 for c in text]}

    fmt = PromptFormat(template="{question}", answer_prefix="")
    logits = torch.zeros(1, 8, 10)
    settings = EvaluationSettings(max_length=32, max_new_tokens=1, batch_size=4)
    scored = answer_scores(FixedLogits(logits), Tokenizer(), fmt, ["ab"], [""], settings)
    assert scored[0].memorised is None and scored[0].extraction is None
    assert summarise([{"exact_memorization": None}, {"exact_memorization": 0.5}], forget=True) == {
        "exact_memorization": 0.5
    }


@pytest.mark.parametrize(
    "argmax, expected",
    [
        ([1, 2, 3, 9], 1.0),  # every answer token predicted: extracted from the question alone
        ([1, 7, 3, 9], 1 - 2 / 3),  # after the first two tokens the rest (3) follows
        ([7, 2, 3, 9], 1 - 1 / 3),
        ([1, 2, 7, 9], 0.0),  # not even the last token: nothing extracted (open-unlearning's loop gives 1/3)
    ],
)
def test_extraction_strength_is_one_minus_the_prefix_share_after_which_the_rest_follows(argmax, expected):
    logits = torch.nn.functional.one_hot(torch.tensor([argmax + [4, 0]]), 10).float()
    batch = {
        "input_ids": torch.tensor([[5, 1, 2, 3, 9, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
        "labels": torch.tensor([[IGNORE_INDEX, 1, 2, 3, 9, IGNORE_INDEX]]),
    }
    _, _, _, counted, prefix = answer_log_likelihood(FixedLogits(logits), batch, with_hits=True)
    assert 1 - prefix.item() / counted.item() == pytest.approx(expected)
