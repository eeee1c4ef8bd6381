"""Everything multi-process: the FSDP2 parallelize function, sharded work with gathered results, and
masks cut to the shard a process holds.

(Sophia cuts its compact masks to the local shard itself: see `optim/sophia.py`.)

Design facts (see docs/design.md): Lightning's `ModelParallelStrategy` + FSDP2 `fully_shard` runs on a
CPU over gloo and supports manual optimisation with Sophia's extra backward; `FSDPStrategy` (FSDP1)
refuses a CPU accelerator and breaks manual optimisation. Every process takes a contiguous share of
any list of work (attribution samples, evaluation prompts), padded so that all make the same number
of forward passes (FSDP's all-gathers are collective), and the results are gathered back in order.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.processes import is_distributed, rank_and_world


def share(items: Sequence, rank: int, world: int) -> tuple[list, int]:
    """This process's contiguous block of `items`, padded (with the last item) to the common block
    size, and how many of the block are real."""
    per = math.ceil(len(items) / world) if items else 0
    block = list(items[rank * per : (rank + 1) * per])
    real = len(block)
    if per and real < per:
        block += [items[-1]] * (per - real)
    return block, real


def map_sharded(fn: Callable[[list], list], items: Sequence) -> list:
    """`fn(items)`, with the work split over processes and the results gathered in order."""
    if not is_distributed():
        return fn(list(items))
    rank, world = rank_and_world()
    block, real = share(items, rank, world)
    results = fn(block)[:real] if block else []
    gathered: list[list] = [None] * world
    dist.all_gather_object(gathered, results)
    return [r for part in gathered for r in part]


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `tensor` over all processes (on the device the backend needs)."""
    if not is_distributed():
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = tensor.to(device).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


_group_closed = False


def close_process_group() -> None:
    """Wait for every process (rank 0 may still be writing), then destroy the process group."""
    global _group_closed
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
        _group_closed = True


def exit_if_group_closed() -> None:
    """End a process whose process group was closed without the interpreter's teardown. Device meshes keep
    references to the destroyed groups, and freeing them during finalisation can make gloo abort the
    process ('terminate called without an active exception': 4 of 25 runs of tests/distributed/
    sophia_shards.py here, 0 of 25 with this exit), turning a finished run into a failed one."""
    if _group_closed:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


def agree(value):
    """Rank 0's value, on every process (so that all take the same branch before collective work)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def parallelize(
    model: nn.Module,
    layers: list[nn.Module],
    mesh,
    mixed_precision: str | None = None,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """FSDP2: `fully_shard` every decoder layer, then the root. With a mesh of two dimensions (nodes x
    devices, as Lightning's ModelParallelStrategy builds it) this is HSDP: replicated across nodes,
    sharded within a node.

    Mixed precision (GPU): parameters are all-gathered in bf16, gradients reduced in fp32, and the
    sharded master weights stay in the dtype they were loaded in (fp32), as does all optimiser state,
    which is created from them."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif mixed_precision is not None:
        raise SimuError(f"parallel.mixed_precision must be bf16 or null, got {mixed_precision!r}")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


@contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Under FSDP2, keep every layer's parameters gathered from its first forward pass to the end of the
    block, then shard them again. Generation runs the model once per new token, and by default FSDP
    all-gathers each layer for every one of those passes (about 12 GB per decoded token at 7B); here
    each layer is gathered once per evaluation, at the cost of holding the whole model on every process
    for its duration (7B in bf16: 13.5 GB). An unsharded model is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        yield
        return
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            # the layers free their gathered parameters after each forward again; the root never does (FSDP2's
            # own choice for the root: its parameters are needed again first thing in the backward)
            module.set_reshard_after_forward(module is not model, recurse=False)


def load_from_rank0(model: nn.Module, whole: dict[str, torch.Tensor], device: torch.device) -> None:
    """Every process's shards of a sharded `model` from rank 0's whole state dict (`whole`; empty on the
    other processes, whose models were built on the meta device and read no weights): shards allocated on
    `device`, the weights broadcast from rank 0, and the buffers no state dict holds (rotary tables) too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole, options=options)
    kept = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name not in kept:
            dist.broadcast(buffer, src=0)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on CPU; collective under FSDP, complete on rank 0."""
    if not any(hasattr(p, "device_mesh") for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_bytes(tensors) -> int:
    """Bytes this process holds for the given (possibly sharded) tensors."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total
