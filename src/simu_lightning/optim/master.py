"""fp32 master weights for parameters held in bf16 or fp16 (opted into with optim.low_precision_weights).

An unlearning step is far below a bf16 weight's rounding step: at lr 5e-6 a clipped Sophia step moves a
0.02-sized weight by 5e-6, a thirtieth of its bf16 spacing (2^-13 ~ 1.2e-4 there), so written straight
into bf16 weights almost every update rounds away. The masked optimisers therefore update an fp32 copy of
such a parameter (its critical columns alone when its state is compact) and write the copy's rounding
into the parameter after every step: the updates accumulate in the copy and reach the weights as soon as
they add up to a rounding step. Entries outside a mask are never written in the copy, and rounding an fp32
copy of a bf16 value gives the value back bit for bit, so they stay bit-identical in the weights too.
"""

from __future__ import annotations

import torch

from simu_lightning.optim.compact import Columns, copy_of
from simu_lightning.optim.masks import local

LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_low_precision(param: torch.Tensor) -> bool:
    return param.dtype in LOW_PRECISION


def master_copy(param: torch.Tensor, columns: Columns | None) -> torch.Tensor:
    """An fp32 copy of this process's entries of `param` (its critical columns when `columns` is given),
    sharded as `param` is."""
    return copy_of(param, columns, torch.float32)


def write_back(param: torch.Tensor, master: torch.Tensor, columns: Columns | None) -> None:
    """The parameter's entries (its critical columns) <- the rounding of the master copy."""
    values = local(master).to(param.dtype)
    if columns is not None:
        columns.scatter(local(param), values)
    else:
        local(param).copy_(values)
