"""Sophia's per-tensor arithmetic, written once and run either compiled (one fused kernel per tensor) or eagerly.

A Python loop of out-of-place tensor operations reads and writes every state tensor several times per
step (on a 77M-parameter OLMo config, 470 ms against 45 ms for fused AdamW on 2 CPU cores);
`torch.compile` fuses each function below into a single pass over parameter, gradient, momentum and
Hessian (51 ms there, see perf/). Shapes are compiled dynamically, so one compilation serves
every tensor of the same rank, and learning-rate changes do not recompile.

`sign(m) * min(|m| / d, 1)` is written as `clamp(m / d, -1, 1)`: the same value for d > 0.
A masked tensor is updated through `torch.where(mask, new, old)`: entries outside the mask are
written back with their own bits, so they stay bit-identical (never recomputed).
"""

from __future__ import annotations

import logging

import torch

from simu_lightning.utils.memory import is_out_of_memory

log = logging.getLogger(__name__)

# Below this many updated elements an eager step costs less than the first compilation (about 16 s
# cold on 2 CPU cores, 3 s with inductor's on-disk cache), so fused="auto" stays eager.
COMPILE_MIN_ELEMENTS = 10_000_000


def sophia_update(theta, grad, exp_avg, hessian, lr, weight_decay, beta1, rho_bs, eps):
    """In place: m <- beta1 m + (1 - beta1) g; theta <- theta (1 - lr wd) - lr clamp(m / (rho bs h + eps), -1, 1).
    Returns (clipped entries, updated entries)."""
    exp_avg.mul_(beta1).add_(grad * (1 - beta1))  # rounded as beta1 m + (1 - beta1) g always was
    ratio = exp_avg / (rho_bs * hessian + eps)
    theta.mul_(1 - lr * weight_decay).sub_(lr * ratio.clamp(-1, 1))
    return (ratio.abs() >= 1).sum(dtype=torch.int32), ratio.numel()  # int32: a cheaper reduction, exact below 2^31


def masked_sophia_update(theta, grad, exp_avg, hessian, mask, lr, weight_decay, beta1, rho_bs, eps):
    """`sophia_update` on the entries where `mask` (broadcast to theta) is True; the others keep their bits."""
    new_exp_avg = exp_avg * beta1 + grad * (1 - beta1)
    ratio = new_exp_avg / (rho_bs * hessian + eps)
    new_theta = theta * (1 - lr * weight_decay) - lr * ratio.clamp(-1, 1)
    theta.copy_(torch.where(mask, new_theta, theta))
    exp_avg.copy_(torch.where(mask, new_exp_avg, exp_avg))
    return ((ratio.abs() >= 1) & mask).sum(dtype=torch.int32), mask.expand_as(ratio).sum()


def compact_sophia_update(theta, grad, exp_avg, hessian, lr, weight_decay, beta1, rho_bs, eps):
    """`masked_sophia_update` on the critical columns alone (gathered: every entry is updated), with the
    masked update's own arithmetic, so that each entry gets the same bits."""
    new_exp_avg = exp_avg * beta1 + grad * (1 - beta1)
    ratio = new_exp_avg / (rho_bs * hessian + eps)
    theta.copy_(theta * (1 - lr * weight_decay) - lr * ratio.clamp(-1, 1))
    exp_avg.copy_(new_exp_avg)
    return (ratio.abs() >= 1).sum(dtype=torch.int32), ratio.numel()


def hessian_update(hessian, grad, beta2):
    """In place: h <- beta2 h + (1 - beta2) g^2. Returns the sum of the new h (the curvature's scale is
    read here, where h is written anyway, rather than in every step)."""
    hessian.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    return hessian.sum()


def masked_hessian_update(hessian, grad, mask, beta2):
    """`hessian_update` on the entries where `mask` is True; returns the sum of h over them."""
    hessian.copy_(torch.where(mask, hessian * beta2 + grad * grad * (1 - beta2), hessian))
    return torch.where(mask, hessian, 0).sum()


def compact_hessian_update(hessian, grad, beta2):
    """`masked_hessian_update` on the critical columns alone, with its arithmetic; returns the sum of h."""
    hessian.copy_(hessian * beta2 + grad * grad * (1 - beta2))
    return hessian.sum()


class Kernels:
    """The six functions above, compiled when `fused` is on (True, or "auto" with enough elements to
    update), eager otherwise or where compilation fails (no C++ compiler, no Triton): then once a warning
    and the eager path for the rest of the process. Running out of memory is not a failure to compile:
    it is raised as itself, and the kernels stay compiled."""

    FUNCTIONS = {
        f.__name__: f
        for f in (
            sophia_update,
            masked_sophia_update,
            compact_sophia_update,
            hessian_update,
            masked_hessian_update,
            compact_hessian_update,
        )
    }
    _compiled: dict[str, object] = {}  # shared by every optimiser of the process: each compiles once
    _unavailable: str | None = None

    def __init__(self, fused: bool | str):
        if fused not in (True, False, "auto"):
            raise ValueError(f"Sophia: fused must be true, false or 'auto', got {fused!r}")
        self.fused = fused

    def use_compiled(self, elements: int) -> bool:
        wanted = self.fused is True or (self.fused == "auto" and elements >= COMPILE_MIN_ELEMENTS)
        return wanted and Kernels._unavailable is None

    def call(self, name: str, compiled: bool, *args):
        if compiled:
            try:
                fn = Kernels._compiled.get(name)
                if fn is None:
                    fn = Kernels._compiled[name] = torch.compile(self.FUNCTIONS[name], dynamic=True, fullgraph=True)
                return fn(*args)
            except Exception as error:  # compilation failed before any tensor was written
                if is_out_of_memory(error):  # the step's memory, not the compiler: the caller's to handle
                    raise
                Kernels._unavailable = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log.warning(
                    "Sophia: torch.compile is unavailable here (%s); using the eager update", Kernels._unavailable
                )
        return self.FUNCTIONS[name](*args)
