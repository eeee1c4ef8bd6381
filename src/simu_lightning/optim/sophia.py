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

Health signals, as the official training script logs them: `clip_rate`, the share of updated
(unmasked) entries whose step was clipped at lr, and `win_rate` = 1 - clip_rate, the share that took
the curvature-scaled step. SophiaG's authors tune rho so that the win rate stays within 0.1-0.5; below
that, Sophia is sign-momentum and the Hessian estimate does nothing. `rho="auto"` chooses rho at the
first step after a Hessian estimate (or at step `calibration_step`, if later) so that that step's win
rate equals `target_win_rate`, and keeps it fixed afterwards (it is saved in the optimiser's state dict
with the param groups). Until then rho counts as 0: every entry takes the clipped step. A later
calibration step matters on a memorised target, whose Gauss-Newton curvature starts near zero
(p(1 - p) with p ~ 1) and grows by orders of magnitude in the first few steps of unlearning.

The per-tensor arithmetic lives in `fused.py`: compiled into one kernel per tensor when `fused` is on
(True, or "auto" once the updated parameters hold 10M elements or more), eager otherwise.

Every state tensor is made with `*_like(p)`, so it is sharded the way its parameter is (FSDP2). With
`compact_state` (the default) a parameter masked to whole columns or rows (a down projection's critical
neurons) keeps m and h for those alone (`compact.py`): the updated entries get the masked update's bits,
the others are never written. `state_of(p, name)` gives a state tensor at the parameter's full size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from simu_lightning.distributed import sum_across
from simu_lightning.optim import compact
from simu_lightning.optim.fused import Kernels
from simu_lightning.optim.masks import checked_masks, local
from simu_lightning.optim.master import is_low_precision, master_copy, write_back

AUTO = "auto"


