"""Optimiser state for the critical neurons only: a masked down projection's columns (or rows) kept compact.

SIMU updates a down projection only in its critical neurons, a tenth of its columns at t = 0.1, so state
for the other columns would stay zero for ever. With `Columns` the optimiser keeps its moments for the
critical columns alone (at 10% critical, 2.75 MB instead of 27.0 MB for OLMo-1B's down projections),
gathers the parameter's and gradient's critical columns, updates them with the same arithmetic as the
masked full-size update, and writes them back: the other entries are never written, so they stay
bit-identical, and the updated ones equal the masked update's bit for bit (tests/test_sophia.py).

Under FSDP2 a down projection (out x in) is sharded along its rows (dim 0), so every process holds all
of its columns: the compact state is sharded along the rows as the parameter is. A neuron dimension that
is itself sharded (GPT-2's Conv1D, neurons along dim 0) keeps the full-size masked state.

Nothing here is particular to down projections: any 2-D parameter whose mask is one row or one column is
laid out so, which includes the attention projections under a head mask (models/heads.py: q/k/v rows,
o_proj columns); a q/k/v weight sharded along its rows keeps the full-size state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simu_lightning.optim.masks import local

MASTER = "master"  # the fp32 master copy of a bf16 or fp16 parameter (master.py), laid out as the moments
COLUMNS = "columns"  # which critical columns (local indices) a compact state holds, saved with it


@dataclass(frozen=True)
class Columns:
    """The critical neurons of one parameter: the dimension that indexes them and their local indices."""

    dim: int
    index: torch.Tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_select(self.dim, self.index)

    def scatter(self, into: torch.Tensor, values: torch.Tensor) -> None:
        into.index_copy_(self.dim, self.index, values)

    def full(self, compact: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The full-size tensor the compact state stands for: zero outside the critical neurons."""
        out = torch.zeros(shape, dtype=compact.dtype, device=compact.device)
        self.scatter(out, compact)
        return out


def columns_of(param: torch.Tensor, mask: torch.Tensor) -> Columns | None:
    """The critical neurons of a 2-D parameter whose (local) mask is one row or one column, or None where
    the mask is of another kind or the neuron dimension is sharded."""
    shard = local(param)
    if mask.dim() != 2 or shard.dim() != 2:
        return None
    varying = [d for d in range(2) if mask.shape[d] != 1]
    if len(varying) != 1:
        return None
    dim = varying[0]
    if any(placement.is_shard(dim) for placement in getattr(param, "placements", ())):
        return None
    return Columns(dim, mask.reshape(-1).nonzero().reshape(-1).to(shard.device))


def sharded_like(param: torch.Tensor, columns: Columns, values: torch.Tensor) -> torch.Tensor:
    """`values`, this process's critical columns of a tensor shaped like `param`, sharded the way `param`
    is (a DTensor under FSDP2, the tensor itself otherwise)."""
    if not hasattr(param, "device_mesh"):
        return values
    from torch.distributed.tensor import DTensor

    size = list(param.shape)
    size[columns.dim] = columns.index.numel()
    return DTensor.from_local(
        values, param.device_mesh, param.placements, run_check=False, shape=torch.Size(size), stride=(size[1], 1)
    )


def copy_of(param: torch.Tensor, columns: Columns | None, dtype: torch.dtype) -> torch.Tensor:
    """A copy in `dtype` of this process's entries of `param` (its critical columns when `columns` is
    given), sharded as `param` is."""
    shard = local(param).detach()
    values = (columns.gather(shard) if columns is not None else shard).to(dtype, copy=True)
    if columns is not None:
        return sharded_like(param, columns, values)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(values, param.device_mesh, param.placements, run_check=False, shape=param.shape)
    return values


def zeros(param: torch.Tensor, columns: Columns, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A zero state tensor for the critical neurons of `param` (in `dtype`, or `param`'s), sharded as
    `param` is (FSDP2)."""
    shard = local(param)
    shape = list(shard.shape)
    shape[columns.dim] = columns.index.numel()
    return sharded_like(param, columns, torch.zeros(shape, dtype=dtype or shard.dtype, device=shard.device))


class CompactState:
    """What the masked optimisers share for compact state: the layout of each parameter (`columns`), its
    change when the masks change, and the full-size view of a state tensor. `MOMENTS` names the state
    tensors shaped like the parameter."""

    MOMENTS: tuple[str, ...] = ()

    def _lay_out(self, param: torch.Tensor, mask: torch.Tensor) -> None:
        """Give `param` the layout its new (local) mask asks for, moving any state it has. A compact state
        that is already there without a layout was loaded from a checkpoint (Lightning restores it before
        the masks are set): it is kept if it fits the new mask."""
        old = self.columns.pop(param, None)
        new = columns_of(param, mask) if self.compact_state else None
        if new is not None:
            self.columns[param] = new
        shard = local(param)
        # .get: an empty entry in the state would tell torch.distributed.checkpoint the state exists already
        for name in [k for k in (*self.MOMENTS, MASTER) if k in self.state.get(param, {})]:
            tensor = local(self.state[param][name])
            if old is None and tensor.shape != shard.shape:  # loaded compact, for these masks or others
                self._check_loaded(param, tensor, new)
                continue
            if name == MASTER:  # the master copy of a bf16 parameter: its entries in the new layout
                self.state[param][name] = copy_of(param, new, torch.float32)
                continue
            full = old.full(tensor, shard.shape) if old is not None else tensor
            if new is None:
                state = torch.zeros_like(param, dtype=tensor.dtype)
                local(state).copy_(full)
            else:
                state = zeros(param, new, tensor.dtype)
                local(state).copy_(new.gather(full))
            self.state[param][name] = state
        self.record_columns(param)

    def _check_loaded(self, param: torch.Tensor, tensor: torch.Tensor, new: Columns | None) -> None:
        """A compact state loaded from a checkpoint must hold the very columns of the new mask (a state saved
        before its columns were recorded: their count)."""
        held = self.state[param].get(COLUMNS)
        wanted = new.index.tolist() if new is not None else None
        fits = new is not None and (held == wanted if held is not None else tensor.shape[new.dim] == len(wanted))
        if not fits:
            raise ValueError(
                f"{type(self).__name__}.set_masks: the loaded state holds {tensor.shape[tensor.dim() - 1]} "
                f"critical columns{f' {held}' if held is not None else ''}, not the ones of these masks"
                f"{f' {wanted}' if wanted is not None else ''}"
            )

    def record_columns(self, param: torch.Tensor) -> None:
        """Save with a compact state which columns it holds (read once, when the layout is made)."""
        if param in self.columns and self.state.get(param):
            self.state[param][COLUMNS] = self.columns[param].index.tolist()
        elif self.state.get(param):
            self.state[param].pop(COLUMNS, None)

    def state_of(self, p: torch.Tensor, name: str) -> torch.Tensor:
        """State `name` of `p`'s local shard at the shard's full size: a compact one expanded with zeros,
        the value it stands for."""
        tensor = local(self.state[p][name])
        return self.columns[p].full(tensor, local(p).shape) if p in self.columns else tensor

    def _check_layouts(self) -> None:
        """A compact state (from a checkpoint) whose masks were never set is refused in one line."""
        for p, state in self.state.items():
            if p not in self.columns and any(
                local(state[k]).shape != local(p).shape for k in (*self.MOMENTS, MASTER) if k in state
            ):
                raise ValueError(
                    f"{type(self).__name__}: the loaded state is compact (critical neurons only): "
                    "set the masks it was saved with before the first step"
                )
