"""Sign-SGD with momentum (signum, Bernstein et al. 2018), whose updates are confined to a mask: the
"gradient compression" downgrade of 2510.00761 (a 1-bit step), under the same masks as the others.

    theta <- theta * (1 - lr * wd)
    m     <- beta * m + (1 - beta) * grad
    theta <- theta - lr * sign(m)

With a mask M: m_t = M m'_t + (1 - M) m_{t-1}, theta_t = M theta'_t + (1 - M) theta_{t-1}, entries outside
the mask bit-identical (`torch.where`). beta = 0 is plain sign-SGD. float32 weights only."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from simu_lightning.optim.masks import MaskedUpdates, local


class SignSGD(MaskedUpdates, Optimizer):
    def __init__(self, params, lr: float = 1e-5, beta: float = 0.9, weight_decay: float = 0.0, masks=None):
        if not lr > 0:
            raise ValueError(f"SignSGD: lr must be positive, got {lr}")
        if not 0 <= beta < 1:
            raise ValueError(f"SignSGD: beta must be in [0, 1), got {beta}")
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay})
        self._take_masks(masks)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, decay = group["lr"], group["beta"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                weights, grad = local(p), local(p.grad)
                momentum = self.state[p].setdefault("momentum", torch.zeros_like(weights))
                new_momentum = momentum * beta + grad * (1 - beta)
                new_weights = weights * (1 - lr * decay) - lr * torch.sign(new_momentum)
                mask = self.masks.get(p)
                if mask is not None:
                    new_momentum = torch.where(mask, new_momentum, momentum)
                    new_weights = torch.where(mask, new_weights, weights)
                momentum.copy_(new_momentum)
                weights.copy_(new_weights)
        return loss
