"""How many integrated-gradient steps m does completeness need on a *trained* target?

For every forget prediction sample and every layer, compare sum_k Att_i(w_l^k) with
log p(beta) - log p(0) and report, per m, the median and 95th-percentile relative error.
Usage: python perf/completeness.py [hydra overrides...]  (uses the cached target; builds it if absent)
"""

import json
import sys
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simu_lightning.attribution.integrated_gradients import (
    SharedPrefix,
    activations,
    batches,
    integrated_gradients,
    log_prob_at_scale,
    prediction_samples,
    quadrature,
)
from simu_lightning.utils.cache import cache_root
from simu_lightning.data.datamodule import encode_split
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.models.architecture import architecture_of, down_projections
from simu_lightning.models.loading import load_pretrained
from simu_lightning.models.settings import ModelSettings
from simu_lightning.models.target import prepare_target
from simu_lightning.pipeline.building import make_trainer

STEPS = (1, 5, 10, 20, 50, 100, 200, 500)


def main(overrides: list[str]) -> dict:
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=outputs/perf", *overrides])
    benchmark, fmt = instantiate(cfg.benchmark), PromptFormat(**cfg.model.prompt)
    trainer = partial(make_trainer, cfg.trainer, logger=False, enable_checkpointing=False)
    target = prepare_target(
        ModelSettings.of(OmegaConf.to_container(cfg.model, resolve=True)),
        benchmark,
        fmt,
        cache_root(cfg.paths.cache_dir),
        trainer,
    )
    model, tokenizer = load_pretrained(target.source, cfg.model.dtype)
    model.eval().requires_grad_(False)
    forget = encode_split(benchmark[benchmark.forget], tokenizer, fmt, cfg.model.max_length)
    samples = prediction_samples(forget, tokenizer.eos_token_id)
    projs = list(down_projections(model, architecture_of(model)).values())
    errors, gaps = {m: [] for m in STEPS}, []
    for batch in batches(samples, 4, tokenizer.pad_token_id):  # 4 samples x m=500 copies per forward
        prefix = SharedPrefix(model, batch)
        for proj, beta in zip(projs, activations(model, projs, batch, prefix)):
            gap = log_prob_at_scale(model, [proj], batch, [beta], 1.0, prefix) - log_prob_at_scale(
                model, [proj], batch, [beta], 0.0, prefix
            )
            gaps.append(gap.abs())
            for m in STEPS:
                att = integrated_gradients(model, [proj], batch, [beta], *quadrature("riemann", m), prefix)[0]
                errors[m].append((att.sum(-1) - gap).abs())
    gap = torch.cat(gaps)
    report = {}
    for m in STEPS:
        err = torch.cat(errors[m])
        rel = err / gap.clamp(min=1e-12)
        report[m] = {
            "median": rel.median().item(),
            "p95": rel.quantile(0.95).item(),
            "within_5pct_or_1e-3": ((err <= 0.05 * gap) | (err <= 1e-3)).float().mean().item(),
        }
        print(
            f"m={m:4d}  median rel. error {report[m]['median']:.3f}  p95 {report[m]['p95']:.3f}  "
            f"samples within 5% (or 1e-3 abs) {report[m]['within_5pct_or_1e-3']:.1%}"
        )
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
