"""Integrated-gradient attribution of MLP down-projection neurons (SIMU stage 1).

Each forget QA pair becomes next-token prediction samples: prompt + answer prefix -> next answer
token. For layer l and neuron k, with beta the neuron's raw activation (the k-th input of `down_proj`)
at the prediction position,

    Att_i(w_l^k) = beta_i^k * (1/m) * sum_{s=1..m} d log p(target_i) / d beta^k  at (s/m) * beta_i,

only layer l scaled (a right Riemann sum of the integrated gradient from 0 to beta). All neurons of a
layer are scaled together, so one batch of m scaled copies of a sample yields every neuron of the
layer. By completeness, sum_k Att_i -> log p(beta) - log p(0) as m grows.

Samples are left-padded, so the prediction position is the last one for all of them, and the tokens
before it are computed once (a key/value cache) and shared by all m scaled copies and all layers.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from simu_lightning.data.formatting import IGNORE_INDEX, collate


def prediction_samples(examples: list[dict], eos_token_id: int | None = None) -> list[dict]:
    """One sample per answer token: the tokens before it (`input_ids`) and the token (`target`).
    The closing EOS is not a fact, so it is not a target."""
    samples = []
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX and labels[t] != eos_token_id:
                samples.append({"input_ids": ids[:t], "target": labels[t]})
    return samples


def batches(samples: list[dict], size: int, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Left-padded batches, so that every sample's prediction position is the last one."""
    for start in range(0, len(samples), size):
        chunk = samples[start:start + size]
        batch = collate(chunk, pad_token_id, padding_side="left")
        batch["target"] = torch.tensor([s["target"] for s in chunk])
        batch["weight"] = torch.tensor([float(s.get("weight", 1.0)) for s in chunk])  # 0: padding
        yield batch


def prefix_cache(model: nn.Module, batch: dict[str, torch.Tensor]):
    """The key/value cache of every sample's tokens before its prediction position.

    Scaling an activation at the prediction position cannot change anything before it (the model is
    causal), so every scaled copy can share this prefix and run the last token alone.
    """
    with torch.no_grad():
        return model(input_ids=batch["input_ids"][:, :-1], attention_mask=batch["attention_mask"][:, :-1],
                     position_ids=batch["position_ids"][:, :-1], use_cache=True).cache


def _last_log_prob(model: nn.Module, batch: dict[str, torch.Tensor], repeat: int = 1, prefix=None) -> torch.Tensor:
    """log p(target) at the last position, each sample repeated `repeat` times (sample-major).

    With a `prefix` cache only the last token runs; without one, the whole sequences do."""
    def rep(t):
        return t.repeat_interleave(repeat, dim=0)

    if prefix is None:
        logits = model(input_ids=rep(batch["input_ids"]), attention_mask=rep(batch["attention_mask"]),
                       position_ids=rep(batch["position_ids"])).logits[:, -1]
    else:
        cache = copy.deepcopy(prefix)  # the forward appends to the cache it is given
        cache.batch_repeat_interleave(repeat)
        logits = model(input_ids=rep(batch["input_ids"][:, -1:]), attention_mask=rep(batch["attention_mask"]),
                       position_ids=rep(batch["position_ids"][:, -1:]), cache=cache,
                       use_cache=True).logits[:, -1]
    log_probs = F.log_softmax(logits.float(), -1)
    return log_probs.gather(-1, rep(batch["target"]).unsqueeze(-1)).squeeze(-1)


def _replace_last_position(module: nn.Module, values: torch.Tensor):
    """A hook that feeds `values` (batch x d_ff) to `module` at the last position instead of its input."""
    def hook(_module, args):
        x = args[0]
        return (torch.cat([x[:, :-1], values.unsqueeze(1).to(x.dtype)], dim=1), *args[1:])
    return module.register_forward_pre_hook(hook)


@torch.no_grad()
def activations(model: nn.Module, down_projs: list[nn.Module], batch: dict[str, torch.Tensor],
                prefix=None) -> list[torch.Tensor]:
    """beta: every listed down projection's input at the last position (batch x d_ff each)."""
    captured: list[torch.Tensor] = [None] * len(down_projs)

    def capture(index):
        def hook(_module, args):
            captured[index] = args[0][:, -1].float()
        return hook

    handles = [proj.register_forward_pre_hook(capture(i)) for i, proj in enumerate(down_projs)]
    try:
        _last_log_prob(model, batch, prefix=prefix)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def log_prob_at_scale(model: nn.Module, down_proj: nn.Module, batch: dict[str, torch.Tensor],
                      beta: torch.Tensor, alpha: float, prefix=None) -> torch.Tensor:
    """log p(target) with the layer's activation at the prediction position replaced by alpha * beta."""
    handle = _replace_last_position(down_proj, alpha * beta)
    try:
        with torch.no_grad():
            return _last_log_prob(model, batch, prefix=prefix)
    finally:
        handle.remove()


def integrated_gradients(model: nn.Module, down_proj: nn.Module, batch: dict[str, torch.Tensor],
                         beta: torch.Tensor, m: int, prefix=None) -> torch.Tensor:
    """Att_i for every sample i of the batch and every neuron of this layer (batch x d_ff).

    The m scaled copies of the batch run as one forward; their gradients are independent (each copy
    only sees its own scaled activation), so the gradient of the summed log-probabilities gives each
    copy's own gradient.
    """
    alphas = torch.arange(1, m + 1, dtype=beta.dtype, device=beta.device) / m
    scaled = (beta.repeat_interleave(m, dim=0) * alphas.repeat(beta.shape[0])[:, None]).requires_grad_(True)
    handle = _replace_last_position(down_proj, scaled)
    try:
        with torch.enable_grad():
            log_prob = _last_log_prob(model, batch, repeat=m, prefix=prefix)
            (grad,) = torch.autograd.grad(log_prob.sum(), scaled)
    finally:
        handle.remove()
    return beta * grad.view(beta.shape[0], m, -1).mean(1)


def attribute(model: nn.Module, down_projs: dict[str, nn.Module], samples: list[dict], m: int,
              pad_token_id: int, max_batch: int = 512) -> dict[str, torch.Tensor]:
    """Att(w_l^k) summed over all samples, for every layer's down projection (name -> d_ff scores).

    `max_batch` bounds the sequences in one forward (m scaled copies of each sample count m times).
    A sample's optional `weight` scales its contribution (0 for the padding of a process's share).
    """
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # gradients flow to the scaled activations only
    names, projs = list(down_projs), list(down_projs.values())
    scores = {name: None for name in names}
    try:
        for batch in batches(samples, max(1, max_batch // m), pad_token_id):
            batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
            prefix = prefix_cache(model, batch)
            betas = activations(model, projs, batch, prefix)
            for name, proj, beta in zip(names, projs, betas):
                att = (integrated_gradients(model, proj, batch, beta, m, prefix) * batch["weight"][:, None]).sum(0)
                scores[name] = att if scores[name] is None else scores[name] + att
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    return {name: score.cpu() for name, score in scores.items()}
