"""Zeroth-order SGD (SPSA): the lowest point on the optimiser-order axis (issue 45), under the same masks.

Each step estimates the gradient from 2q evaluations of the loss, without a backward pass:

    g_hat = (1/q) sum_{i=1..q} [L(theta + mu u_i) - L(theta - mu u_i)] / (2 mu) * u_i,   u_i ~ N(0, I)
    theta <- theta * (1 - lr * wd) - lr * g_hat

the central-difference randomized gradient estimate with Gaussian directions (for a quadratic loss its
expectation is the gradient exactly: tests/test_optimiser_order.py). 2510.00761 states its estimator in its
method section, which could not be read offline here (docs/guide.md, "Optimiser order"); this is the
standard SPSA/RGE form it builds on, with q (`perturbations`) and mu (`mu`) as settings.

With a mask M the directions are zero outside it (u_i * M), so the loss is only ever evaluated at weights
that differ from theta inside the mask, and theta_t = M theta'_t + (1 - M) theta_{t-1} holds bit for bit
(`torch.where`; the weights are restored from a copy after each evaluation, never by subtracting). The
directions come from a generator seeded by (seed, step), so a run is reproducible whatever else draws. With
several processes each evaluation's loss is averaged over them, so every process takes the same step.
float32 weights only."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer

from simu_lightning.distributed import sum_across
from simu_lightning.optim.masks import MaskedUpdates, local
from simu_lightning.utils.processes import rank_and_world


class ZerothOrder(MaskedUpdates, Optimizer):
    zeroth_order = True  # the module calls step(loss=...) and runs no backward (unlearning/module.py)

    def __init__(
        self,
        params,
        lr: float = 1e-5,
        perturbations: int = 1,
        mu: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        masks=None,
    ):
        if not lr > 0 or not mu > 0:
            raise ValueError(f"ZerothOrder: lr and mu must be positive, got lr={lr}, mu={mu}")
        if isinstance(perturbations, bool) or not isinstance(perturbations, int) or perturbations < 1:
            raise ValueError(f"ZerothOrder: perturbations must be an integer >= 1, got {perturbations!r}")
        super().__init__(params, {"lr": lr, "mu": mu, "weight_decay": weight_decay})
        self.perturbations, self.seed, self.steps = perturbations, seed, 0
        self._take_masks(masks)

    def _params(self) -> list[tuple[torch.Tensor, dict]]:
        return [(p, group) for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _directions(self, params, generator: torch.Generator) -> list[torch.Tensor]:
        directions = []
        for p, _ in params:
            u = torch.randn(local(p).shape, generator=generator, device="cpu").to(local(p).device)
            mask = self.masks.get(p)
            directions.append(u * mask if mask is not None else u)
        return directions

    def _loss_at(self, loss: Callable[[], torch.Tensor], params, origin, directions, scale: float) -> float:
        """The loss at theta + scale * u (every process's mean), the weights put back from their copy after."""
        for (p, _), theta, u in zip(params, origin, directions):
            local(p).copy_(theta + scale * u)
        try:
            value = loss().detach().float()
        finally:
            for (p, _), theta in zip(params, origin):
                local(p).copy_(theta)
        return float(sum_across(value) / rank_and_world()[1])

    @torch.no_grad()
    def step(self, closure=None, loss: Callable[[], torch.Tensor] | None = None):
        if loss is None:
            raise ValueError("ZerothOrder.step needs loss=: a function that evaluates the loss at the weights")
        params = self._params()
        origin = [local(p).clone() for p, _ in params]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        estimate = [torch.zeros_like(theta) for theta in origin]
        mu = self.param_groups[0]["mu"]
        for _ in range(self.perturbations):
            directions = self._directions(params, generator)
            plus = self._loss_at(loss, params, origin, directions, mu)
            minus = self._loss_at(loss, params, origin, directions, -mu)
            slope = (plus - minus) / (2 * mu * self.perturbations)
            for g, u in zip(estimate, directions):
                g.add_(u, alpha=slope)
        for (p, group), theta, g in zip(params, origin, estimate):
            stepped = theta * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * g
            mask = self.masks.get(p)
            local(p).copy_(torch.where(mask, stepped, theta) if mask is not None else stepped)
        self.steps += 1
        return None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "zo_steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = state_dict.pop("zo_steps", 0)
        super().load_state_dict(state_dict)
