"""Sophia against steps worked out by hand (see the numbers in the comments)."""

import functools

import pytest
import torch

from simu_lightning.optim import Sophia, sample_labels, sampled_label_loss
from simu_lightning.optim import fused as fused_kernels
from simu_lightning.data.formatting import IGNORE_INDEX

LR, BETAS, RHO, WD, BS = 0.1, (0.9, 0.99), 0.5, 0.1, 2


# every hand-computed step runs on both paths: eager, and compiled into one kernel per tensor
FUSED = pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])


@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (no C++ compiler, say), or None."""
    try:
        torch.compile(lambda x: x * 2, fullgraph=True)(torch.ones(2))
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


@pytest.fixture(autouse=True)
def compiled_path_ran(request, monkeypatch):
    """A compiled case must run the compiled kernels: where compilation is unavailable it is skipped
    with the reason, not run eagerly a second time (Sophia would fall back silently but for a warning)."""
    callspec = getattr(request.node, "callspec", None)
    if not (callspec and callspec.params.get("fused") is True):
        yield
        return
    if compile_unavailable():
        pytest.skip(f"torch.compile is unavailable here ({compile_unavailable()})")
    calls = []
    real = fused_kernels.Kernels.call
    monkeypatch.setattr(
        fused_kernels.Kernels,
        "call",
        lambda self, name, compiled, *a: calls.append(compiled) or real(self, name, compiled, *a),
    )
    yield
    assert calls and all(calls), "the compiled case called the eager kernels"
    assert fused_kernels.Kernels._unavailable is None, fused_kernels.Kernels._unavailable


def one_step(masks=None, fused=False):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Sophia(
        [p], lr=LR, betas=BETAS, rho=RHO, weight_decay=WD, masks=None if masks is None else {p: masks}, fused=fused
    )
    p.grad = torch.tensor([1.0, 4.0, 0.0])  # gradient on sampled labels
    opt.update_hessian()  # h = 0.01 * g^2 = [0.01, 0.16, 0]
    p.grad = torch.tensor([0.2, -0.4, 0.3])  # loss gradient
    opt.step(bs=BS)
    return p, opt


@FUSED
def test_hessian_update_and_step_match_hand_computation(fused):
    p, opt = one_step(fused=fused)
    state = opt.state[p]
    torch.testing.assert_close(state["hessian"], torch.tensor([0.01, 0.16, 0.0]))
    # m = 0.1 * grad
    torch.testing.assert_close(state["exp_avg"], torch.tensor([0.02, -0.04, 0.03]))
    # rho*bs*h = [0.01, 0.16, 0]: ratio = [min(2, 1), 0.25, min(3e13, 1)] = [1, 0.25, 1]
    # theta = theta * 0.99 - 0.1 * sign(m) * ratio = [0.99 - 0.1, -1.98 + 0.025, 0.495 - 0.1]
    torch.testing.assert_close(p.detach(), torch.tensor([0.89, -1.955, 0.395]))
    assert opt.clip_rate == pytest.approx(2 / 3)


@FUSED
def test_second_hessian_update_is_an_exponential_average(fused):
    p, opt = one_step(fused=fused)
    p.grad = torch.tensor([2.0, 0.0, 1.0])
    opt.update_hessian()  # 0.99 * [0.01, 0.16, 0] + 0.01 * [4, 0, 1]
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([0.0499, 0.1584, 0.01]))


@FUSED
def test_masked_entries_keep_parameter_momentum_and_hessian_bit_identical(fused):
    p, opt = one_step(masks=torch.tensor([True, False, True]), fused=fused)
    state = opt.state[p]
    assert p[1].item() == -2.0  # no update, not even weight decay
    assert state["exp_avg"][1].item() == 0.0 and state["hessian"][1].item() == 0.0
    torch.testing.assert_close(p.detach()[[0, 2]], torch.tensor([0.89, 0.395]))
    assert opt.clip_rate == pytest.approx(1.0)  # both updated entries were clipped


@pytest.mark.parametrize("compact_state", [True, False], ids=["compact", "full"])
@FUSED
def test_a_column_mask_broadcasts_over_a_weight(fused, compact_state):
    w = torch.nn.Parameter(torch.randn(3, 4))
    mask = torch.tensor([[False, True, False, False]])
    opt = Sophia([w], lr=0.01, masks={w: mask}, fused=fused, compact_state=compact_state)
    w.grad = torch.randn(3, 4)
    opt.update_hessian()
    w.grad = torch.randn(3, 4)
    opt.step(bs=8)
    before = w.detach().clone(), opt.state_of(w, "exp_avg").clone(), opt.state_of(w, "hessian").clone()
    w.grad = torch.randn(3, 4) * 1e3  # large enough to move every entry it reaches
    opt.update_hessian()
    opt.step(bs=8)
    after = w.detach(), opt.state_of(w, "exp_avg"), opt.state_of(w, "hessian")
    # the compact state holds the critical column alone
    assert opt.state[w]["exp_avg"].shape == ((3, 1) if compact_state else (3, 4))
    for old, new in zip(before, after):
        assert (new[:, 1] != old[:, 1]).all()
        # bit-identical: compared as integers, so even -0.0 against 0.0 or a NaN would show
        assert torch.equal(new[:, [0, 2, 3]].view(torch.int32), old[:, [0, 2, 3]].view(torch.int32))


def random_steps(opt, params, read: tuple[str, ...], steps=3, scale=1.0) -> list:
    """`steps` Hessian updates and steps on random gradients; the optimiser's `read` attributes after each."""
    stats = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.update_hessian()
        for p in params:
            p.grad = torch.randn_like(p) * scale
        opt.step(bs=16)
        stats += [getattr(opt, name) for name in read]
    return stats


