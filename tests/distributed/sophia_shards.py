"""Run with 2 processes (torchrun): masked Sophia on a weight sharded along dim 0 and along dim 1 gives
the single-process result, and entries outside the mask stay bit-identical. The state of a weight masked
to whole columns (rows) is compact, sharded as the weight is, unless the weight is sharded along the
neurons themselves."""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from simu_lightning.distributed import close_process_group, exit_if_group_closed
from simu_lightning.optim import Sophia


def step(weight, grads, mask):
    opt = Sophia([weight], lr=0.05, betas=(0.9, 0.99), rho=0.1, weight_decay=0.1, masks={weight: mask})
    for g_hessian, g in grads:
        weight.grad = g_hessian
        opt.update_hessian()
        weight.grad = g
        opt.step(bs=3)
    return opt


def main():
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    full = torch.randn(6, 8)
    grads = [(torch.randn(6, 8), torch.randn(6, 8)) for _ in range(3)]
    masks = {
        "column": torch.tensor([[True, False, False, True, False, True, False, False]]),
        "row": torch.tensor([[False], [True], [False], [False], [True], [False]]),
    }
    for mask_name, mask in masks.items():
        reference = torch.nn.Parameter(full.clone())
        step(reference, grads, mask)
        for dim in (0, 1):
            placements = [Shard(dim)]
            weight = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, placements))
            opt = step(
                weight,
                [(distribute_tensor(h, mesh, placements), distribute_tensor(g, mesh, placements)) for h, g in grads],
                mask,
            )
            result = weight.detach().full_tensor()
            untouched = ~mask.expand_as(full)
            assert torch.equal(result[untouched], full[untouched]), (
                f"{mask_name} mask, Shard({dim}): masked entries moved"
            )
            torch.testing.assert_close(result, reference.detach(), msg=f"{mask_name} mask, Shard({dim})")
            neurons = 1 if mask_name == "column" else 0
            state = opt.state[weight]["exp_avg"]
            if dim == neurons:  # the neurons are split between processes: full-size state
                assert state.to_local().shape == weight.to_local().shape
                hessian = opt.state[weight]["hessian"].full_tensor()
                assert torch.equal(hessian[untouched], torch.zeros_like(full)[untouched])
            else:  # compact, and sharded as the weight is
                assert state.placements == weight.placements and state.shape[neurons] == int(mask.sum())
                assert state.to_local().shape[dim] == weight.to_local().shape[dim]
                assert not opt.state_of(weight, "hessian")[~mask.expand_as(full).chunk(2, dim)[dist.get_rank()]].any()
    close_process_group()
    print("sharded masks hold")


if __name__ == "__main__":
    main()
    exit_if_group_closed()
