"""Per-parameter update masks, shared by the masked optimisers (Sophia, AdamW).

A mask only has to broadcast to its parameter's shape: a down-projection neuron mask is a single row
or column, never a full-size copy of the weight. For a sharded (DTensor) parameter the mask is given
for the whole parameter and cut to the shard this process holds.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def local(t: torch.Tensor) -> torch.Tensor:
    """The shard this process holds (a DTensor's local tensor, or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A compact mask cut to the block of a sharded (DTensor) parameter this process holds, along
    whichever dimensions it is sharded."""
    if not hasattr(param, "device_mesh"):
        return mask
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    for dim, (size, start) in enumerate(zip(shape, offset)):
        if mask.dim() == len(shape) and mask.shape[dim] != 1:
            mask = mask.narrow(dim, start, size)
    return mask


def checked_masks(optimizer: Optimizer, masks: dict[torch.Tensor, torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
    """The masks as local boolean tensors on their parameters' devices; a mask for a parameter the
    optimiser does not update, or one that does not broadcast, is refused."""
    name = type(optimizer).__name__
    owned = {p for group in optimizer.param_groups for p in group["params"]}
    checked = {}
    for param, mask in masks.items():
        if param not in owned:
            raise ValueError(f"{name}.set_masks: a mask was given for a parameter this optimiser does not update")
        shard = local(param)
        mask = local_mask(mask, param)
        try:
            fits = torch.broadcast_shapes(mask.shape, shard.shape) == shard.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name}.set_masks: mask of shape {tuple(mask.shape)} does not broadcast "
                f"to the parameter's shape {tuple(shard.shape)}"
            )
        checked[param] = mask.to(device=shard.device, dtype=torch.bool)
    return checked


def refuse_low_precision(optimizer: Optimizer) -> None:
    """The plain masked optimisers keep no fp32 master weights: a step at an unlearning lr is below a bf16
    weight's rounding step (Sophia and MaskedAdamW keep masters: optim/master.py)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.dtype in (torch.bfloat16, torch.float16):
                raise ValueError(
                    f"{type(optimizer).__name__}: the weights must be float32, got {p.dtype} "
                    "(model.dtype=float32, or method.optimizer=sophia or adamw, which keep fp32 masters)"
                )


class MaskedUpdates:
    """What MaskedSGD, SignSGD and ZerothOrder share: float32 weights, and `masks` set through `set_masks`."""

    def _take_masks(self, masks: dict[torch.Tensor, torch.Tensor] | None) -> None:
        refuse_low_precision(self)
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """Restrict updates of each given parameter to the entries where its mask is True."""
        self.masks.update(checked_masks(self, masks))
