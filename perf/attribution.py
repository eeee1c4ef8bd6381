"""Attribution: time, cost and agreement of each quadrature rule and mode against a converged reference.

For a trained target and its forget set: every configuration's seconds; its cost in units of one
forward+backward over the forget set (full sequences, the answer NLL); the median relative completeness
error (layer-wise and first order: |sum_k Att - (log p(beta_l) - log p(0))| per sample and layer; joint:
the same with every layer scaled together); and, against the reference (layer-wise Gauss-Legendre with
many nodes), the Jaccard index of the critical-neuron masks at several t and the mean per-layer Spearman
rank correlation of the scores. And the two layouts of the scaled copies side by side (`layouts`): copies as
positions, the layers below the scaled one run once per sample (the default), against copies as rows of a
repeated cache, every layer run per copy (the layout before it): seconds, the speed-up, and the largest
relative difference of the scores.
"""

from __future__ import annotations

import time

import torch
from scipy.stats import spearmanr

from perf.common import device, sync
from simu_lightning.attribution.integrated_gradients import (
    SharedPrefix,
    activations,
    batches,
    gradient_times_activation,
    integrated_gradients,
    log_prob_at_scale,
    passes,
    prediction_samples,
    quadrature,
)
from simu_lightning.attribution.scores import attribute
from simu_lightning.attribution.neurons import critical_neurons
from simu_lightning.data.formatting import collate
from simu_lightning.likelihood import answer_nll
from simu_lightning.models.architecture import architecture_of, down_projections

THRESHOLDS = (0.1, 0.2, 0.4)
# (mode, rule, m): the paper's configuration first, then the fast ones
CONFIGS = [
    ("layerwise", "riemann", 20),
    ("layerwise", "riemann", 50),
    ("layerwise", "gauss_legendre", 4),
    ("layerwise", "gauss_legendre", 8),
    ("layerwise", "gauss_legendre", 16),
    ("joint", "gauss_legendre", 8),
    ("joint", "gauss_legendre", 16),
    ("joint", "gauss_legendre", 32),
    ("first_order", "riemann", 1),
]


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch on the suite's device (where the model is: on CUDA, the GPU)."""
    return {k: v.to(device()) for k, v in batch.items()}


def forward_backward_seconds(model, tokenizer, forget: list[dict], batch_size: int = 16) -> float:
    """One forward+backward of the answer NLL over the forget set: the unit of cost."""
    model.train().requires_grad_(True)
    sync()
    start = time.perf_counter()
    for i in range(0, len(forget), batch_size):
        batch = to_device(collate(forget[i : i + batch_size], tokenizer.pad_token_id))
        answer_nll(model, batch).mean.mean().backward()
    sync()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval().requires_grad_(False)
    return seconds


def completeness_error(model, projs, samples, pad_token_id, mode, rule, m, batch_size: int = 8) -> float:
    """Median relative completeness error over samples (and layers, layer-wise and first order)."""
    errors = []
    alphas, weights = quadrature(rule, m)
    for batch in map(to_device, batches(samples, batch_size, pad_token_id)):
        prefix = SharedPrefix(model, batch)
        betas = activations(model, projs, batch, prefix)
        if mode == "joint":
            atts = integrated_gradients(model, projs, batch, betas, alphas, weights, prefix)
            gap = log_prob_at_scale(model, projs, batch, betas, 1.0, prefix) - log_prob_at_scale(
                model, projs, batch, betas, 0.0, prefix
            )
            errors.append((sum(a.sum(-1) for a in atts) - gap).abs() / gap.abs().clamp(min=1e-6))
            continue
        if mode == "first_order":
            atts = gradient_times_activation(model, projs, batch, betas, prefix)
        for i, (proj, beta) in enumerate(zip(projs, betas)):
            att = (
                atts[i]
                if mode == "first_order"
                else integrated_gradients(model, [proj], batch, [beta], alphas, weights, prefix)[0]
            )
            gap = log_prob_at_scale(model, [proj], batch, [beta], 1.0, prefix) - log_prob_at_scale(
                model, [proj], batch, [beta], 0.0, prefix
            )
            errors.append((att.sum(-1) - gap).abs() / gap.abs().clamp(min=1e-6))
    return float(torch.cat(errors).median())


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 1.0


