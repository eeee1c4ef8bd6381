"""Masked AdamW: SIMU's mask with a first-order optimiser."""

import pytest
import torch

from simu_lightning.optim import MaskedAdamW

SETTINGS = dict(lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)


def train(optimizer_class, steps=5, masks=None, **options):
    """A two-layer net on a fixed regression problem, `steps` real backward + step calls."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    kwargs = {"masks": masks(net), **options} if masks else {}
    optimizer = optimizer_class(net.parameters(), **SETTINGS, **kwargs)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    start = {name: p.detach().clone() for name, p in net.named_parameters()}
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
    return net, optimizer, start


def column_mask(net):  # neurons 1 and 4 of the second layer's input: a column mask, as SIMU's down projections
    return {net[2].weight: torch.tensor([[False, True, False, False, True, False]])}


@pytest.mark.parametrize("compact_state", [True, False], ids=["compact", "full"])
def test_masked_entries_keep_parameter_and_both_moments_bit_identical_after_real_steps(compact_state):
    net, optimizer, start = train(MaskedAdamW, masks=column_mask, compact_state=compact_state)
    weight, mask = net[2].weight, column_mask(net)[net[2].weight].expand(3, 6)
    state = {k: optimizer.state_of(weight, k) for k in ("exp_avg", "exp_avg_sq")}
    assert optimizer.state[weight]["exp_avg"].shape == ((3, 2) if compact_state else (3, 6))
    assert torch.equal(weight.detach()[~mask], start["2.weight"][~mask])  # not merely close: the same bits
    assert torch.equal(state["exp_avg"][~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(state["exp_avg_sq"][~mask], torch.zeros(int((~mask).sum())))
    assert not torch.equal(weight.detach()[mask], start["2.weight"][mask])  # the critical columns did move
    assert (state["exp_avg_sq"][mask] > 0).all()


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_the_compact_moments_give_the_masked_full_size_step_bit_for_bit(foreach):
    """Column masks of odd widths (vectorised loops and their tails), a row mask, real steps: the compact
    state's weights and moments against the full-size masked state's, compared as integers."""
    runs = {}
    for compact_state in (True, False):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 37), torch.nn.Tanh(), torch.nn.Linear(37, 19))
        masks = {net[2].weight: torch.rand(1, 37) < 0.3, net[0].weight: torch.rand(37, 1) < 0.3}
        optimizer = MaskedAdamW(net.parameters(), **SETTINGS, masks=masks, compact_state=compact_state, foreach=foreach)
        x, y = torch.randn(16, 5), torch.randn(16, 19)
        for _ in range(4):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
        runs[compact_state] = net, optimizer
    (net, compact), (reference, full) = runs[True], runs[False]
    assert set(compact.columns) == {net[2].weight, net[0].weight}
    for (name, a), b in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(a.detach().view(torch.int32), b.detach().view(torch.int32)), name
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(
                compact.state_of(a, moment).view(torch.int32), full.state_of(b, moment).view(torch.int32)
            )


def test_unmasked_parameters_follow_torch_adamw_exactly():
    """Before the masked layer's gradients differ, every step is torch's own: the first layer, whose
    inputs do not depend on the mask's effect until step 2, matches at step 1 bit for bit; with an
    all-True mask the whole run does."""
    masked, _, _ = train(MaskedAdamW, steps=5, masks=lambda net: {net[2].weight: torch.ones(1, 6, dtype=torch.bool)})
    plain, _, _ = train(torch.optim.AdamW, steps=5)
    for (name, a), (_, b) in zip(masked.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), name
    one_masked, _, _ = train(MaskedAdamW, steps=1, masks=column_mask)
    one_plain, _, _ = train(torch.optim.AdamW, steps=1)
    assert torch.equal(one_masked[0].weight, one_plain[0].weight)
    keep = column_mask(one_masked)[one_masked[2].weight].expand(3, 6)
    assert torch.equal(one_masked[2].weight[keep], one_plain[2].weight[keep])


def test_a_mask_that_does_not_broadcast_names_its_shape():
    net = torch.nn.Linear(4, 6)
    with pytest.raises(ValueError, match=r"MaskedAdamW.set_masks: mask of shape \(1, 5\) does not broadcast"):
        MaskedAdamW(net.parameters(), masks={net.weight: torch.ones(1, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not update"):
        MaskedAdamW([net.bias], masks={net.weight: torch.ones(1, 4, dtype=torch.bool)})


def test_a_step_with_a_closure_holds_the_mask_too():
    """Lightning's automatic optimisation steps with a closure that computes the gradients: the mask
    must hold although no gradient exists when the step begins (set_to_none zeroing)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    mask = torch.tensor([True, False, True, False]).view(1, 4)
    optimizer = MaskedAdamW([net.weight], lr=0.1, masks={net.weight: mask})
    start = net.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)

        def closure():
            loss = net(torch.randn(8, 4)).square().mean()
            loss.backward()
            return loss

        assert optimizer.step(closure) is not None
    kept = mask.expand(3, 4)
    assert torch.equal(net.weight.detach()[~kept], start[~kept]) and not torch.equal(net.weight[kept], start[kept])


def test_a_loaded_compact_state_is_refused_for_other_columns_of_the_same_count():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 6))
    first = torch.tensor([[True, False, True, False, False, False]])
    opt = MaskedAdamW([w], lr=0.01, masks={w: first})
    w.grad = torch.randn(4, 6)
    opt.step()
    saved = opt.state_dict()
    resumed = MaskedAdamW([w], lr=0.01)
    resumed.load_state_dict(saved)
    resumed.set_masks({w: first})  # its own columns: taken
    shifted = MaskedAdamW([w], lr=0.01)
    shifted.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"holds 2 critical columns \[0, 2\], not the ones of these masks \[4, 5\]"):
        shifted.set_masks({w: torch.tensor([[False, False, False, False, True, True]])})
