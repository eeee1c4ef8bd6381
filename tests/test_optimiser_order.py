"""The optimiser-order axis (issue 45): SGD, sign-SGD, the zeroth-order estimate, R-AdaZO and the first/zeroth-order
hybrid, each under SIMU's masks with the entries outside the mask bit-identical after real steps."""

import pytest
import torch

from simu_lightning.optim.ada_zo import AdaZO
from simu_lightning.optim.hybrid import FirstZerothHybrid
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
    "zo_gaussian": lambda params: ZerothOrder(params, lr=0.05, mu=1e-2, directions="gaussian", weight_decay=0.01),
    "adazo": lambda params: AdaZO(params, lr=0.01, perturbations=2, mu=1e-2, weight_decay=0.01),
    # one step of each half in turn, so that 4 steps take both twice; full-size AdamW moments, to inspect them
    "hybrid": lambda params: FirstZerothHybrid(params, lr=0.01, steps_each=1, mu=1e-2, compact_state=False),
}


def states(name, optimizer, weight) -> list[torch.Tensor]:
    """The optimiser's state tensors shaped like `weight` (zeroth order keeps none)."""
    keys = {"sgd": ["momentum_buffer"], "signsgd": ["momentum"], "adazo": ["m", "v"]}
    if name == "hybrid":
        first, zeroth = optimizer.first_order.state[weight], optimizer.zeroth.state[weight]
        return [first["exp_avg"], first["exp_avg_sq"], zeroth["m"], zeroth["v"]]
    return [optimizer.state[weight][key] for key in keys.get(name, [])]


@pytest.mark.parametrize("name", OPTIMISERS)
def test_masked_entries_keep_weight_and_state_bit_identical_after_real_steps(name):
    net, optimizer, start, _ = train(OPTIMISERS[name])
    weight, mask = net[2].weight, column_mask(net)[net[2].weight].expand(3, 6)
    assert torch.equal(weight.detach()[~mask], start["2.weight"][~mask])  # the same bits, not merely close
    for state in states(name, optimizer, weight):
        assert torch.equal(state[~mask], torch.zeros(int((~mask).sum())))
        assert state[mask].abs().sum() > 0
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


def test_the_sphere_estimate_is_the_gradient_in_expectation_on_a_quadratic():
    """As above with 2510.00761's directions: u uniform on the unit sphere of R^n, the estimate n (u'g) u. From
    the sphere's fourth moments E[u_i u_k u_l u_m] = (d_ik d_lm + d_il d_km + d_im d_kl) / (n (n + 2)), its
    component j has mean g_j and variance n (|g|^2 + 2 g_j^2) / (n + 2) - g_j^2, over q directions / q."""
    torch.manual_seed(2)
    n, q = 5, 40_000
    a = torch.randn(n, n, dtype=torch.float64)
    a = a @ a.T + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, dtype=torch.float64))
    gradient = (a @ w + b).detach()
    before = w.detach().clone()
    ZerothOrder([w], lr=1.0, perturbations=q, mu=1e-3, seed=4).step(loss=lambda: 0.5 * w @ a @ w + b @ w)
    estimate = before - w.detach()
    g2 = gradient.square()
    sigma = ((n * (g2.sum() + 2 * g2) / (n + 2) - g2) / q).sqrt()
    assert ((estimate - gradient).abs() <= 5 * sigma).all(), (estimate, gradient, sigma)
    assert not torch.allclose(estimate, gradient, rtol=0, atol=1e-9)


def test_the_sphere_counts_only_the_perturbed_entries():
    """Under a mask of 2 of 6 entries the directions live on the unit circle of those 2 (n = 2, not 6): on
    L = 1/2 |w|^2 the estimate's mean is the gradient's masked part, and nothing else moves."""
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64))
    mask = torch.tensor([[True, False, True]]).expand(2, 3) & torch.tensor([[True], [False]])
    before = w.detach().clone()
    optimizer = ZerothOrder([w], lr=1.0, perturbations=20_000, mu=1e-3, seed=5)
    optimizer.set_masks({w: mask})
    optimizer.step(loss=lambda: 0.5 * w.square().sum())
    moved = before - w.detach()
    assert torch.equal(w.detach()[~mask], before[~mask])
    # n (|g|^2 + 2 g_j^2) / (n + 2) - g_j^2 with n = 2, g = (1, 3): variances 2, -> sd sqrt(var / q)
    g = before[mask]
    sigma = ((2 * (g.square().sum() + 2 * g.square()) / 4 - g.square()) / 20_000).sqrt()
    assert ((moved[mask] - g).abs() <= 5 * sigma).all(), (moved[mask], g)


