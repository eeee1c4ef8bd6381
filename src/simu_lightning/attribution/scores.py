"""A rule's scores of every unit over a split: each layer's down-projection neurons (`attribute`), or each
layer's attention heads (`attribute_heads`), summed over the split's prediction samples. The rule
(rules/) says what a sample's score is; this module batches the samples, runs the shared prefixes once and
sums."""

from __future__ import annotations

import torch
from torch import nn

from simu_lightning.attribution.integrated_gradients import SharedPrefix, activations, batches, copy_layout
from simu_lightning.attribution.rules import selection_rule
from simu_lightning.utils.phase_progress import advance, phase


def attribute(
    model: nn.Module,
    projs: dict[str, nn.Module],
    samples: list[dict],
    m: int,
    pad_token_id: int,
    max_batch: int = 512,
    quadrature_rule: str = "riemann",
    mode: str = "layerwise",
    score: str = "integrated_gradients",
    copies: str | None = None,
) -> dict[str, torch.Tensor]:
    """Att(w_l^k) summed over all samples, for every layer's down projection (name -> d_ff scores);
    with `score` another rule's (activation, gradient, or a rule of one's own), its score instead.
    Any projection's input features are attributed alike (`attribute_heads`: the output projections').

    `max_batch` bounds the sequences in one forward (the m scaled copies of a sample count m times).
    A sample's optional `weight` scales its contribution (0 for the padding of a process's share).
    `copies` lays out the scaled copies (`positions` or `rows`; by default what the attention allows).
    """
    rule = selection_rule(score)
    if rule.scores() != rule.name:
        raise ValueError(f"attribution score {score!r}: the rule has no scores of its own")
    rule = rule(m, quadrature_rule, mode)
    layout = copy_layout(model, copies)
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # gradients flow to the scaled activations only
    names, projs = list(projs), list(projs.values())
    scores = {name: None for name in names}
    per_batch = max(1, max_batch // rule.copies)
    total = -(-len(samples) // per_batch)
    what = mode if rule.name == "integrated_gradients" else rule.name
    with phase(f"attribution ({what}, {len(projs)} layers)", total, "batches"):
        try:
            for batch in batches(samples, per_batch, pad_token_id):
                batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
                prefix = SharedPrefix(model, batch)
                betas = activations(model, projs, batch, prefix)
                for group in rule.groups(len(projs)):
                    atts = rule.attributions(model, projs, group, batch, betas, prefix, layout)
                    for i, att in zip(group, atts):
                        att = (att * batch["weight"][:, None]).sum(0)
                        scores[names[i]] = att if scores[names[i]] is None else scores[names[i]] + att
                advance()  # the phase's progress lines give the batches done and the time to go
        finally:
            model.train(was_training)
            for p, flag in zip(model.parameters(), requires_grad):
                p.requires_grad_(flag)
    return {name: score.cpu() for name, score in scores.items()}


def attribute_heads(
    model: nn.Module, o_projs: dict[str, nn.Module], samples: list[dict], *args, heads: int, **kwargs
) -> dict[str, torch.Tensor]:
    """Att(head h of layer l) summed over all samples, for every layer's output projection (name -> one
    score per head, `heads` of them): `attribute`, with the same arguments, over o_proj's input (head h's
    output is its slice h*d:(h+1)*d), summed per head."""
    scores = attribute(model, o_projs, samples, *args, **kwargs)
    return {name: score.view(heads, -1).sum(-1) for name, score in scores.items()}
