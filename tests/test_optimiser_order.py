"""The optimiser-order axis (issue 45): SGD, sign-SGD and the zeroth-order estimate, each under SIMU's masks
with the entries outside the mask bit-identical after real steps."""

import pytest
import torch

from simu_lightning.optim.masked_sgd import MaskedSGD
from simu_lightning.optim.sign_sgd import SignSGD
from simu_lightning.optim.zeroth_order import ZerothOrder


def net_and_data():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    return net, torch.randn(16, 4), torch.randn(16, 3)


def column_mask(net):  # neurons 1 and 4 of the second layer's input, as SIMU's down projections
    return {net[2].weight: torch.tensor([[False, True, False, False, True, False]])}


def train(make, steps=4, masked=True):
    net, x, y = net_and_data()
    optimizer = make(net.parameters())
    if masked:
        optimizer.set_masks(column_mask(net))
    start = {name: p.detach().clone() for name, p in net.named_parameters()}
    grads = []

    def loss():
        return torch.nn.functional.mse_loss(net(x), y)

    for _ in range(steps):
        if getattr(optimizer, "zeroth_order", False):
            optimizer.step(loss=loss)
            continue
        optimizer.zero_grad()
        loss().backward()
        grads.append(net[2].weight.grad.clone())
        optimizer.step()
    return net, optimizer, start, grads


OPTIMISERS = {
    "sgd": lambda params: MaskedSGD(params, lr=0.05, momentum=0.9, weight_decay=0.01),
    "signsgd": lambda params: SignSGD(params, lr=0.01, beta=0.9, weight_decay=0.01),
    "zo": lambda params: ZerothOrder(params, lr=0.05, perturbations=3, mu=1e-2, weight_decay=0.01),
}
STATE = {"sgd": "momentum_buffer", "signsgd": "momentum", "zo": None}


@pytest.mark.parametrize("name", OPTIMISERS)
def test_masked_entries_keep_weight_and_state_bit_identical_after_real_steps(name):
    net, optimizer, start, _ = train(OPTIMISERS[name])
    weight, mask = net[2].weight, column_mask(net)[net[2].weight].expand(3, 6)
    assert torch.equal(weight.detach()[~mask], start["2.weight"][~mask])  # the same bits, not merely close
    if STATE[name]:  # (zeroth order keeps no state)
        state = optimizer.state[weight][STATE[name]]
        assert torch.equal(state[~mask], torch.zeros(int((~mask).sum())))
    assert not torch.equal(weight.detach()[mask], start["2.weight"][mask])  # the critical columns moved
    assert not torch.equal(net[0].weight.detach(), start["0.weight"])  # an unmasked parameter moves freely


def test_masked_sgd_without_a_mask_is_torchs_sgd_bit_for_bit():
    ours, _, _, _ = train(OPTIMISERS["sgd"], masked=False)
    theirs, _, _, _ = train(
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01), masked=False
    )
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_sign_sgd_steps_as_computed_by_hand():
    """beta 0.5, lr 0.1, no decay, gradients (0.4, -0.2, 0) then (-1.0, 0.1, 0.3):
    m1 = (0.2, -0.1, 0), w1 = w0 - 0.1 (1, -1, 0); m2 = (-0.4, 0.0, 0.15), w2 = w1 - 0.1 (-1, 0, 1)."""
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    optimizer = SignSGD([weight], lr=0.1, beta=0.5)
    for grad in ([0.4, -0.2, 0.0], [-1.0, 0.1, 0.3]):
        weight.grad = torch.tensor(grad)
        optimizer.step()
    torch.testing.assert_close(optimizer.state[weight]["momentum"], torch.tensor([-0.4, -0.0, 0.15]))
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0, 2.1, 2.9]))


@pytest.mark.parametrize("name", OPTIMISERS)
def test_bf16_weights_are_refused_with_the_setting_that_allows_them(name):
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="the weights must be float32, got torch.bfloat16"):
        OPTIMISERS[name]([weight])


def test_the_zeroth_order_estimate_is_the_gradient_in_expectation_on_a_quadratic():
    """L(w) = 1/2 w'Aw + b'w, gradient Aw + b. One step at lr 1 and no decay moves w by the estimate, the mean of
    q central differences (u'g) u over Gaussian u: unbiased, with variance (|g|^2 + g_j^2) / q per component j.
    With q = 40000 every component lies within 5 of its standard deviations of the true gradient."""
    torch.manual_seed(1)
    a = torch.randn(5, 5, dtype=torch.float64)
    a = a @ a.T + torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    gradient = (a @ w + b).detach()
    before = w.detach().clone()
    q = 40_000
    ZerothOrder([w], lr=1.0, perturbations=q, mu=1e-3, seed=3).step(loss=lambda: 0.5 * w @ a @ w + b @ w)
    estimate = before - w.detach()
    sigma = ((gradient.square().sum() + gradient.square()) / q).sqrt()
    assert ((estimate - gradient).abs() <= 5 * sigma).all(), (estimate, gradient, sigma)
    assert not torch.allclose(estimate, gradient, rtol=0, atol=1e-9)  # an estimate, not the gradient itself


def test_the_zeroth_order_step_needs_the_loss_and_runs_no_backward():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="ZerothOrder.step needs loss="):
        ZerothOrder([w]).step()
    ZerothOrder([w], perturbations=2).step(loss=lambda: (w**2).sum())
    assert w.grad is None
