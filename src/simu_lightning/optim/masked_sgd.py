"""SGD (with momentum) whose updates are confined to a mask: the first-order, non-adaptive point on the
optimiser-order axis (issue 45), under the same masks as Sophia and AdamW.

Two masking points hold exactly, entries outside the mask bit-identical: b_t = M b'_t + (1 - M) b_{t-1}
(the momentum buffer) and theta_t = M theta'_t + (1 - M) theta_{t-1}, where b' and theta' are torch's own
SGD step (so the updated entries equal torch.optim.SGD's bit for bit). As in MaskedAdamW the step runs
unchanged and the masked-out entries are put back (`torch.where`, never recomputed). The state is kept at
full size (no compact state), and the weights must be float32."""

from __future__ import annotations

import torch

from simu_lightning.optim.masks import MaskedUpdates, local

BUFFER = "momentum_buffer"


class MaskedSGD(MaskedUpdates, torch.optim.SGD):
    def __init__(self, params, *args, masks: dict[torch.Tensor, torch.Tensor] | None = None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._take_masks(masks)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for p, mask in self.masks.items():
            if p.grad is None:
                continue
            buffer = self.state[p].get(BUFFER)
            before = torch.zeros_like(local(p)) if buffer is None else local(buffer).clone()
            held.append((p, mask, local(p).clone(), before))
        super().step()
        for p, mask, weights, buffer in held:
            local(p).copy_(torch.where(mask, local(p), weights))
            if self.state[p].get(BUFFER) is not None:  # (momentum 0 keeps no buffer)
                local(self.state[p][BUFFER]).copy_(torch.where(mask, local(self.state[p][BUFFER]), buffer))
        return loss