def rank_correlation(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(spearmanr(a[n].numpy(), b[n].numpy()).statistic for n in a) / len(a))


def run(
    model,
    tokenizer,
    forget: list[dict],
    configs=CONFIGS,
    reference=("layerwise", "gauss_legendre", 64),
    completeness_samples: int = 48,
    max_batch: int = 512,
) -> dict:
    model.eval().requires_grad_(False)
    projs = down_projections(model, architecture_of(model))
    samples = prediction_samples(forget, tokenizer.eos_token_id)
    unit = forward_backward_seconds(model, tokenizer, forget)

    def scores_of(mode, rule, m):
        start = time.perf_counter()
        scores = attribute(model, projs, samples, m, tokenizer.pad_token_id, max_batch, rule, mode)
        return scores, time.perf_counter() - start

    ref_scores, ref_seconds = scores_of(*reference)
    ref_masks = {t: critical_neurons(ref_scores, t) for t in THRESHOLDS}
    rows = []
    for mode, rule, m in [reference, *configs]:
        scores, seconds = (ref_scores, ref_seconds) if (mode, rule, m) == reference else scores_of(mode, rule, m)
        rows.append(
            {
                "mode": mode,
                "quadrature": "-" if mode == "first_order" else rule,
                "m": m,
                "passes_per_batch": passes(mode, len(projs), m),
                "seconds": round(seconds, 2),
                "cost": round(seconds / unit, 1),
                "completeness_error": round(
                    completeness_error(
                        model,
                        list(projs.values()),
                        samples[:completeness_samples],
                        tokenizer.pad_token_id,
                        mode,
                        rule,
                        m,
                    ),
                    4,
                ),
                **{f"jaccard_t{t}": round(jaccard(critical_neurons(scores, t), ref_masks[t]), 3) for t in THRESHOLDS},
                "spearman": round(rank_correlation(scores, ref_scores), 3),
                "reference": (mode, rule, m) == reference,
            }
        )
    fewest = [r for r in rows if not r["reference"] and min(r[f"jaccard_t{t}"] for t in THRESHOLDS) >= 0.95]
    best = min(fewest, key=lambda r: r["seconds"]) if fewest else None
    return {
        "forget_rows": len(forget),
        "prediction_samples": len(samples),
        "layers": len(projs),
        "forward_backward_s": round(unit, 3),
        "reference": "/".join(map(str, reference)),
        "rows": rows,
        "fastest_with_jaccard_0.95": None if best is None else f"{best['mode']}/{best['quadrature']}/{best['m']}",
    }


def layouts(model, tokenizer, forget: list[dict], mode: str, rule: str, m: int, max_batch: int = 512) -> dict:
    """One configuration with the copies as positions and as rows, side by side: seconds of each, the speed-up
    (rows / positions), the largest difference of a score relative to the layer's largest |score|, and the
    critical-neuron masks' agreement."""
    projs = down_projections(model, architecture_of(model))
    samples = prediction_samples(forget, tokenizer.eos_token_id)
    seconds, scores = {}, {}
    for layout in ("rows", "positions"):
        start = time.perf_counter()
        scores[layout] = attribute(
            model, projs, samples, m, tokenizer.pad_token_id, max_batch, rule, mode, copies=layout
        )
        seconds[layout] = time.perf_counter() - start
    difference = max(
        float((scores["positions"][n] - scores["rows"][n]).abs().max() / scores["rows"][n].abs().max().clamp(min=1e-30))
        for n in projs
    )
    return {
        "config": f"{mode}/{rule}/{m}",
        "forget_rows": len(forget),
        "prediction_samples": len(samples),
        "rows_s": round(seconds["rows"], 2),
        "positions_s": round(seconds["positions"], 2),
        "speedup": round(seconds["rows"] / seconds["positions"], 2),
        "max_relative_difference": float(f"{difference:.2g}"),
        **{
            f"jaccard_t{t}": round(
                jaccard(critical_neurons(scores["positions"], t), critical_neurons(scores["rows"], t)), 4
            )
            for t in THRESHOLDS
        },
    }
