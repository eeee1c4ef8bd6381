"""The pre-fit callback that runs SIMU stage 1 when the method needs critical-neuron masks.

Scores depend only on the target, the forget set, m, the quadrature rule, the mode, the dtype, the
architecture's module names and the attribution code (ATTRIBUTION_FORMAT), so they are cached under
exactly that key; the threshold t
is applied after the cache, which makes a sweep over t cost one attribution. The masks travel in every
checkpoint: a resumed run reuses them and never attributes on half-unlearned weights.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from simu_lightning.attribution.integrated_gradients import MODES, QUADRATURES, attribute, passes, prediction_samples
from simu_lightning.attribution.neurons import check_threshold, critical_neurons
from simu_lightning.cache import atomic_dir, cache_key
from simu_lightning.distributed import agree, rank_and_world, share, sum_across
from simu_lightning.errors import SimuError
from simu_lightning.files import atomic_file
from simu_lightning.memory import with_halving
from simu_lightning.models.architecture import down_projections

log = logging.getLogger(__name__)

# Bump when the attribution's arithmetic changes: cached scores from older code are then not reused.
ATTRIBUTION_FORMAT = 2


def check_steps(m) -> None:
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise SimuError(f"attribution.m must be an integer >= 1, got {m!r}")


def check_method(quadrature: str, mode: str) -> None:
    if quadrature not in QUADRATURES:
        raise SimuError(f"attribution.quadrature must be one of {', '.join(QUADRATURES)}, got {quadrature!r}")
    if mode not in MODES:
        raise SimuError(f"attribution.mode must be one of {', '.join(MODES)}, got {mode!r}")


class NeuronAttribution(L.Callback):
    def __init__(self, t: float, m: int, max_batch: int = 512, quadrature: str = "riemann", mode: str = "layerwise",
                 output_dir: str | Path | None = None, cache_dir: str | Path | None = None, target_id: str = "",
                 dtype: str = "float32"):
        check_threshold(t)
        check_steps(m)
        check_method(quadrature, mode)
        self.t, self.m, self.max_batch = t, m, max_batch
        self.quadrature, self.mode = quadrature, mode
        self.output_dir = Path(output_dir) if output_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.target_id, self.dtype = target_id, dtype
        self.seconds = 0.0
        self.kept: dict[str, int] = {}
        self.neurons: dict[str, torch.Tensor] | None = None  # restored from a checkpoint, or computed

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not pl_module.method.critical_neuron_mask:
            return
        start = time.perf_counter()
        if self.neurons is not None and trainer.ckpt_path:
            # single-device strategies restore the checkpoint before this hook: the weights are no longer
            # the target's, so the masks come from the checkpoint rather than a new attribution
            log.info("reusing the critical neurons saved in the checkpoint %s", trainer.ckpt_path)
            neurons, scores = self.neurons, None
        else:
            if trainer.ckpt_path and not trainer.strategy.restore_checkpoint_after_setup:
                raise SimuError(f"{trainer.ckpt_path} holds no critical neurons (written by an older version?) and "
                                "the weights are already restored: attributing now would score half-unlearned "
                                "weights; start the run in a new output directory")
            forget = trainer.datamodule.forget
            scores = self._cached_scores(trainer, pl_module, lambda: self.compute(trainer, pl_module, forget))
            neurons = critical_neurons(scores, self.t)
        self.neurons = neurons
        pl_module.set_critical_neurons(neurons)
        self.kept = {name: int(mask.sum()) for name, mask in neurons.items()}
        if trainer.is_global_zero and scores is not None:
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
        log.info("attribution: %d answer tokens, %s mode, %s rule, m=%d: %d passes per batch over %d layers",
                 len(samples), self.mode, self.quadrature, self.m, passes(self.mode, len(projs), self.m), len(projs))
        scores = with_halving(lambda size: attribute(pl_module.model, projs, block, self.m, tokenizer.pad_token_id, size,
                                                     self.quadrature, self.mode),
                              self.max_batch, "attribution (attribution.max_batch)")
        return {name: sum_across(score) for name, score in scores.items()}

    def cache_key(self, pl_module, forget: list[dict]) -> str:
        return cache_key("attribution", ATTRIBUTION_FORMAT, self.target_id,
                         [(e["input_ids"], e["labels"]) for e in forget], self.m, self.quadrature, self.mode, self.dtype,
                         asdict(pl_module.architecture))

    def _cached_scores(self, trainer: L.Trainer, pl_module, compute) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return compute()
        path = self.cache_dir / "attribution" / self.cache_key(pl_module, trainer.datamodule.forget)
        if agree((path / "scores.pt").exists()):
            log.info("reusing cached attribution scores %s (computed for m=%d, %s, %s on %s)", path, self.m,
                     self.quadrature, self.mode, self.target_id)
            return torch.load(path / "scores.pt", weights_only=True)
        scores = compute()
        if trainer.is_global_zero:  # one writer; the others hold the same scores in memory
            with atomic_dir(path) as tmp:
                tmp.mkdir()
                torch.save(scores, tmp / "scores.pt")
        trainer.strategy.barrier("attribution cache written")
        return scores

    def state_dict(self) -> dict:
        return {"neurons": self.neurons} if self.neurons is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("neurons") is not None:
            self.neurons = state_dict["neurons"]

    def _save(self, scores: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor]) -> None:
        if self.output_dir is None:
            return
        out = self.output_dir / "attribution"
        out.mkdir(parents=True, exist_ok=True)
        for name, value in (("scores.pt", scores), ("critical_neurons.pt", neurons)):
            with atomic_file(out / name) as tmp:
                torch.save(value, tmp)
        summary = {"t": self.t, "m": self.m, "quadrature": self.quadrature, "mode": self.mode, "kept_fraction": self.kept_fraction(neurons),
                   "layers": {name: {"critical": self.kept[name], "neurons": int(mask.numel())}
                              for name, mask in neurons.items()}}
        with atomic_file(out / "critical_neurons.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