class Sophia(compact.CompactState, Optimizer):
    MOMENTS = ("exp_avg", "hessian")

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float | str = 0.04,
        weight_decay: float = 1e-1,
        *,
        eps: float = 1e-15,
        maximize: bool = False,
        target_win_rate: float = 0.3,
        calibration_step: int = 1,
        masks: dict[torch.Tensor, torch.Tensor] | None = None,
        fused: bool | str = "auto",
        compact_state: bool = True,
    ):
        if lr < 0:
            raise ValueError(f"Sophia: lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Sophia: betas must be in [0, 1), got {tuple(betas)}")
        if rho != AUTO and (isinstance(rho, str) or rho < 0):
            raise ValueError(f"Sophia: rho must be >= 0 or 'auto', got {rho!r}")
        if not 0 < target_win_rate < 1:
            raise ValueError(f"Sophia: target_win_rate must be in (0, 1), got {target_win_rate}")
        if calibration_step < 1:
            raise ValueError(f"Sophia: calibration_step must be >= 1, got {calibration_step}")
        if weight_decay < 0:
            raise ValueError(f"Sophia: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            rho=rho,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            target_win_rate=target_win_rate,
            calibration_step=calibration_step,
        )
        super().__init__(params, defaults)
        self.kernels = Kernels(fused)
        self._hessian_sums: dict[torch.Tensor, torch.Tensor] = {}  # sum of h over each parameter's updated entries
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        self.compact_state = compact_state
        self.columns: dict[torch.Tensor, compact.Columns] = {}  # parameters whose state is compact
        self.clip_rate = float("nan")  # share of updated entries whose step was clipped at lr
        self.win_rate = float("nan")  # share of updated entries whose step was not clipped
        self.hessian_mean = float("nan")  # mean of bs * h over the updated entries (the curvature's scale)
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """Restrict updates of each given parameter to the entries where its mask is True. A mask only
        has to broadcast to the parameter's shape: a down-projection neuron mask is a single row or
        column, never a full-size copy of the weight. For a sharded (DTensor) parameter the mask is
        given for the whole parameter and cut here to the shard this process holds."""
        for param, mask in checked_masks(self, masks).items():
            self.masks[param] = mask
            self._hessian_sums.pop(param, None)  # summed over the old mask
            self._lay_out(param, mask)

    def _state(self, p: torch.Tensor) -> dict:
        """p's state, made at its first use: the step counter, m and h in fp32 whatever p's dtype (and
        whatever default dtype Lightning's bf16-true sets around a step), and an fp32 master copy of a
        bf16 or fp16 p (master.py)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for name in ("exp_avg", "hessian"):
                state[name] = (
                    compact.zeros(p, self.columns[p], torch.float32)
                    if p in self.columns
                    else torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                )
            if is_low_precision(p):
                state["master"] = master_copy(p, self.columns.get(p))
            self.record_columns(p)
        return state

    def _local(self, p: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """The local shard of a full-size tensor of `p` (its gradient, say), in `p`'s state layout, in fp32."""
        tensor = local(tensor)
        return (self.columns[p].gather(tensor) if p in self.columns else tensor).float()

    @torch.no_grad()
    def update_hessian(self) -> None:
        """h <- beta2 h + (1 - beta2) g^2, with g the gradient now held by each parameter."""
        self._check_layouts()
        compiled = self._compiled()
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["hessian_updates"] = state.get("hessian_updates", 0) + 1
                hessian, grad = local(state["hessian"]), self._local(p, p.grad)
                mask = self.masks.get(p)
                if p in self.columns:
                    self._hessian_sums[p] = self.kernels.call("compact_hessian_update", compiled, hessian, grad, beta2)
                elif mask is None:
                    self._hessian_sums[p] = self.kernels.call("hessian_update", compiled, hessian, grad, beta2)
                else:
                    self._hessian_sums[p] = self.kernels.call(
                        "masked_hessian_update", compiled, hessian, grad, mask, beta2
                    )

    def _compiled(self) -> bool:
        """Whether this step runs the compiled kernels (decided on the elements that have a gradient)."""
        elements = sum(local(p).numel() for g in self.param_groups for p in g["params"] if p.grad is not None)
        return self.kernels.use_compiled(elements)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._hessian_sums.clear()  # the loaded h replaces the one they were summed from

    def _hessian_sum(self, p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Sum of h over the parameter's updated entries, as the last Hessian update left it."""
        if p not in self._hessian_sums:  # e.g. restored from a checkpoint, not updated since
            hessian = local(self.state[p]["hessian"])
            whole = mask is None or p in self.columns  # a compact h holds the updated entries only
            self._hessian_sums[p] = hessian.sum() if whole else torch.where(mask, hessian, 0).sum()
        return self._hessian_sums[p]

    @property
    def rho(self) -> float | str:
        """rho of the first group ("auto" until it is calibrated)."""
        return self.param_groups[0]["rho"]

    def _updates(self):
        """Per updated parameter: (param, group, new momentum, local mask or None), nothing written yet; a
        compact state's momentum is its critical columns' alone, with no mask."""
        for group in self.param_groups:
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = self._local(p, p.grad)
                if group["maximize"]:
                    grad = -grad
                exp_avg = local(self._state(p)["exp_avg"])
                mask = None if p in self.columns else self.masks.get(p)
                yield p, group, exp_avg * beta1 + (1 - beta1) * grad, mask

    @torch.no_grad()
    def calibrate_rho(self, bs: int) -> float | None:
        """Choose rho for the groups that ask for "auto" so that this step's win rate (share of
        updated entries with |m| < rho * bs * h + eps) equals their `target_win_rate`; bisection on
        log rho, counts summed over processes, so every process picks the same value. None (and rho
        left on "auto") while there is no Hessian estimate yet."""
        groups = [g for g in self.param_groups if g["rho"] == AUTO]
        if not groups or not any(self.state[p].get("hessian_updates", 0) for g in groups for p in g["params"]):
            return None
        steps = [self.state[p]["step"] for g in groups for p in g["params"] if "step" in self.state[p]]
        if (int(max(steps)) if steps else 0) + 1 < groups[0]["calibration_step"]:
            return None  # until then every entry is clipped (rho counts as 0)
        target = groups[0]["target_win_rate"]

        def win_share(rho: float) -> float:
            # recomputed from the state at each trial: no copy of m or h is held meanwhile
            wins, total = [], []
            for p, group, m, mask in self._updates():
                if group["rho"] != AUTO:
                    continue
                won = m.abs() < rho * bs * local(self.state[p]["hessian"]) + group["eps"]
                wins.append((won if mask is None else won & mask).sum().double())
                total.append(
                    torch.tensor(won.numel(), dtype=torch.float64, device=won.device)
                    if mask is None
                    else mask.expand_as(won).sum().double()
                )
            counts = sum_across(torch.stack([torch.stack(wins).sum(), torch.stack(total).sum()])).cpu()
            return float(counts[0] / counts[1].clamp(min=1))

        low, high = -30.0, 30.0  # log10 rho
        for _ in range(60):
            middle = (low + high) / 2
            if win_share(10**middle) < target:
                low = middle
            else:
                high = middle
        rho = 10**high
        for group in groups:
            group["rho"] = rho
        return rho

    @torch.no_grad()
    def step(self, closure=None, bs: int = 5120):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_layouts()
        self.calibrate_rho(bs)
        compiled = self._compiled()
        clipped, counted, curvature = [], [], []  # kept on the device: one sync per step, not one per parameter
        for group in self.param_groups:
            lr, wd, eps, beta1 = group["lr"], group["weight_decay"], group["eps"], group["betas"][0]
            rho = 0.0 if group["rho"] == AUTO else group["rho"]  # no estimate yet: every entry is clipped
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                grad = self._local(p, p.grad)
                grad = -grad if group["maximize"] else grad
                master = state.get("master")
                theta = local(master) if master is not None else self._local(p, p)
                tensors = (theta, grad, local(state["exp_avg"]), local(state["hessian"]))
                mask = self.masks.get(p)
                if p in self.columns:
                    stats = self.kernels.call("compact_sophia_update", compiled, *tensors, lr, wd, beta1, rho * bs, eps)
                    if master is None:
                        self.columns[p].scatter(local(p), theta)
                    mask = None  # every compact entry is an updated one
                elif mask is None:
                    stats = self.kernels.call("sophia_update", compiled, *tensors, lr, wd, beta1, rho * bs, eps)
                else:
                    stats = self.kernels.call(
                        "masked_sophia_update", compiled, *tensors, mask, lr, wd, beta1, rho * bs, eps
                    )
                if master is not None:
                    write_back(p, master, self.columns.get(p))
                clipped.append(stats[0])
                counted.append(stats[1])  # an int, or (masked) a tensor
                curvature.append(self._hessian_sum(p, mask) * bs)
        if counted:
            total = sum(counted)
            total = torch.as_tensor(total).clamp(min=1) if isinstance(total, torch.Tensor) else max(total, 1)
            # one read on the host for both (each .item() would wait for the device)
            self.clip_rate, self.hessian_mean = torch.stack(
                [torch.stack(clipped).sum() / total, torch.stack(curvature).sum() / total]
            ).tolist()
            self.win_rate = 1.0 - self.clip_rate
        return loss
