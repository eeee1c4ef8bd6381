"""Zeroth-order SGD (SPSA): the lowest point on the optimiser-order axis (issue 45), under the same masks.

Each step estimates the gradient from 2q evaluations of the loss, without a backward pass:

    g_hat = (c/q) sum_{i=1..q} [L(theta + mu u_i) - L(theta - mu u_i)] / (2 mu) * u_i
    theta <- theta * (1 - lr * wd) - lr * g_hat

the central-difference randomized gradient estimate (RGE). `directions`:
- "sphere" (2510.00761's choice, for its lower variance): u_i uniform on the unit sphere of the d perturbed
  entries (every updated entry of every parameter together), c = d;
- "gaussian" (MeZO's SPSA): u_i ~ N(0, I), c = 1.
Either way the estimate's expectation is the gradient of the mu-smoothed loss, which for a quadratic is the
gradient exactly (tests/test_optimiser_order.py). q (`perturbations`) and mu (`mu`) are settings.

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


DIRECTIONS = ("sphere", "gaussian")


def _perturbed_entries(shard: torch.Tensor, mask: torch.Tensor | None) -> int:
    return int(mask.expand_as(shard).sum()) if mask is not None else shard.numel()


def _whole(value: torch.Tensor, params) -> torch.Tensor:
    """A sum over a parameter's entries, made whole: summed over the processes where they are sharded
    (FSDP's DTensors), left as it is where every process holds them all."""
    sharded = any(hasattr(p, "device_mesh") for p, _ in params)
    return sum_across(value) if sharded else value


class ZerothOrder(MaskedUpdates, Optimizer):
    zeroth_order = True  # the module calls step(loss=...) and runs no backward (unlearning/module.py)

    def __init__(
        self,
        params,
        lr: float = 1e-5,
        perturbations: int = 1,
        mu: float = 1e-3,
        weight_decay: float = 0.0,
        directions: str = "sphere",
        seed: int = 0,
        masks=None,
        **defaults,
    ):
        name = type(self).__name__
        if not lr > 0 or not mu > 0:
            raise ValueError(f"{name}: lr and mu must be positive, got lr={lr}, mu={mu}")
        if isinstance(perturbations, bool) or not isinstance(perturbations, int) or perturbations < 1:
            raise ValueError(f"{name}: perturbations must be an integer >= 1, got {perturbations!r}")
        if directions not in DIRECTIONS:
            raise ValueError(f"{name}: directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
        super().__init__(params, {"lr": lr, "mu": mu, "weight_decay": weight_decay, **defaults})
        self.perturbations, self.directions, self.seed, self.steps = perturbations, directions, seed, 0
        self._take_masks(masks)

    def _params(self) -> list[tuple[torch.Tensor, dict]]:
        return [(p, group) for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _directions(self, params, generator: torch.Generator) -> tuple[list[torch.Tensor], float]:
        """One direction (a tensor per parameter, zero outside its mask) and the estimate's factor c."""
        directions = []
        for p, _ in params:
            u = torch.randn(local(p).shape, generator=generator, device="cpu").to(local(p).device)
            mask = self.masks.get(p)
            directions.append(u * mask if mask is not None else u)
        if self.directions == "gaussian":
            return directions, 1.0
        # a Gaussian vector over the perturbed entries, normalised, is uniform on their unit sphere
        entries = sum(_perturbed_entries(local(p), self.masks.get(p)) for p, _ in params)
        squares = sum(u.double().square().sum() for u in directions)
        entries, squares = _whole(torch.tensor(float(entries), dtype=torch.float64), params), _whole(squares, params)
        return [u / float(squares.sqrt()) for u in directions], float(entries)

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

    def _estimate(self, loss: Callable[[], torch.Tensor], params, origin) -> list[torch.Tensor]:
        """g_hat, from 2q evaluations of the loss around theta."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        estimate = [torch.zeros_like(theta) for theta in origin]
        mu = self.param_groups[0]["mu"]
        for _ in range(self.perturbations):
            directions, factor = self._directions(params, generator)
            plus = self._loss_at(loss, params, origin, directions, mu)
            minus = self._loss_at(loss, params, origin, directions, -mu)
            slope = factor * (plus - minus) / (2 * mu * self.perturbations)
            for g, u in zip(estimate, directions):
                g.add_(u, alpha=slope)
        return estimate

    def _update(self, p: torch.Tensor, group: dict, theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The weights after the step, before the mask: SGD on the estimate."""
        return theta * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * g

    @torch.no_grad()
    def step(self, closure=None, loss: Callable[[], torch.Tensor] | None = None):
        if loss is None:
            raise ValueError(
                f"{type(self).__name__}.step needs loss=: a function that evaluates the loss at the weights"
            )
        params = self._params()
        origin = [local(p).clone() for p, _ in params]
        for (p, group), theta, g in zip(params, origin, self._estimate(loss, params, origin)):
            stepped = self._update(p, group, theta, g)
            mask = self.masks.get(p)
            local(p).copy_(torch.where(mask, stepped, theta) if mask is not None else stepped)
        self.steps += 1
        return None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "zo_steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = state_dict.pop("zo_steps", 0)
        super().load_state_dict(state_dict)