def test_the_compiled_step_equals_the_eager_step_on_random_tensors():
    """Several steps with masks of both kinds and a sign-flipping gradient; compiled and eager agree to
    rounding, and their clip rates and Hessian scales too."""
    if compile_unavailable():
        pytest.skip(f"torch.compile is unavailable here ({compile_unavailable()})")
    torch.manual_seed(0)
    shapes, runs = [(64, 32), (32,), (16, 64)], {}
    for fused in (False, True):
        torch.manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        masks = {params[0]: torch.rand(1, 32) < 0.3, params[1]: torch.rand(32) < 0.5}
        opt = Sophia(params, lr=0.01, rho=0.05, weight_decay=0.1, masks=masks, fused=fused)
        stats = random_steps(opt, params, ("clip_rate", "hessian_mean"))
        runs[fused] = (
            [p.detach() for p in params] + [opt.state[p][k] for p in params for k in ("exp_avg", "hessian")],
            stats,
        )
    assert fused_kernels.Kernels._unavailable is None and fused_kernels.Kernels._compiled  # the kernels did compile
    for eager, compiled in zip(runs[False][0], runs[True][0]):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-5)


@FUSED
def test_the_compact_state_gives_the_masked_full_size_update_bit_for_bit(fused):
    """A column mask and a row mask (GPT-2's neurons), rho chosen at the first step, three steps: the
    compact state's parameters, moments, win rates and Hessian scales against the full-size masked state's,
    compared as integers; a mask of single entries keeps the full-size state."""
    runs = {}
    for compact_state in (True, False):
        torch.manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(16, 24)),
            torch.nn.Parameter(torch.randn(24, 16)),
            torch.nn.Parameter(torch.randn(8, 8)),
        ]
        masks = {
            params[0]: torch.rand(1, 24) < 0.2,
            params[1]: torch.rand(24, 1) < 0.2,
            params[2]: torch.rand(8, 8) < 0.5,
        }
        opt = Sophia(
            params, lr=0.01, rho="auto", weight_decay=0.1, masks=masks, fused=fused, compact_state=compact_state
        )
        stats = random_steps(opt, params, ("win_rate", "rho"), scale=10)
        runs[compact_state] = opt, params, stats
    (compact_opt, compact, compact_stats), (full_opt, full, full_stats) = runs[True], runs[False]
    assert set(compact_opt.columns) == set(compact[:2])  # the single-entry mask stays full size
    assert compact_opt.state[compact[0]]["hessian"].numel() < compact[0].numel()
    for a, b in zip(compact, full):
        assert torch.equal(a.detach().view(torch.int32), b.detach().view(torch.int32))
        for name in ("exp_avg", "hessian"):
            assert torch.equal(
                compact_opt.state_of(a, name).view(torch.int32), full_opt.state_of(b, name).view(torch.int32)
            )
    assert compact_stats == full_stats


