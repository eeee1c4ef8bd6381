import math

import pytest
import torch

from simu_lightning.likelihood import AnswerNLL, token_log_probs
from simu_lightning.unlearning.losses import NPO, GradDiff, GradientAscent
from simu_lightning.data.formatting import IGNORE_INDEX

# per-example means differ from the token means, so the documented averaging (per example, then over
# examples) is pinned: forget means 2, 3 -> 2.5 (token mean 8/3); retain means 0.5, 3 -> 1.75 (token mean 4/3)
FORGET = AnswerNLL(total=torch.tensor([2.0, 6.0]), count=torch.tensor([1, 2]))
RETAIN = AnswerNLL(total=torch.tensor([1.0, 3.0]), count=torch.tensor([2, 1]))


def test_graddiff_is_minus_forget_plus_weighted_retain():
    loss, terms = GradDiff(retain_weight=3.0)(FORGET, RETAIN)
    assert loss.item() == pytest.approx(-2.5 + 3.0 * 1.75)
    assert terms["forget_nll"].item() == pytest.approx(2.5) and terms["retain_nll"].item() == pytest.approx(1.75)


def test_gradient_ascent_ignores_retain():
    loss, _ = GradientAscent()(FORGET, RETAIN)
    assert loss.item() == pytest.approx(-2.5)


def test_npo_against_hand_value():
    reference = AnswerNLL(total=torch.tensor([1.0, 6.0]), count=torch.tensor([1, 2]))
    loss, terms = NPO(beta=0.1, retain_weight=1.0)(FORGET, RETAIN, reference)
    # log pi/pi_ref = [1 - 2, 6 - 6] = [-1, 0]; -2/beta * mean(log sigmoid(-beta * [-1, 0]))
    npo = -20 * (math.log(1 / (1 + math.exp(-0.1))) + math.log(0.5)) / 2
    assert terms["npo"].item() == pytest.approx(npo, rel=1e-6)
    assert loss.item() == pytest.approx(npo + 1.75, rel=1e-6)


def test_token_log_probs_shift_and_mask():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3.0)  # p(2 | first two tokens) = 3 / 6
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])
    logp, scored = token_log_probs(logits, labels)
    assert scored.tolist() == [[False, True]]
    assert logp[0, 1].item() == pytest.approx(math.log(0.5)) and logp[0, 0].item() == 0.0
