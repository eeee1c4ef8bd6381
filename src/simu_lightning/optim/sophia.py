"""Sophia (SophiaG, Liu et al. 2023) with optional per-parameter masks, as SIMU uses it.

The interface is the official one: `update_hessian()` after a backward on labels sampled from the
model (the Gauss-Newton-Bartlett estimate, see `gnb.py`), `step(bs=...)` after the loss backward,
with `bs` the number of predicted tokens of the estimation batch. Each step:

    theta <- theta * (1 - lr * wd)
    m     <- beta1 * m + (1 - beta1) * grad
    theta <- theta - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)
    h     <- beta2 * h + (1 - beta2) * g_hat^2          (in update_hessian, every k steps)

With a mask M for a parameter, SIMU's three masking points hold exactly:
m_t = M m'_t + (1 - M) m_{t-1}, h_t = M h'_t + (1 - M) h_{t-1}, theta_t = M theta'_t + (1 - M) theta_{t-1};
entries outside the mask stay bit-identical (selected with `torch.where`, never recomputed).

Every state tensor is made with `*_like(p)`, so it is sharded the way its parameter is (FSDP2).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this process holds (a DTensor's local tensor, or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A compact mask (e.g. one row or column that broadcasts over a weight) cut to the block of a
    sharded (DTensor) parameter this process holds, along whichever dimensions it is sharded."""
    if not hasattr(param, "device_mesh"):
        return mask
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    for dim, (size, start) in enumerate(zip(shape, offset)):
        if mask.dim() == len(shape) and mask.shape[dim] != 1:
            mask = mask.narrow(dim, start, size)
    return mask


class Sophia(Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99),
                 rho: float = 0.04, weight_decay: float = 1e-1, *, eps: float = 1e-15, maximize: bool = False,
                 masks: dict[torch.Tensor, torch.Tensor] | None = None):
        if lr < 0:
            raise ValueError(f"Sophia: lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Sophia: betas must be in [0, 1), got {tuple(betas)}")
        if rho < 0:
            raise ValueError(f"Sophia: rho must be >= 0, got {rho}")
        if weight_decay < 0:
            raise ValueError(f"Sophia: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        self.clip_rate = float("nan")  # share of updated entries whose step was clipped at lr
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """Restrict updates of each given parameter to the entries where its mask is True. A mask only
        has to broadcast to the parameter's shape: a down-projection neuron mask is a single row or
        column, never a full-size copy of the weight. For a sharded (DTensor) parameter the mask is
        given for the whole parameter and cut here to the shard this process holds."""
        owned = {p for group in self.param_groups for p in group["params"]}
        for param, mask in masks.items():
            if param not in owned:
                raise ValueError("Sophia.set_masks: a mask was given for a parameter this optimiser does not update")
            local = _local(param)
            mask = local_mask(mask, param)
            try:
                fits = torch.broadcast_shapes(mask.shape, local.shape) == local.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"Sophia.set_masks: mask of shape {tuple(mask.shape)} does not broadcast "
                                 f"to the parameter's shape {tuple(local.shape)}")
            self.masks[param] = mask.to(device=local.device, dtype=torch.bool)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self) -> None:
        """h <- beta2 h + (1 - beta2) g^2, with g the gradient now held by each parameter."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                hessian, grad = _local(self._state(p)["hessian"]), _local(p.grad)
                mask = self.masks.get(p)
                if mask is None:
                    hessian.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                else:
                    updated = hessian * beta2 + (1 - beta2) * grad * grad
                    hessian.copy_(torch.where(mask, updated, hessian))

    @torch.no_grad()
    def step(self, closure=None, bs: int = 5120):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clipped, counted = [], []  # kept on the device: one sync per step, not one per parameter
        for group in self.param_groups:
            lr, wd, rho, eps = group["lr"], group["weight_decay"], group["rho"], group["eps"]
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                theta, grad = _local(p), _local(p.grad)
                exp_avg, hessian = _local(state["exp_avg"]), _local(state["hessian"])
                if group["maximize"]:
                    grad = -grad
                mask = self.masks.get(p)
                new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
                ratio = (new_exp_avg.abs() / (rho * bs * hessian + eps)).clamp(max=1)
                new_theta = theta * (1 - lr * wd) - lr * new_exp_avg.sign() * ratio
                if mask is None:
                    exp_avg.copy_(new_exp_avg)
                    theta.copy_(new_theta)
                    clipped.append((ratio >= 1).sum())
                    counted.append(torch.tensor(ratio.numel(), device=ratio.device))
                else:
                    exp_avg.copy_(torch.where(mask, new_exp_avg, exp_avg))
                    theta.copy_(torch.where(mask, new_theta, theta))
                    clipped.append(((ratio >= 1) & mask).sum())
                    counted.append(mask.expand_as(ratio).sum())
        if counted:
            self.clip_rate = (torch.stack(clipped).sum() / torch.stack(counted).sum().clamp(min=1)).item()
        return loss
