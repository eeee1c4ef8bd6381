"""AdamW whose updates are confined to a mask: SIMU's critical-neuron localisation with a first-order
optimiser, so that "SIMU mask + AdamW" separates where the update goes from how it is computed.

The same three masking points as masked Sophia hold exactly, entries outside the mask bit-identical:
m_t = M m'_t + (1 - M) m_{t-1}, v_t = M v'_t + (1 - M) v_{t-1}, theta_t = M theta'_t + (1 - M) theta_{t-1},
where m', v', theta' are torch's own AdamW step (so the updated entries equal torch.optim.AdamW's bit
for bit). The step runs unchanged and the masked-out entries of a masked parameter, its first and its
second moment are then put back (`torch.where`, never recomputed); the copies this takes exist only
during the step and only for masked parameters.
"""

from __future__ import annotations

import torch

from simu_lightning.optim.masks import checked_masks, local

MOMENTS = ("exp_avg", "exp_avg_sq")


class MaskedAdamW(torch.optim.AdamW):
    def __init__(self, params, *args, masks: dict[torch.Tensor, torch.Tensor] | None = None, **kwargs):
        super().__init__(params, *args, **kwargs)
        if any(g["amsgrad"] for g in self.param_groups):
            raise ValueError(
                "MaskedAdamW: amsgrad is not supported (its running maximum would need a fourth masking point)"
            )
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """Restrict updates of each given parameter to the entries where its mask is True."""
        self.masks.update(checked_masks(self, masks))

    def _held(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(tensor, mask, copy before the step) for the parameter and moments of every masked parameter."""
        held = []
        for p, mask in self.masks.items():
            if p.grad is None:
                continue
            state = self.state[p]
            tensors = [p] + [state[k] for k in MOMENTS if k in state]
            held += [(local(t), mask, local(t).detach().clone()) for t in tensors]
        return held

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # first, so that the gradients it computes are there to be held
            with torch.enable_grad():  # (Lightning's automatic optimisation steps with a closure)
                loss = closure()
        held = self._held()
        fresh = [p for p in self.masks if p.grad is not None and not self.state[p]]
        super().step()
        for p in fresh:  # the moments were created by this step: before it they were zero
            held += [
                (local(self.state[p][k]), self.masks[p], torch.zeros_like(local(self.state[p][k]))) for k in MOMENTS
            ]
        for tensor, mask, before in held:
            tensor.copy_(torch.where(mask, tensor, before))
        return loss
