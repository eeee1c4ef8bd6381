"""Trained targets for the attribution benchmarks: the embedded default's, and SmolLM2-135M fine-tuned on a
TOFU subset. Both come from the project's own target preparation and its cache ($SIMU_CACHE_DIR)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from perf.common import device
from simu_lightning.utils.cache import cache_root
from simu_lightning.data.datamodule import encode_split
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.models.loading import load_pretrained
from simu_lightning.models.settings import ModelSettings
from simu_lightning.models.target import base_model, finetuned
from simu_lightning.pipeline.building import finetune_trainer_settings, make_trainer

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "default": [],
    # TOFU forget01 (2 authors, 40 questions) with one retain author; the data sits beside the repository
    "smollm2_tofu": [
        "model=smollm2_135m",
        "benchmark=tofu",
        f"benchmark.path={ROOT.parent / 'shared/data/tofu'}",
        "benchmark.forget_split=forget01",
        "benchmark.max_authors=3",
    ],
}


def trained_target(setup: str):
    """(model, tokenizer, encoded forget rows) of the setup's fine-tuned target (no reference model), the model
    on the suite's device (on CUDA, the GPU) in the precision the setup loads it in."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=outputs/perf", *SETUPS[setup]])
    benchmark, fmt = instantiate(cfg.benchmark), PromptFormat(**cfg.model.prompt)
    cache = cache_root(cfg.paths.cache_dir)
    trainer = partial(make_trainer, cfg.trainer, logger=False, enable_checkpointing=False)
    model_settings = ModelSettings.of(OmegaConf.to_container(cfg.model, resolve=True))
    base = base_model(model_settings, benchmark, cache)
    target = finetuned(
        base,
        benchmark,
        benchmark.target_splits,
        model_settings,
        fmt,
        cache,
        trainer,
        finetune_trainer_settings(cfg.trainer),
    )  # the same cache key as a run's
    model, tokenizer = load_pretrained(target, cfg.model.dtype, tokenizer_source=cfg.model.get("tokenizer"))
    model = model.to(device())
    forget = encode_split(benchmark[benchmark.forget], tokenizer, fmt, cfg.model.max_length)
    return model, tokenizer, forget
