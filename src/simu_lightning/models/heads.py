"""Attention heads: where each head's entries sit in a layer's attention projections.

Head h of a layer is the slice h*d:(h+1)*d of its output projection's input (o_proj's columns; rows of
GPT-2's transposed Conv1D), d = head_dim: the head's output, which o_proj mixes into the residual stream.
Its query is the same slice of q_proj's output features (rows). Under grouped-query attention
(num_key_value_heads < num_attention_heads) query head h reads key/value head h // (heads / kv heads), so
a key/value head belongs to every query head of its group. Fused projections (`Architecture.qkv`):
GPT-NeoX's query_key_value holds each head's q, k and v rows together (3d rows per head, `per_head`);
GPT-2's c_attn holds every head's q, then every head's k, then every head's v (`stacked`).

A head mask of a weight is one row or one column that broadcasts over it, as a neuron mask is. A q/k/v bias
entry belongs to one output feature, so it follows the row mask; o_proj's bias is added after the heads
are summed and belongs to none of them, so it stays frozen (as a down projection's bias under a neuron mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from simu_lightning.models.architecture import Architecture, decoder_layers
from simu_lightning.utils.errors import SimuError

QKV_LAYOUTS = {"separate": 3, "per_head": 1, "stacked": 1}  # layout -> how many projections write q, k, v


@dataclass(frozen=True)
class HeadShape:
    count: int  # query heads per layer
    kv_count: int  # key/value heads per layer
    dim: int  # head_dim


def head_shape(model: nn.Module, arch: Architecture) -> HeadShape:
    """The model's heads per layer, key/value heads and head_dim (o_proj's input width over the heads)."""
    config = model.config
    count = config.num_attention_heads
    kv_count = getattr(config, "num_key_value_heads", None) or count
    width = _in_features(decoder_layers(model, arch)[0].get_submodule(arch.o_proj))
    if width % count or count % kv_count:
        raise SimuError(
            f"attention heads: {arch.o_proj} reads {width} features, not a multiple of {count} heads "
            f"(or {count} heads are not a multiple of {kv_count} key/value heads)"
        )
    return HeadShape(count, kv_count, width // count)


def head_masks(model: nn.Module, arch: Architecture, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> the mask (broadcasting over it) of the entries that belong to the critical heads,
    for the q/k/v/o projections of every layer in `heads` (o_proj's full name -> one bool per head)."""
    if arch.qkv not in QKV_LAYOUTS:
        raise SimuError(f"model.architecture.qkv must be one of {', '.join(QKV_LAYOUTS)}, got {arch.qkv!r}")
    if len(arch.attention) - 1 != QKV_LAYOUTS[arch.qkv]:
        raise SimuError(
            f"attention heads: model.architecture.attention={list(arch.attention)} with qkv={arch.qkv!r} must list "
            "q, k, v and o (separate) or the fused qkv and o (per_head, stacked)"
        )
    shape = head_shape(model, arch)
    masks = {}
    for o_name, critical in heads.items():
        layer = o_name.removesuffix(f".{arch.o_proj}")
        features = {arch.o_proj: critical.repeat_interleave(shape.dim)}
        for name, rows in _qkv_rows(arch, critical, shape).items():
            features[name] = rows
        for name, chosen in features.items():
            module = model.get_submodule(f"{layer}.{name}")
            side = "in" if name == arch.o_proj else "out"
            masks[f"{layer}.{name}.weight"] = _broadcast(module, chosen, side, f"{layer}.{name}")
            if side == "out" and getattr(module, "bias", None) is not None:
                masks[f"{layer}.{name}.bias"] = chosen
    return masks


def _qkv_rows(arch: Architecture, critical: torch.Tensor, shape: HeadShape) -> dict[str, torch.Tensor]:
    """Per q/k/v projection, one bool per output feature: whether it belongs to a critical head."""
    d, writers = shape.dim, arch.attention[:-1]
    if arch.qkv == "per_head":
        return {writers[0]: critical.repeat_interleave(3 * d)}
    if arch.qkv == "stacked":
        return {writers[0]: critical.repeat_interleave(d).repeat(3)}
    # a key/value head is trained when any query head of its group is critical
    kv = critical.view(shape.kv_count, shape.count // shape.kv_count).any(1).repeat_interleave(d)
    q, k, v = writers
    return {q: critical.repeat_interleave(d), k: kv, v: kv}


def _transposed(module: nn.Module) -> bool:
    """GPT-2's Conv1D holds its weight as in x out, nn.Linear as out x in."""
    return not isinstance(module, nn.Linear)


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[0 if _transposed(module) else 1]


def _broadcast(module: nn.Module, chosen: torch.Tensor, side: str, name: str) -> torch.Tensor:
    """`chosen` (one bool per input or output feature) as the row or column that broadcasts over the weight."""
    dim = (0 if side == "out" else 1) ^ int(_transposed(module))
    if module.weight.shape[dim] != chosen.numel():
        raise SimuError(
            f"attention heads: {name} has {module.weight.shape[dim]} {side}put features where its heads "
            f"take {chosen.numel()}"
        )
    shape = [1, 1]
    shape[dim] = -1
    return chosen.view(shape)
