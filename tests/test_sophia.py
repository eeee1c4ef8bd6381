"""Sophia against steps worked out by hand (see the numbers in the comments)."""
import pytest
import torch

from simu_lightning.optim import Sophia, sample_labels, sampled_label_loss
from simu_lightning.data.formatting import IGNORE_INDEX

LR, BETAS, RHO, WD, BS = 0.1, (0.9, 0.99), 0.5, 0.1, 2


def one_step(masks=None):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Sophia([p], lr=LR, betas=BETAS, rho=RHO, weight_decay=WD, masks=None if masks is None else {p: masks})
    p.grad = torch.tensor([1.0, 4.0, 0.0])   # gradient on sampled labels
    opt.update_hessian()                      # h = 0.01 * g^2 = [0.01, 0.16, 0]
    p.grad = torch.tensor([0.2, -0.4, 0.3])   # loss gradient
    opt.step(bs=BS)
    return p, opt


def test_hessian_update_and_step_match_hand_computation():
    p, opt = one_step()
    state = opt.state[p]
    torch.testing.assert_close(state["hessian"], torch.tensor([0.01, 0.16, 0.0]))
    # m = 0.1 * grad
    torch.testing.assert_close(state["exp_avg"], torch.tensor([0.02, -0.04, 0.03]))
    # rho*bs*h = [0.01, 0.16, 0]: ratio = [min(2, 1), 0.25, min(3e13, 1)] = [1, 0.25, 1]
    # theta = theta * 0.99 - 0.1 * sign(m) * ratio = [0.99 - 0.1, -1.98 + 0.025, 0.495 - 0.1]
    torch.testing.assert_close(p.detach(), torch.tensor([0.89, -1.955, 0.395]))
    assert opt.clip_rate == pytest.approx(2 / 3)


def test_second_hessian_update_is_an_exponential_average():
    p, opt = one_step()
    p.grad = torch.tensor([2.0, 0.0, 1.0])
    opt.update_hessian()  # 0.99 * [0.01, 0.16, 0] + 0.01 * [4, 0, 1]
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([0.0499, 0.1584, 0.01]))


def test_masked_entries_keep_parameter_momentum_and_hessian_bit_identical():
    p, opt = one_step(masks=torch.tensor([True, False, True]))
    state = opt.state[p]
    assert p[1].item() == -2.0  # no update, not even weight decay
    assert state["exp_avg"][1].item() == 0.0 and state["hessian"][1].item() == 0.0
    torch.testing.assert_close(p.detach()[[0, 2]], torch.tensor([0.89, 0.395]))
    assert opt.clip_rate == pytest.approx(1.0)  # both updated entries were clipped


def test_a_column_mask_broadcasts_over_a_weight():
    w = torch.nn.Parameter(torch.randn(3, 4))
    before = w.detach().clone()
    opt = Sophia([w], lr=0.01, masks={w: torch.tensor([[False, True, False, False]])})
    w.grad = torch.randn(3, 4)
    opt.update_hessian()
    opt.step(bs=8)
    changed = (w.detach() != before)
    assert changed[:, 1].all() and not changed[:, [0, 2, 3]].any()


def test_masks_that_do_not_fit_are_refused():
    w = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        Sophia([w], masks={w: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not update"):
        Sophia([w], masks={torch.nn.Parameter(torch.zeros(2)): torch.ones(2, dtype=torch.bool)})


def test_labels_are_sampled_by_inverse_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(4, 3)
    uniforms = torch.tensor([0.1, 0.25, 0.6, 0.999])
    assert sample_labels(logits, uniforms).tolist() == [0, 1, 2, 2]


def test_sampled_label_loss_scores_answer_positions_only():
    logits = torch.zeros(1, 4, 5)  # uniform: every sampled label has CE log(5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1]])
    loss, count = sampled_label_loss(logits, labels, torch.full((1, 3), 0.5))
    assert count == 2
    assert loss.item() == pytest.approx(torch.log(torch.tensor(5.0)).item())
