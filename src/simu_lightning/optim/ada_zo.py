"""R-AdaZO (Shu et al., "Refining Adaptive Zeroth-Order Optimization at Ease", ICML 2025): the zeroth-order
estimate of zeroth_order.py fed to Adam-like moments, the second moment driven by the first moment's square
(less noisy than the estimate's own square). 2510.00761's hybrid takes its zeroth-order steps with it:

    m     <- b1 m + (1 - b1) g_hat
    v     <- b2 v + (1 - b2) m^2
    theta <- theta * (1 - lr * wd) - lr * m / sqrt(v + eps)

as the method states it, with no bias correction: the first steps are up to 1 / sqrt(1 - b2) times lr per
entry, and settle as v fills. With a mask M the directions are zero outside it, and m, v and theta outside
it are kept bit for bit (`torch.where`). float32 weights only."""

from __future__ import annotations

import torch

from simu_lightning.optim.zeroth_order import ZerothOrder


class AdaZO(ZerothOrder):
    def __init__(self, params, lr: float = 1e-5, betas=(0.9, 0.999), eps: float = 1e-8, **kwargs):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or not eps > 0:
            raise ValueError(f"AdaZO: betas must lie in [0, 1) and eps be positive, got betas={betas}, eps={eps}")
        super().__init__(params, lr=lr, betas=(b1, b2), eps=eps, **kwargs)

    def _update(self, p: torch.Tensor, group: dict, theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        (b1, b2), state = group["betas"], self.state[p]
        m = state.setdefault("m", torch.zeros_like(theta))
        v = state.setdefault("v", torch.zeros_like(theta))
        new_m = m * b1 + g * (1 - b1)
        new_v = v * b2 + new_m.square() * (1 - b2)
        mask = self.masks.get(p)
        m.copy_(torch.where(mask, new_m, m) if mask is not None else new_m)
        v.copy_(torch.where(mask, new_v, v) if mask is not None else new_v)
        step = new_m / (new_v + group["eps"]).sqrt()
        return theta * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * step
