"""2510.00761's hybrid first/zeroth-order optimiser (Lang et al., ICLR 2026, "Downgrade to Upgrade"): N steps
of AdamW on the gradient, then N zeroth-order steps of R-AdaZO (ada_zo.py) on the loss alone, in turn, the
run ending on a zeroth-order round. The first-order steps give the forgetting its precision; the zeroth-order
ones optimise a randomly smoothed loss, which its authors find leaves the forgetting harder to undo (4-bit,
relearning). They report N first-order = N zeroth-order steps as best (20 each in their runs) and the result
insensitive to N; `steps_each` sets N.

The zeroth-order half's lr is `zo_lr`, or lr x `zo_lr_ratio`: R-AdaZO's first steps are up to 32 x its lr per
entry in random directions, and at the first-order lr they wreck the model before it forgets (the
optimiser-order study's tuning found lr / 100 best). Each half keeps its own state (AdamW's moments, R-AdaZO's
m and v) and both take the same masks, so under SIMU every step leaves the entries outside the critical neurons
bit-identical. `zeroth_order` says which half takes the next step: the module then runs no backward and passes
the loss (unlearning/module.py).
`finishing_steps` is how many steps are left to the end of the zeroth-order round that finishes the current
cycle: the stopping rule lets them run before the fit stops (pipeline/stopping.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer

from simu_lightning.optim.ada_zo import AdaZO
from simu_lightning.optim.masked_adamw import MaskedAdamW


class FirstZerothHybrid(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-5,
        steps_each: int = 5,
        zo_lr: float | None = None,
        zo_lr_ratio: float = 1.0,
        weight_decay: float = 0.0,
        betas=(0.9, 0.999),
        perturbations: int = 1,
        mu: float = 1e-3,
        directions: str = "sphere",
        seed: int = 0,
        compact_state: bool = True,
        masks=None,
    ):
        if isinstance(steps_each, bool) or not isinstance(steps_each, int) or steps_each < 1:
            raise ValueError(f"FirstZerothHybrid: steps_each must be an integer >= 1, got {steps_each!r}")
        if not zo_lr_ratio > 0:
            raise ValueError(f"FirstZerothHybrid: zo_lr_ratio must be positive, got {zo_lr_ratio}")
        params = [p for p in params]
        zo_lr = zo_lr or lr * zo_lr_ratio
        super().__init__(params, {"lr": lr, "zo_lr": zo_lr})
        self.first_order = MaskedAdamW(
            params, lr=lr, betas=betas, weight_decay=weight_decay, compact_state=compact_state
        )
        self.zeroth = AdaZO(
            params,
            lr=zo_lr,
            betas=betas,
            perturbations=perturbations,
            mu=mu,
            directions=directions,
            weight_decay=weight_decay,
            seed=seed,
        )
        self.steps_each, self.steps = steps_each, 0
        if masks:
            self.set_masks(masks)

    @property
    def zeroth_order(self) -> bool:
        """Whether the next step is the zeroth-order half's (steps N to 2N - 1 of each cycle of 2N)."""
        return (self.steps // self.steps_each) % 2 == 1

    def finishing_steps(self) -> int:
        """Steps left to the end of the zeroth-order round that closes the current cycle (0 at its end)."""
        return -self.steps % (2 * self.steps_each)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        self.first_order.set_masks(masks)
        self.zeroth.set_masks(masks)

    @property
    def parts(self) -> tuple[Optimizer, Optimizer]:
        """The two halves, each with its own state."""
        return self.first_order, self.zeroth

    @property
    def masks(self) -> dict[torch.Tensor, torch.Tensor]:
        return self.zeroth.masks

    @torch.no_grad()
    def step(self, closure=None, loss: Callable[[], torch.Tensor] | None = None):
        if self.zeroth_order:
            result = self.zeroth.step(loss=loss)
        else:
            with torch.enable_grad():
                result = self.first_order.step(closure)
        self.steps += 1
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.first_order.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "first_order": self.first_order.state_dict(),
            "zeroth_order": self.zeroth.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = state_dict["steps"]
        self.first_order.load_state_dict(state_dict["first_order"])
        self.zeroth.load_state_dict(state_dict["zeroth_order"])
