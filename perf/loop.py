"""The unlearning step as a minimal plain-PyTorch loop (what the LightningModule does, without Lightning),
and synthetic forget/retain batches of random tokens for the model-size benchmarks."""

from __future__ import annotations

from functools import partial

import torch

from simu_lightning.data.formatting import IGNORE_INDEX
from simu_lightning.models.architecture import architecture_of, down_projections
from simu_lightning.optim import Sophia
from simu_lightning.optim.gnb import sampled_label_loss
from simu_lightning.unlearning.losses import Forward, GradDiff
from simu_lightning.unlearning.methods import Method
from simu_lightning.unlearning.module import label_uniforms

METHODS = {
    "fo": Method("fo", partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0), "all"),
    "so": Method("so", partial(Sophia, lr=1e-5, rho=0.04, weight_decay=0.0), "all"),
    "simu": Method("simu", partial(Sophia, lr=1e-5, rho=0.04, weight_decay=0.0), "attention_and_down_proj", True),
    # SIMU with Sophia's state at full size for the masked down projections (as before compact state)
    "simu_full_state": Method(
        "simu",
        partial(Sophia, lr=1e-5, rho=0.04, weight_decay=0.0, compact_state=False),
        "attention_and_down_proj",
        True,
    ),
}


def part(vocab: int, rows: int, length: int, answer: int, generator: torch.Generator, offset: int = 0) -> dict:
    """`rows` sequences of random tokens whose last `answer` tokens are the answer."""
    input_ids = torch.randint(2, vocab, (rows, length), generator=generator)
    labels = input_ids.clone()
    labels[:, : length - answer] = IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "position_ids": torch.arange(length).expand(rows, length).clone(),
        "index": torch.arange(rows) + offset,
    }


def synthetic_batches(vocab: int, steps: int, rows: int = 8, length: int = 64, answer: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "forget": part(vocab, rows, length, answer, generator, offset=i * rows),
            "retain": part(vocab, rows, length, answer, generator, offset=i * rows),
        }
        for i in range(steps)
    ]


def to(batch: dict, device) -> dict:
    return {split: {k: v.to(device) for k, v in p.items()} for split, p in batch.items()}


def tokens(batch: dict) -> int:
    return sum(p["input_ids"].numel() for p in batch.values())


def prepare(model, method_name: str, critical_fraction: float = 0.1, seed: int = 0):
    """The method's trainable parameters and optimiser (SIMU: with a random mask of `critical_fraction`
    of each down projection's neurons, as attribution would give)."""
    method, arch = METHODS[method_name], architecture_of(model)
    trainable = method.trainable_parameter_names(model, arch)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    optimizer = method.optimizer([p for p in model.parameters() if p.requires_grad])
    if method.critical_neuron_mask:
        generator, masks = torch.Generator().manual_seed(seed), {}
        for proj in down_projections(model, arch).values():
            shape = [1, 1]
            shape[arch.neuron_dim] = -1
            neurons = proj.weight.shape[arch.neuron_dim]
            masks[proj.weight] = (
                (torch.rand(neurons, generator=generator) < critical_fraction).view(shape).to(proj.weight.device)
            )
        optimizer.set_masks(masks)
    return optimizer


def plain_step(model, optimizer, batch: dict, loss=None, step: int = 0, seed: int = 0) -> torch.Tensor:
    """One GradDiff step: the GNB Hessian estimate on sampled labels (second-order optimisers), then the
    loss backward and the optimiser step: the LightningModule's arithmetic, line for line."""
    loss, bs = loss or GradDiff(), None
    if isinstance(optimizer, Sophia):
        optimizer.zero_grad()
        parts = []
        for split_id, p in enumerate((batch["forget"], batch["retain"])):
            logits = model(
                input_ids=p["input_ids"], attention_mask=p["attention_mask"], position_ids=p["position_ids"]
            ).logits
            u = label_uniforms(p["index"], seed, step, split_id, p["input_ids"].shape[1] - 1, logits.device)
            parts.append(sampled_label_loss(logits, p["labels"], u))
        bs = int(sum(count for _, count in parts))  # (the counts are tensors: read once on the host)
        (sum(ce * count for ce, count in parts) / max(bs, 1)).backward()
        optimizer.update_hessian()
        optimizer.zero_grad()
    value, _ = loss(Forward(model, batch))
    optimizer.zero_grad()
    value.backward()
    optimizer.step(bs=bs) if bs is not None else optimizer.step()
    return value.detach()
