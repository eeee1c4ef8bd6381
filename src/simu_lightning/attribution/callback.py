"""The pre-fit callback that runs SIMU stage 1 when the method needs critical-neuron masks.

Scores depend only on the target, the forget set and m, so they are cached under exactly that key;
the threshold t is applied after the cache, which makes a sweep over t cost one attribution.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch

from simu_lightning.attribution.integrated_gradients import attribute, prediction_samples
from simu_lightning.attribution.neurons import check_threshold, critical_neurons
from simu_lightning.cache import atomic_dir, cache_key
from simu_lightning.distributed import agree, rank_and_world, share, sum_across
from simu_lightning.errors import SimuError
from simu_lightning.models.architecture import down_projections


def check_steps(m) -> None:
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise SimuError(f"attribution.m must be an integer >= 1, got {m!r}")


class NeuronAttribution(L.Callback):
    def __init__(self, t: float, m: int, max_batch: int = 512, output_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, target_id: str = ""):
        check_threshold(t)
        check_steps(m)
        self.t, self.m, self.max_batch = t, m, max_batch
        self.output_dir = Path(output_dir) if output_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.target_id = target_id
        self.seconds = 0.0
        self.kept: dict[str, int] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not pl_module.method.critical_neuron_mask:
            return
        start = time.perf_counter()
        forget = trainer.datamodule.forget
        scores = self._cached_scores(forget, lambda: self.compute(trainer, pl_module, forget))
        neurons = critical_neurons(scores, self.t)
        pl_module.set_critical_neurons(neurons)
        self.kept = {name: int(mask.sum()) for name, mask in neurons.items()}
        if trainer.is_global_zero:
            self._save(scores, neurons)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"attribution/kept/layer_{i}": kept for i, kept in enumerate(self.kept.values())}
                                       | {"attribution/kept_fraction": self.kept_fraction(neurons)}, step=0)
        self.seconds = time.perf_counter() - start

    @staticmethod
    def kept_fraction(neurons: dict[str, torch.Tensor]) -> float:
        return sum(int(m.sum()) for m in neurons.values()) / sum(m.numel() for m in neurons.values())

    def compute(self, trainer: L.Trainer, pl_module, forget: list[dict]) -> dict[str, torch.Tensor]:
        """Scores over the whole forget set; with several processes each scores its share (padding
        weighted 0) and the shares are summed, so every process derives the same masks."""
        tokenizer = trainer.datamodule.tokenizer
        samples = prediction_samples(forget, tokenizer.eos_token_id)
        if not samples:
            raise SimuError("the forget set has no answer tokens to attribute")
        block, real = share(samples, *rank_and_world())
        block = [dict(sample, weight=1.0 if i < real else 0.0) for i, sample in enumerate(block)]
        projs = down_projections(pl_module.model, pl_module.architecture)
        scores = attribute(pl_module.model, projs, block, self.m, tokenizer.pad_token_id, self.max_batch)
        return {name: sum_across(score) for name, score in scores.items()}

    def _cached_scores(self, forget: list[dict], compute) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return compute()
        key = cache_key("attribution", self.target_id, [(e["input_ids"], e["labels"]) for e in forget], self.m)
        path = self.cache_dir / "attribution" / key
        if agree((path / "scores.pt").exists()):
            return torch.load(path / "scores.pt")
        scores = compute()
        with atomic_dir(path) as tmp:
            tmp.mkdir()
            torch.save(scores, tmp / "scores.pt")
        return scores

    def _save(self, scores: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor]) -> None:
        if self.output_dir is None:
            return
        out = self.output_dir / "attribution"
        out.mkdir(parents=True, exist_ok=True)
        torch.save(scores, out / "scores.pt")
        torch.save(neurons, out / "critical_neurons.pt")
        summary = {"t": self.t, "m": self.m, "kept_fraction": self.kept_fraction(neurons),
                   "layers": {name: {"critical": self.kept[name], "neurons": int(mask.numel())}
                              for name, mask in neurons.items()}}
        (out / "critical_neurons.json").write_text(json.dumps(summary, indent=2) + "\n")
