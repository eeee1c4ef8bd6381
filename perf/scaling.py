"""Scaling: the unlearning step (SIMU) and attribution at three model sizes and three forget-set sizes.
Expected growth: step time linear in tokens, attribution linear in samples x layers x quadrature nodes."""

from __future__ import annotations

from functools import partial

from perf.common import device, median_seconds, olmo, parameters
from perf.loop import plain_step, prepare, synthetic_batches, to, tokens
from simu_lightning.attribution.integrated_gradients import passes
from simu_lightning.attribution.scores import attribute
from simu_lightning.models.architecture import architecture_of, down_projections


def forget_samples(vocab: int, rows: int, length: int = 24, answer: int = 8) -> list[dict]:
    """`rows` examples' prediction samples (one per answer token) of random tokens."""
    batch = synthetic_batches(vocab, 1, rows, length, answer, seed=1)[0]["forget"]
    return [
        {"input_ids": ids[:t].tolist(), "target": int(ids[t])}
        for ids in batch["input_ids"]
        for t in range(length - answer, length)
    ]


def run(sizes=("small", "medium", "large"), forget_rows=(4, 8, 16), m: int = 8, repeats: int = 3) -> dict:
    rows = []
    for size in sizes:
        model = olmo(size)
        layers = model.config.num_hidden_layers
        batch = to(synthetic_batches(model.config.vocab_size, 1)[0], device())
        optimizer = prepare(model.train(), "simu")
        step = median_seconds(partial(plain_step, model, optimizer, batch), repeats)
        projs = down_projections(model, architecture_of(model))
        model.eval()
        for n in forget_rows:
            samples = forget_samples(model.config.vocab_size, n)
            seconds = median_seconds(
                partial(attribute, model, projs, samples, m, 0, 512, "gauss_legendre", "layerwise"), repeats, warmup=0
            )
            rows.append(
                {
                    "model": size,
                    "parameters_m": round(parameters(model) / 1e6, 2),
                    "layers": layers,
                    "step_tokens": tokens(batch),
                    "step_ms": round(step * 1e3, 1),
                    "forget_rows": n,
                    "samples": len(samples),
                    "sample_passes": passes("layerwise", layers, m) * len(samples),
                    "attribution_s": round(seconds, 3),
                }
            )
    return {"attribution": f"layerwise gauss_legendre m={m}", "rows": rows}
