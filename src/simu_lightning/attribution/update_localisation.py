"""Where a run's update lands on a planted target (issue 45; LACUNA's question, arXiv 2607.02513): not which
neurons the selection chose (localisation.py) but which neurons the weights actually changed in.

A neuron's change is the norm of the difference between the unlearned model's and the target's entries
that belong to it: its down projection's column, and its up (and gate) projections' rows and bias entries,
as planting writes P (models/planting.py). Per layer and over all layers pooled:
- `auroc`: the chance that a planted neuron changed more than an unplanted one (ties count one half), the
  scale LACUNA's table reports (an oracle-masked method near 1, a method blind to P near 0.5);
- `mass_in_p`: the share of the change's squared norm that lies in P.
A run whose weights did not change at all has `auroc` 0.5 (every neuron tied) and no `mass_in_p` (None)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from simu_lightning.evaluation.metrics import rank_auc
from simu_lightning.models.architecture import Architecture, down_projections, up_projections


def _names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules()}


def neuron_parameter_names(model: nn.Module, arch: Architecture) -> list[str]:
    """The state-dict names of every parameter a neuron's change reads (down, up and gate weights, biases)."""
    names = _names(model)
    found = []
    for name in down_projections(model, arch):
        found.append(f"{name}.weight")
        for up in up_projections(model, arch)[name] if arch.up_proj else []:
            found += [f"{names[up]}.weight"] + ([f"{names[up]}.bias"] if getattr(up, "bias", None) is not None else [])
    return found


def neuron_changes(
    model: nn.Module, arch: Architecture, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per layer (its down projection's name), each neuron's change: the norm over its down column, its up
    and gate rows (a Conv1D's columns) and their bias entries, between the state dicts `before` and `after`
    (`model` names the modules and says how each weight lies)."""
    names, ups = _names(model), up_projections(model, arch)
    changes = {}
    for name in down_projections(model, arch):
        squares = _along(before, after, f"{name}.weight", keep=arch.neuron_dim)
        for up in ups[name] if arch.up_proj else []:
            key = names[up]
            squares = squares + _along(before, after, f"{key}.weight", keep=1 if isinstance(up, Conv1D) else 0)
            if getattr(up, "bias", None) is not None:
                squares = squares + _along(before, after, f"{key}.bias", keep=0)
        changes[name] = squares.sqrt()
    return changes


def _along(before: dict, after: dict, key: str, keep: int) -> torch.Tensor:
    """The squared change of `key` summed over every dimension but `keep` (one value per neuron)."""
    delta = after[key].double() - before[key].double()
    dims = [d for d in range(delta.dim()) if d != keep]
    return delta.square().sum(dims) if dims else delta.square()


def figures(change: torch.Tensor, planted: torch.Tensor) -> dict[str, float | None]:
    change, planted = change.flatten().double(), planted.flatten().bool()
    total = float(change.square().sum())
    return {
        "auroc": rank_auc(change[~planted].tolist(), change[planted].tolist())
        if 0 < planted.sum() < len(planted)
        else None,
        "mass_in_p": float(change[planted].square().sum()) / total if total > 0 else None,
    }


def update_localisation(changes: dict[str, torch.Tensor], planted: dict[str, torch.Tensor]) -> dict[str, dict]:
    """{"layers": {layer: figures}, "overall": figures} of the neurons' changes against P."""
    if changes.keys() != planted.keys():
        raise ValueError("update_localisation: the changes and the planted neurons cover different layers")
    return {
        "layers": {name: figures(changes[name], planted[name]) for name in planted},
        "overall": figures(torch.cat([changes[n] for n in planted]), torch.cat([planted[n] for n in planted])),
    }
