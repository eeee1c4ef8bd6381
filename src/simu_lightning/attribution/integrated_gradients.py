"""Integrated-gradient attribution of MLP down-projection neurons and attention heads (SIMU stage 1).

Each forget QA pair becomes next-token prediction samples: prompt + answer prefix -> next answer
token. For layer l and neuron k, with beta the neuron's raw activation (the k-th input of `down_proj`)
at the prediction position, the paper's attribution is

    Att_i(w_l^k) = beta_i^k * integral_0^1 d log p(target_i) / d beta^k  at alpha * beta_i  d alpha,

only layer l scaled, the integral taken as the right Riemann sum (1/m) sum_{s=1..m} at alpha = s/m.
All neurons of a layer are scaled together, so one batch of m scaled copies of a sample yields every
neuron of the layer. By completeness, sum_k Att_i -> log p(beta) - log p(0) as m grows.

Faster variants of the same quantity (`attribution.quadrature`, `attribution.mode`):
- `gauss_legendre`: m Gauss-Legendre nodes and weights on [0, 1] instead of the Riemann sum. The
  integrand of a trained model is concentrated near alpha = 0, where the right Riemann sum has no node;
  Gauss-Legendre is exact for polynomials of degree 2m - 1 and converges far faster.
- `joint`: every layer's activation replaced by alpha * beta_l at once, so m scaled copies give every
  layer's scores in one pass instead of one pass per layer. It is the integrated gradient of the model
  as a function of all layers' activations held at those values, so completeness holds for all layers
  together (sum over layers and neurons -> log p(all betas) - log p(all zero)); a neuron's effect that
  runs through a later layer's MLP is credited to that later layer's neurons, not to it.
- `first_order`: gradient x activation at the full activation, one pass: each layer's total
  derivative (through everything downstream, as in the layer-wise integrand at alpha = 1), read through
  a zero added to every layer's activation; equal to the layer-wise Riemann sum with m = 1.

Samples are left-padded, so the prediction position is the last one for all of them. The tokens before
it are never run again per sample: the samples of one QA pair are prefixes of the same sequence, so the
batch's pairs run once (a key/value cache, `SharedPrefix`), each sample reads its pair's cache with the
positions from its prediction position on masked out, and every layer and every scaled copy shares that
cache read-only: a forward runs the last token alone, and the tokens it appends are cropped off afterwards.

The m scaled copies of a sample (`copies`):
- `positions` (the default): one row per sample; the layers below the first scaled one run the
  prediction token once, and from that layer on the row holds m copies of it, side by side at the same
  position, each attending to the sample's prefix and to itself alone (a 4-D attention mask). Scaling
  layer l changes nothing below it, so this is exact; the prefix cache is read by all m copies without
  being repeated, which is what makes it faster (on a CPU, copying a cache repeated m times cost as much
  as the attention itself).
- `rows`: each copy its own row of a cache repeated m times, every layer run per copy. The reference
  layout, and the one for attention kernels that take no 4-D mask (flash attention).

Attention heads (`attribute_heads`) go through the same code with another scaled input: o_proj's, whose
slice h*d:(h+1)*d is head h's output (models/heads.py). A head's attribution is the integrated gradient of
log p(target) with respect to a scale s_h on its output at the prediction position, every head of the
layer on the path s = alpha (as a layer's neurons are); by the chain rule that is the sum of its d input
features' attributions, so it is `attribute` over the output projections, summed per head.

A float64 model is attributed in float64 throughout (the tests compare to 1e-6 against the plain
definition); lower precisions compute the scores in float32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simu_lightning.data.formatting import IGNORE_INDEX, collate

log = logging.getLogger(__name__)

QUADRATURES = ("riemann", "gauss_legendre")
MODES = ("layerwise", "joint", "first_order")
COPY_LAYOUTS = ("positions", "rows")
# attention implementations that read a 4-D mask (the `positions` layout), and the mask's form for each
_MASKED_ATTENTION = ("sdpa", "eager")


def quadrature(rule: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes alpha in (0, 1] and weights (summing to 1) approximating integral_0^1 g(alpha) d alpha."""
    if rule == "riemann":  # the paper's right Riemann sum
        return torch.arange(1, m + 1, dtype=torch.float64) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)  # on [-1, 1]
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    raise ValueError(f"unknown quadrature {rule!r}: choose one of {', '.join(QUADRATURES)}")


def passes(mode: str, layers: int, m: int) -> int:
    """Forward+backward passes of the last token per sample batch: the attribution's cost."""
    return {"layerwise": layers * m, "joint": m, "first_order": 1}[mode]


