"""AdamW whose updates are confined to a mask: SIMU's critical-neuron localisation with a first-order
optimiser, so that "SIMU mask + AdamW" separates where the update goes from how it is computed.

The same three masking points as masked Sophia hold exactly, entries outside the mask bit-identical:
m_t = M m'_t + (1 - M) m_{t-1}, v_t = M v'_t + (1 - M) v_{t-1}, theta_t = M theta'_t + (1 - M) theta_{t-1},
where m', v', theta' are torch's own AdamW step (so the updated entries equal torch.optim.AdamW's bit
for bit). The step runs unchanged and the masked-out entries of a masked parameter, its first and its
second moment are then put back (`torch.where`, never recomputed); the copies this takes exist only
during the step and only for masked parameters.

With `compact_state` (the default) a parameter masked to whole columns or rows (a down projection's
critical neurons, see `compact.py`) keeps its moments for those alone: for the step, torch's AdamW runs
on a stand-in holding the critical columns of the parameter and its gradient, which are then written
back, so the updated entries are torch's own step and the others are never written.

A bf16 or fp16 parameter's stand-in is its fp32 master copy (master.py), which torch's AdamW updates with
fp32 moments; its rounding is written into the parameter after the step. With no mask and fp32 weights
the step is torch's AdamW's, bit for bit: FO-GradDiff runs on this class.
"""

from __future__ import annotations

import torch

from simu_lightning.optim import compact
from simu_lightning.optim.compact import MASTER
from simu_lightning.optim.masks import checked_masks, local
from simu_lightning.optim.master import is_low_precision, master_copy, write_back

MOMENTS = ("exp_avg", "exp_avg_sq")


class MaskedAdamW(compact.CompactState, torch.optim.AdamW):
    MOMENTS = MOMENTS

    def __init__(
        self,
        params,
        *args,
        masks: dict[torch.Tensor, torch.Tensor] | None = None,
        compact_state: bool = True,
        **kwargs,
    ):
        super().__init__(params, *args, **kwargs)
        self.compact_state = compact_state
        self.columns: dict[torch.Tensor, compact.Columns] = {}  # parameters whose moments are compact
        if any(g["amsgrad"] for g in self.param_groups):
            raise ValueError(
                "MaskedAdamW: amsgrad is not supported (its running maximum would need a fourth masking point)"
            )
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """Restrict updates of each given parameter to the entries where its mask is True."""
        for param, mask in checked_masks(self, masks).items():
            self.masks[param] = mask
            self._lay_out(param, mask)

    def _masters(self) -> None:
        """Give every bf16 / fp16 parameter about to step its fp32 master copy, and the moments torch's AdamW
        would make for it, in fp32 (its stand-in is the master: master.py)."""
        from torch.optim.optimizer import _get_scalar_dtype

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not is_low_precision(p) or MASTER in self.state[p]:
                    continue
                state = self.state[p]
                state[MASTER] = master_copy(p, self.columns.get(p))
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                for name in MOMENTS:
                    state[name] = torch.zeros_like(state[MASTER], memory_format=torch.preserve_format)

    def _held(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(tensor, mask, copy before the step) for the parameter (or its master copy) and moments of every
        masked parameter."""
        held = []
        for p, mask in self.masks.items():
            if p.grad is None or p in self.columns:
                continue
            state = self.state[p]
            tensors = [state.get(MASTER, p)] + [state[k] for k in MOMENTS if k in state]
            held += [(local(t), mask, local(t).detach().clone()) for t in tensors]
        return held

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # first, so that the gradients it computes are there to be held
            with torch.enable_grad():  # (Lightning's automatic optimisation steps with a closure)
                loss = closure()
        self._check_layouts()
        self._masters()
        held = self._held()
        fresh = [p for p in self.masks if p.grad is not None and not self.state[p] and p not in self.columns]
        stand_ins = self._stand_ins()
        try:
            super().step()
        finally:
            self._restore(stand_ins)
        for p in fresh:  # the moments were created by this step: before it they were zero
            held += [
                (local(self.state[p][k]), self.masks[p], torch.zeros_like(local(self.state[p][k]))) for k in MOMENTS
            ]
        for tensor, mask, before in held:
            tensor.copy_(torch.where(mask, tensor, before))
        self._write_back(stand_ins)
        return loss

    def _stand_ins(self) -> dict[torch.Tensor, torch.Tensor]:
        """Put a stand-in in the place (param groups and state) of each compact or low-precision parameter:
        its master copy, or its critical columns, with the gradient's (in fp32), as the parameter is sharded."""
        stand_ins = {}
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is None or not (p in self.columns or is_low_precision(p)):
                    continue
                columns = self.columns.get(p)
                if MASTER in self.state[p]:
                    stand_in = self.state[p][MASTER]
                else:
                    stand_in = compact.sharded_like(p, columns, columns.gather(local(p)).detach())
                grad = columns.gather(local(p.grad)) if columns is not None else local(p.grad)
                stand_in.grad = self._sharded(p, columns, grad.float())
                if p in self.state:
                    self.state[stand_in] = self.state.pop(p)
                group["params"][i] = stand_ins[p] = stand_in
        return stand_ins

    @staticmethod
    def _sharded(p: torch.Tensor, columns, values: torch.Tensor) -> torch.Tensor:
        if columns is not None or not hasattr(p, "device_mesh"):
            return compact.sharded_like(p, columns, values) if columns is not None else values
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(values, p.device_mesh, p.placements, run_check=False, shape=p.shape)

    def _restore(self, stand_ins: dict[torch.Tensor, torch.Tensor]) -> None:
        """Give the parameters their places (param groups and state) back."""
        back = {stand_in: p for p, stand_in in stand_ins.items()}
        for group in self.param_groups:
            group["params"] = [back.get(p, p) for p in group["params"]]
        for p, stand_in in stand_ins.items():
            self.state[p] = self.state.pop(stand_in)
            stand_in.grad = None
            if compact.COLUMNS not in self.state[p]:  # the moments torch's step just made
                self.record_columns(p)

    def _write_back(self, stand_ins: dict[torch.Tensor, torch.Tensor]) -> None:
        """The stand-ins' values into their parameters: a master copy's rounding, or the critical columns."""
        for p, stand_in in stand_ins.items():
            if MASTER in self.state[p]:
                write_back(p, stand_in, self.columns.get(p))
            else:
                self.columns[p].scatter(local(p), local(stand_in))
