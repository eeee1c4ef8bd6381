"""Optimiser step: Sophia against fused AdamW on the same parameters, and masked Sophia in SIMU's
configuration against Sophia on every parameter. Ratios of medians taken side by side in one process."""

from __future__ import annotations

import time

import torch

from perf.common import median_seconds, olmo, parameters
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.optim import Sophia


def _gradients(params, seed: int = 0) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(p.device, p.dtype)


def _sophia(params, fused, masks=None) -> tuple[Sophia, float]:
    """A Sophia with a Hessian estimate and one step taken (compilation happens there); its seconds."""
    optimizer = Sophia(params, lr=1e-4, rho=0.04, weight_decay=0.1, fused=fused, masks=masks)
    start = time.perf_counter()
    optimizer.update_hessian()
    optimizer.step(bs=4096)
    return optimizer, time.perf_counter() - start


def run(size: str = "olmo-77m", repeats: int = 9, critical_fraction: float = 0.1) -> dict:
    model = olmo(size)
    params = list(model.parameters())
    _gradients(params)
    adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
    fused, fused_first = _sophia(params, fused=True)
    eager, _ = _sophia(params, fused=False)
    times = {
        "adamw_fused": median_seconds(adamw.step, repeats),
        "sophia_compiled": median_seconds(lambda: fused.step(bs=4096), repeats),
        "sophia_eager": median_seconds(lambda: eager.step(bs=4096), max(3, repeats // 3)),
        "sophia_hessian_update": median_seconds(fused.update_hessian, repeats),
    }

    # SIMU: attention + down projections trainable (the rest frozen: no gradient), down projections
    # masked to a `critical_fraction` of their neurons
    arch = architecture_of(model)
    downs = down_projections(model, arch)
    trainable = [p for proj in attention_projections(model, arch).values() for p in proj.parameters()]
    trainable += [proj.weight for proj in downs.values()]
    generator = torch.Generator().manual_seed(1)
    masks = {}
    for proj in downs.values():
        shape = [1, 1]
        shape[arch.neuron_dim] = -1
        masks[proj.weight] = (
            (torch.rand(proj.weight.shape[arch.neuron_dim], generator=generator) < critical_fraction)
            .view(shape)
            .to(proj.weight.device)
        )
    kept = {id(p) for p in trainable}
    for p in params:
        if id(p) not in kept:
            p.grad = None
    simu, _ = _sophia(trainable, fused=True, masks=masks)
    times["simu_masked_compiled"] = median_seconds(lambda: simu.step(bs=4096), repeats)
    return {
        "model": f"{size} ({parameters(model) / 1e6:.1f}M parameters, {len(params)} tensors)",
        "median_ms": {k: round(v * 1e3, 2) for k, v in times.items()},
        "first_compiled_step_s": round(fused_first, 2),
        "simu_trainable_fraction": round(sum(p.numel() for p in trainable) / parameters(model), 4),
        "ratio_sophia_to_adamw_fused": round(times["sophia_compiled"] / times["adamw_fused"], 3),
        "ratio_eager_sophia_to_adamw_fused": round(times["sophia_eager"] / times["adamw_fused"], 3),
        "ratio_simu_masked_to_sophia_all": round(times["simu_masked_compiled"] / times["sophia_compiled"], 3),
    }