def test_a_compact_state_survives_a_checkpoint_and_a_new_mask():
    """A compact state saved and loaded before its masks are set (Lightning restores the optimiser before
    the attribution callback sets the masks) keeps its values; a new mask re-lays it out (the columns both
    masks share keep their moments); a compact state whose masks are never set, or set to other columns,
    is refused in one line."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 6))
    first = torch.tensor([[True, False, True, False, False, False]])
    opt = Sophia([w], lr=0.01, rho=0.1, masks={w: first})
    w.grad = torch.randn(4, 6)
    opt.update_hessian()
    opt.step(bs=4)
    saved, before = opt.state_dict(), opt.state_of(w, "exp_avg").clone()
    resumed = Sophia([w], lr=0.01, rho=0.1)
    resumed.load_state_dict(saved)
    resumed.set_masks({w: first})
    assert torch.equal(resumed.state_of(w, "exp_avg"), before)
    resumed.set_masks({w: torch.tensor([[False, False, True, True, False, False]])})
    moved = resumed.state_of(w, "exp_avg")
    assert torch.equal(moved[:, 2], before[:, 2]) and not moved[:, [0, 1, 3, 4, 5]].any()
    unmasked = Sophia([w], lr=0.01, rho=0.1)
    unmasked.load_state_dict(saved)
    with pytest.raises(ValueError, match="^Sophia: the loaded state is compact .*set the masks it was saved with"):
        unmasked.step(bs=4)
    other = Sophia([w], lr=0.01, rho=0.1)
    other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"the loaded state holds 2 critical columns \[0, 2\], not the ones"):
        other.set_masks({w: torch.tensor([[True, True, True, False, False, False]])})
    # as many columns, other ones: the moments would move onto neurons they were never of
    shifted = Sophia([w], lr=0.01, rho=0.1)
    shifted.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"holds 2 critical columns \[0, 2\], not the ones of these masks \[1, 3\]"):
        shifted.set_masks({w: torch.tensor([[False, True, False, True, False, False]])})


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
    # position t's logits predict label t + 1; only labels 2 and 3 are answer tokens
    probs = torch.tensor([[[0.98, 0.01, 0.01], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 1]])
    loss, count = sampled_label_loss(probs.log(), labels, torch.full((1, 3), 0.5))
    # u = 0.5: position 1 samples label 2 (cdf 0.1, 0.3, 1), position 2 label 0 (cdf 0.6, ...)
    assert count == 2
    assert loss.item() == pytest.approx(-(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.6))).item() / 2)


@FUSED
def test_win_rate_and_hessian_scale_match_hand_computation(fused):
    _, opt = one_step(fused=fused)
    # ratio = [1 (clipped), 0.25, 1 (clipped)]: one of three entries took the curvature-scaled step
    assert opt.win_rate == pytest.approx(1 / 3) and opt.clip_rate + opt.win_rate == pytest.approx(1.0)
    # bs * h = [0.02, 0.32, 0]: mean 0.34 / 3
    assert opt.hessian_mean == pytest.approx(0.34 / 3)
    _, masked = one_step(masks=torch.tensor([False, True, False]), fused=fused)
    assert masked.win_rate == pytest.approx(1.0)  # only entry 1 counts, and it was not clipped


def toy(rho="auto", target=0.3, calibration_step=1, mask=None, size=1000):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(size))
    opt = Sophia(
        [p],
        lr=0.01,
        rho=rho,
        weight_decay=0.0,
        target_win_rate=target,
        calibration_step=calibration_step,
        masks=None if mask is None else {p: mask},
    )
    return p, opt


def toy_step(p, opt):
    p.grad = torch.randn_like(p)
    opt.update_hessian()
    p.grad = torch.randn_like(p) * torch.rand_like(p) * 3
    opt.step(bs=4)


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_rho_auto_reaches_its_target_win_rate_and_then_stays_fixed(target):
    p, opt = toy(target=target)
    toy_step(p, opt)
    assert isinstance(opt.rho, float) and abs(opt.win_rate - target) <= 1 / 1000
    # the chosen rho sits at the target quantile of |m| / (bs h)
    m, h = opt.state[p]["exp_avg"], opt.state[p]["hessian"]
    assert ((m.abs() < opt.rho * 4 * h + 1e-15).float().mean().item()) == pytest.approx(target, abs=1e-3)
    chosen = opt.rho
    toy_step(p, opt)
    assert opt.rho == chosen and opt.state_dict()["param_groups"][0]["rho"] == chosen


def test_rho_auto_counts_only_the_unmasked_entries():
    mask = torch.arange(1000) % 4 == 0
    p, opt = toy(mask=mask)
    toy_step(p, opt)
    assert abs(opt.win_rate - 0.3) <= 1 / 250


def test_rho_auto_waits_for_its_calibration_step_clipping_everything_until_then():
    p, opt = toy(calibration_step=3)
    for _ in (1, 2):
        toy_step(p, opt)
        assert opt.rho == "auto" and opt.win_rate == 0.0
    toy_step(p, opt)
    assert isinstance(opt.rho, float) and abs(opt.win_rate - 0.3) <= 1 / 1000


def test_a_batch_without_answer_tokens_leaves_the_hessian_finite():
    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = Sophia([w], lr=0.01)
    logits = (torch.ones(2, 4, 1) * w.sum(0)).expand(2, 4, 3) + w[:4, 0].view(1, 4, 1)
    labels = torch.full((2, 4), IGNORE_INDEX)  # every answer truncated away
    loss, count = sampled_label_loss(logits, labels, torch.full((2, 3), 0.5))
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    opt.update_hessian()
    assert torch.isfinite(opt.state[w]["hessian"]).all() and w.grad.abs().sum() == 0


def test_without_a_compiler_the_step_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    from simu_lightning.optim import fused

    def no_compiler(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return compiled

    monkeypatch.setattr(fused.torch, "compile", no_compiler)
    monkeypatch.setattr(fused.Kernels, "_compiled", {})
    monkeypatch.setattr(fused.Kernels, "_unavailable", None)
    with caplog.at_level("WARNING", logger=fused.__name__):
        p, opt = one_step(fused=True)
    torch.testing.assert_close(p.detach(), torch.tensor([0.89, -1.955, 0.395]))  # the hand-computed step
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "torch.compile is unavailable here (RuntimeError: InvalidCxxCompiler" in warnings[0]