def prediction_samples(examples: list[dict], eos_token_id: int | None = None) -> list[dict]:
    """One sample per answer token: the tokens before it (`input_ids`), the token (`target`) and the
    QA pair it comes from (`example`). The closing EOS is not a fact, so it is not a target."""
    samples = []
    for number, example in enumerate(examples):
        ids, labels = example["input_ids"], example["labels"]
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX and labels[t] != eos_token_id:
                samples.append({"input_ids": ids[:t], "target": labels[t], "example": number})
    return samples


def batches(samples: list[dict], size: int, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Left-padded batches, so that every sample's prediction position is the last one, with the contexts
    their prefixes share: per QA pair in the batch, its longest prefix (every other sample of the pair
    reads a part of it); a sample without an `example` is its own context."""
    for start in range(0, len(samples), size):
        chunk = samples[start : start + size]
        batch = collate(chunk, pad_token_id, padding_side="left")
        batch["target"] = torch.tensor([s["target"] for s in chunk])
        batch["weight"] = torch.tensor([float(s.get("weight", 1.0)) for s in chunk])  # 0: padding
        longest: dict = {}
        for i, sample in enumerate(chunk):
            key = sample.get("example", ("sample", i))
            if key not in longest or len(sample["input_ids"]) > len(chunk[longest[key]]["input_ids"]):
                longest[key] = i
        keys = list(longest)
        contexts = collate([{"input_ids": chunk[longest[k]]["input_ids"][:-1]} for k in keys], pad_token_id)
        batch["context_ids"], batch["context_mask"] = contexts["input_ids"], contexts["attention_mask"]
        batch["context_index"] = torch.tensor(
            [keys.index(s.get("example", ("sample", i))) for i, s in enumerate(chunk)]
        )
        # keys a sample may attend to: its own prefix in its context, then the token it runs
        prefix_lengths = torch.tensor([len(s["input_ids"]) - 1 for s in chunk])
        positions = torch.arange(contexts["input_ids"].shape[1])
        batch["prefix_mask"] = torch.cat(
            [(positions < prefix_lengths[:, None]).long(), torch.ones(len(chunk), 1, dtype=torch.long)], dim=1
        )
        yield batch


class SharedPrefix:
    """The key/value cache of every sample's tokens before its prediction position.

    Scaling an activation at the prediction position cannot change anything before it (the model is
    causal), so every scaled copy of every layer can share this prefix and run the last token alone. The
    batch's contexts (one per QA pair) run once; each sample's rows of the cache are its pair's, with the
    positions beyond its own prefix masked out (`batch["prefix_mask"]`). The cache is gathered once per
    number of copies and never copied again: a forward appends its token to the cache it is given, and
    `restore` crops that token off afterwards.
    """

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        self.length = batch["context_ids"].shape[1]
        self.index = batch["context_index"]
        with torch.no_grad():
            self._contexts = model(
                input_ids=batch["context_ids"],
                attention_mask=batch["context_mask"],
                position_ids=(batch["context_mask"].cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
            ).cache
        self._caches = {}

    def cache(self, repeat: int):
        """Each sample's rows of the contexts' cache, repeated `repeat` times (sample-major), built once."""
        if repeat not in self._caches:
            cache = copy.copy(self._contexts)
            cache.layers = [copy.copy(layer) for layer in self._contexts.layers]  # new rows, the same tensors
            cache.batch_select_indices(self.index.repeat_interleave(repeat))
            self._caches[repeat] = cache
        return self._caches[repeat]

    def restore(self, repeat: int) -> None:
        """Crop the tokens a forward appended (one, or m copies from the first scaled layer on), and detach
        what is left from that forward's graph."""
        for layer in self._caches[repeat].layers:
            if getattr(layer, "keys", None) is not None:
                appended = layer.keys.shape[-2] - self.length
                if appended:
                    layer.crop(-appended)
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()


def _last_log_prob(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    repeat: int = 1,
    prefix: SharedPrefix | None = None,
    copies_from: int | None = None,
) -> torch.Tensor:
    """log p(target) at the last position, each sample repeated `repeat` times (sample-major).

    With a `prefix` cache only the last token runs; without one, the whole sequences do. `copies_from`
    (a decoder layer's index) lays the copies out as positions from that layer on (`copies` in the
    module's docstring); None lays them out as rows."""

    def rep(t):
        return t.repeat_interleave(repeat, dim=0)

    if prefix is None:
        logits = model(
            input_ids=rep(batch["input_ids"]),
            attention_mask=rep(batch["attention_mask"]),
            position_ids=rep(batch["position_ids"]),
        ).logits[:, -1]
    elif copies_from is not None:
        logits = _copies_as_positions(model, batch, repeat, prefix, copies_from)
    else:
        try:
            logits = model(
                input_ids=rep(batch["input_ids"][:, -1:]),
                attention_mask=rep(batch["prefix_mask"]),
                position_ids=rep(batch["position_ids"][:, -1:]),
                cache=prefix.cache(repeat),
                use_cache=True,
            ).logits[:, -1]
        finally:
            prefix.restore(repeat)
    log_probs = F.log_softmax(_at_least_float32(logits), -1)
    return log_probs.gather(-1, rep(batch["target"]).unsqueeze(-1)).squeeze(-1)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _attention_mask(allowed: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A 4-D mask (batch x 1 x queries x keys) in the form the model's attention reads: True to attend
    (sdpa), or 0 and the dtype's minimum added to the scores (eager)."""
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    # made where the mask is: a CUDA mask filling CPU zeros fails
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _copies_as_positions(
    model: nn.Module, batch: dict[str, torch.Tensor], n: int, prefix: SharedPrefix, first: int
) -> torch.Tensor:
    """Logits of n copies of each sample's prediction token (rows x n x vocab, flattened sample-major): the
    layers below `first` run the token once, and every layer from `first` on sees n copies of it at the
    same position, each attending to the sample's prefix and to itself (the `positions` layout)."""
    rows, keys = batch["prefix_mask"].shape
    prefix_keys = batch["prefix_mask"][:, None, None, :].bool()  # its prefix and itself
    mask = _attention_mask(prefix_keys, model)
    copies_mask = _attention_mask(
        torch.cat(
            [
                prefix_keys[..., :-1].expand(rows, 1, n, keys - 1),
                torch.eye(n, dtype=torch.bool, device=prefix_keys.device).expand(rows, 1, n, n),
            ],
            dim=-1,
        ),
        model,
    )

    def widen(value):
        if value is mask:
            return copies_mask
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (rows, 1):
            return value.expand(rows, n, *value.shape[2:]).contiguous()  # the token, its position, its rotary
        return tuple(widen(v) for v in value) if isinstance(value, tuple) else value

    def hook(_module, args, kwargs):
        return tuple(widen(a) for a in args), {k: widen(v) for k, v in kwargs.items()}

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in _layers(model)[first:]]
    try:
        with _grouped_query_attention(prefix_keys.device):
            logits = model(
                input_ids=batch["input_ids"][:, -1:],
                attention_mask=mask,
                position_ids=batch["position_ids"][:, -1:],
                cache=prefix.cache(1),
                use_cache=True,
            ).logits
    finally:
        for handle in handles:
            handle.remove()
        prefix.restore(1)
    return logits.reshape(rows * n, -1)


def _grouped_query_attention(device: torch.device):
    """On a CPU, let sdpa read grouped keys and values as they are (`enable_gqa`) instead of repeating them
    per query head: with m queries per row transformers would repeat them, and on a CPU the repeat and its
    backward cost more than the attention (4x, measured at SmolLM2's shapes). On a GPU a mask sends
    `enable_gqa` to the slow kernel, so there the repeat stays."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return mock.patch.dict(os.environ, {"TRANSFORMERS_SDPA_FORCE_GQA": "1"})


def _layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the first list of modules in it (its blocks)."""
    return next(m for m in model.modules() if isinstance(m, nn.ModuleList))


def _first_scaled_layer(model: nn.Module, down_projs: list[nn.Module]) -> int:
    """The index of the lowest decoder layer holding one of `down_projs`."""
    return min(i for i, layer in enumerate(_layers(model)) if any(m is p for p in down_projs for m in layer.modules()))


def copy_layout(model: nn.Module, requested: str | None = None) -> str:
    """`requested` if given, else `positions` where the model's attention reads a 4-D mask, `rows` otherwise."""
    if requested is not None:
        if requested not in COPY_LAYOUTS:
            raise ValueError(f"unknown copy layout {requested!r}: choose one of {', '.join(COPY_LAYOUTS)}")
        return requested
    return "positions" if getattr(model.config, "_attn_implementation", None) in _MASKED_ATTENTION else "rows"


def _replace_last_position(module: nn.Module, values: torch.Tensor, copies: int = 1):
    """A hook that feeds `values` (batch x d_ff) to `module` at the last position instead of its input; with
    `copies`, at the last `copies` positions of each row (the `positions` layout: batch = rows x copies)."""

    def hook(_module, args):
        x = args[0]
        new = values.view(x.shape[0], copies, -1) if copies > 1 else values.unsqueeze(1)
        return (torch.cat([x[:, :-copies], new.to(x.dtype)], dim=1), *args[1:])

    return module.register_forward_pre_hook(hook)


@torch.no_grad()
def activations(
    model: nn.Module, down_projs: list[nn.Module], batch: dict[str, torch.Tensor], prefix=None
) -> list[torch.Tensor]:
    """beta: every listed down projection's input at the last position (batch x d_ff each)."""
    captured: list[torch.Tensor] = [None] * len(down_projs)

    def capture(index):
        def hook(_module, args):
            captured[index] = _at_least_float32(args[0][:, -1])

        return hook

    handles = [proj.register_forward_pre_hook(capture(i)) for i, proj in enumerate(down_projs)]
    try:
        _last_log_prob(model, batch, prefix=prefix)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def log_prob_at_scale(
    model: nn.Module,
    down_projs: list[nn.Module],
    batch: dict[str, torch.Tensor],
    betas: list[torch.Tensor],
    alpha: float,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """log p(target) with the listed layers' activations at the prediction position replaced by alpha * beta."""
    handles = [_replace_last_position(proj, alpha * beta) for proj, beta in zip(down_projs, betas)]
    try:
        with torch.no_grad():
            return _last_log_prob(model, batch, prefix=prefix)
    finally:
        for handle in handles:
            handle.remove()


def integrated_gradients(
    model: nn.Module,
    down_projs: list[nn.Module],
    batch: dict[str, torch.Tensor],
    betas: list[torch.Tensor],
    alphas: torch.Tensor,
    weights: torch.Tensor,
    prefix: SharedPrefix | None = None,
    layout: str = "positions",
) -> list[torch.Tensor]:
    """Att_i for every sample i of the batch and every neuron of each listed layer (batch x d_ff each),
    the listed layers scaled together along alpha * beta, the integral taken at the given nodes.

    The copies of the batch at all nodes run as one forward; their gradients are independent (each copy
    only sees its own scaled activations), so the gradient of the summed log-probabilities gives each
    copy's own gradient. With a `prefix`, `layout` lays the copies out (`copies` in the module's docstring).
    """
    n = len(alphas)
    alphas = alphas.to(device=betas[0].device, dtype=betas[0].dtype)
    weights = weights.to(device=betas[0].device, dtype=betas[0].dtype)
    scaled = [
        (beta.repeat_interleave(n, dim=0) * alphas.repeat(beta.shape[0])[:, None]).requires_grad_(True)
        for beta in betas
    ]
    first = _first_scaled_layer(model, down_projs) if prefix is not None and layout == "positions" else None
    copies = n if first is not None else 1
    handles = [_replace_last_position(proj, values, copies) for proj, values in zip(down_projs, scaled)]
    try:
        with torch.enable_grad():
            log_prob = _last_log_prob(model, batch, repeat=n, prefix=prefix, copies_from=first)
            grads = torch.autograd.grad(log_prob.sum(), scaled)
    finally:
        for handle in handles:
            handle.remove()
    return [beta * (grad.view(beta.shape[0], n, -1) * weights[:, None]).sum(1) for beta, grad in zip(betas, grads)]


def _add_at_last_position(module: nn.Module, delta: torch.Tensor):
    """A hook that adds `delta` (batch x d_ff) to `module`'s input at the last position."""

    def hook(_module, args):
        x = args[0]
        return (torch.cat([x[:, :-1], (x[:, -1] + delta.to(x.dtype)).unsqueeze(1)], dim=1), *args[1:])

    return module.register_forward_pre_hook(hook)


def gradient_times_activation(
    model: nn.Module,
    down_projs: list[nn.Module],
    batch: dict[str, torch.Tensor],
    betas: list[torch.Tensor],
    prefix: SharedPrefix | None = None,
) -> list[torch.Tensor]:
    """beta * d log p / d beta for every listed layer, each a total derivative, from one forward and backward."""
    zeros = [torch.zeros_like(beta, requires_grad=True) for beta in betas]
    handles = [_add_at_last_position(proj, zero) for proj, zero in zip(down_projs, zeros)]
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(_last_log_prob(model, batch, prefix=prefix).sum(), zeros)
    finally:
        for handle in handles:
            handle.remove()
    return [beta * grad for beta, grad in zip(betas, grads)]