def test_adazo_steps_as_computed_by_hand():
    """One weight, L = (w - 3)^2 / 2: in one dimension u = +-1 and the central difference of a quadratic is
    exact, so g = w - 3. lr 0.1, betas (0.5, 0.75), eps 1e-8, w0 = 1:
    g1 = -2,   m1 = -1,   v1 = 0.25 * 1 = 0.25,                   w1 = 1 + 0.1 * 1 / sqrt(0.25 + 1e-8)
    g2 = w1 - 3, m2 = 0.5 m1 + 0.5 g2, v2 = 0.75 v1 + 0.25 m2^2,  w2 = w1 - 0.1 m2 / sqrt(v2 + 1e-8).
    The losses pass through float32 (as a model's do), so the slopes hold to ~1e-7 relative. Adam's bias
    correction, for one, would give w2 = 1.350 where this gives 1.370."""
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = AdaZO([w], lr=0.1, betas=(0.5, 0.75), eps=1e-8, mu=1e-3)
    for _ in range(2):
        optimizer.step(loss=lambda: 0.5 * (w - 3).square().sum())
    w1 = 1 + 0.1 * 1 / (0.25 + 1e-8) ** 0.5
    m2 = 0.5 * -1 + 0.5 * (w1 - 3)
    v2 = 0.75 * 0.25 + 0.25 * m2**2
    w2 = w1 - 0.1 * m2 / (v2 + 1e-8) ** 0.5
    torch.testing.assert_close(w.detach(), torch.tensor([w2], dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(optimizer.state[w]["m"], torch.tensor([m2], dtype=torch.float64), rtol=0, atol=1e-5)


def test_the_hybrid_takes_steps_each_first_order_steps_then_as_many_zeroth_order_ones():
    """steps_each 2: steps 0-1 are AdamW's (torch's, bit for bit), 2-3 R-AdaZO's (no gradient read), 4-5
    AdamW's again, and `finishing_steps` counts to the end of the zeroth-order round that closes a cycle."""
    net, x, y = net_and_data()
    reference, _, _ = net_and_data()
    reference.load_state_dict(net.state_dict())
    hybrid = FirstZerothHybrid(net.parameters(), lr=0.01, steps_each=2, seed=1)
    adamw = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.0)
    orders, finishing = [], []
    for _ in range(4):
        orders.append("zo" if hybrid.zeroth_order else "fo")
        finishing.append(hybrid.finishing_steps())
        if hybrid.zeroth_order:
            hybrid.zero_grad()
            hybrid.step(loss=lambda: torch.nn.functional.mse_loss(net(x), y))
            assert all(p.grad is None for p in net.parameters())
            continue
        for model, optimizer in ((net, hybrid), (reference, adamw)):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), reference.parameters()))
    assert orders == ["fo", "fo", "zo", "zo"] and finishing == [0, 3, 2, 1]
    assert hybrid.zeroth_order is False and hybrid.finishing_steps() == 0
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), reference.parameters()))  # R-AdaZO moved it
    assert all(int(hybrid.first_order.state[p]["step"]) == 2 for p in net.parameters())


def test_the_hybrids_zeroth_order_lr_is_zo_lr_or_lr_times_the_ratio():
    w = torch.nn.Parameter(torch.zeros(3))
    assert FirstZerothHybrid([w], lr=1e-3, zo_lr_ratio=0.01).zeroth.param_groups[0]["lr"] == 1e-3 * 0.01
    assert FirstZerothHybrid([w], lr=1e-3, zo_lr=5e-4, zo_lr_ratio=0.01).zeroth.param_groups[0]["lr"] == 5e-4
    assert FirstZerothHybrid([w], lr=1e-3).zeroth.param_groups[0]["lr"] == 1e-3  # runs before the ratio: 1
    assert FirstZerothHybrid([w], lr=1e-3).first_order.param_groups[0]["lr"] == 1e-3


def test_the_hybrid_resumes_where_it_stopped():
    net, x, y = net_and_data()
    hybrid = FirstZerothHybrid(net.parameters(), lr=0.01, steps_each=1)
    torch.nn.functional.mse_loss(net(x), y).backward()
    hybrid.step()
    hybrid.step(loss=lambda: torch.nn.functional.mse_loss(net(x), y))
    resumed = FirstZerothHybrid(net.parameters(), lr=0.01, steps_each=1)
    resumed.load_state_dict(hybrid.state_dict())
    assert resumed.steps == 2 and resumed.zeroth_order is False
    assert torch.equal(resumed.zeroth.state[net[0].weight]["v"], hybrid.zeroth.state[net[0].weight]["v"])


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda w: ZerothOrder([w], directions="uniform"), "directions must be one of sphere, gaussian"),
        (lambda w: AdaZO([w], betas=(0.9, 1.0)), r"AdaZO: betas must lie in \[0, 1\)"),
        (lambda w: FirstZerothHybrid([w], steps_each=0), "steps_each must be an integer >= 1, got 0"),
        (lambda w: FirstZerothHybrid([w], zo_lr_ratio=0), "zo_lr_ratio must be positive, got 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(make, problem):
    with pytest.raises(ValueError, match=problem):
        make(torch.nn.Parameter(torch.zeros(3)))
