"""Stage 7: what a run leaves in its directory, written by rank 0, each file atomically: results.json,
generations.jsonl, manifest.json, config.yaml and (after unlearning) unlearned_model/. Every mode writes
through `write_run`."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from simu_lightning.pipeline.manifest import manifest
from simu_lightning.utils.files import atomic, write_json, write_jsonl

log = logging.getLogger(__name__)


def write_model(out: Path, model, tokenizer, weights: dict) -> None:
    with atomic(out / "unlearned_model") as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)


def write_run(plan, results: dict, rows: list[dict] | None, cache_keys: dict, world_size: int = 1) -> None:
    """results.json last, so that a run directory holding it is complete (`rerun=false` trusts it)."""
    out = plan.out
    if rows is not None:
        write_jsonl(out / "generations.jsonl", rows)
    write_json(out / "manifest.json", manifest(plan, world_size, cache_keys))
    with atomic(out / "config.yaml") as tmp:
        OmegaConf.save(OmegaConf.create(plan.config), tmp)
    write_json(out / "results.json", results)
    log.info("outputs in %s", out)
