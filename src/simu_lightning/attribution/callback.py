"""The pre-fit callback that runs SIMU stage 1 when the method needs critical-neuron masks.

Scores depend only on the target, the attributed examples (the forget set; with exclude_retain also
the retain set), the score (selection.py), m, the quadrature rule, the mode, the dtype they were
computed in (the model's, or bf16 when FSDP2 all-gathers it in bf16), the
architecture's module names and the attribution code (ATTRIBUTION_FORMAT), so they are cached under
exactly that key; the threshold t, the random draw and the retain exclusion are applied after the
cache, which makes a sweep over t (or over seeds of `selection=random`) cost one attribution. The masks travel in every
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

from simu_lightning.attribution.integrated_gradients import attribute, passes, prediction_samples
from simu_lightning.attribution.localisation import localisation
from simu_lightning.attribution.neurons import select_critical
from simu_lightning.attribution.selection import exclude_shared, random_like, score_of
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.utils.cache import cache_key
from simu_lightning.distributed import agree, share, sum_across
from simu_lightning.utils.processes import rank_and_world
from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.files import atomic
from simu_lightning.utils.memory import with_halving
from simu_lightning.models.architecture import down_projections

log = logging.getLogger(__name__)

# Bump when the attribution's arithmetic changes: cached scores from older code are then not reused.
ATTRIBUTION_FORMAT = 2


class NeuronAttribution(L.Callback):
    def __init__(
        self,
        settings: AttributionSettings,
        output_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        target_id: str = "",
        dtype: str = "float32",
        seed: int = 0,
        planted: dict[str, torch.Tensor] | None = None,
    ):
        self.settings, self.seed = settings, seed
        self.keys: dict[str, str] = {}  # cache key of the scores of each attributed split
        self.dropped: dict[str, int] = {}  # exclude_retain: neurons dropped per layer as shared with the retain set
        self.output_dir = Path(output_dir) if output_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.target_id, self.dtype = target_id, dtype
        self.seconds = 0.0
        self.kept: dict[str, int] = {}
        self.chosen_t: dict[str, float | None] = {}  # each layer's t (t=auto chooses one per layer)
        self.neurons: dict[str, torch.Tensor] | None = None  # restored from a checkpoint, or computed
        self.ranking: dict[str, torch.Tensor] | None = None  # what the selection ranks neurons by
        self.planted = planted  # a planted target's P: the selection is scored against it (localisation.py)
        self.localisation: dict | None = None
        if settings.selection == "planted" and planted is None:
            raise SimuError(
                "attribution.selection=planted is the oracle mask of a planted target: set benchmark.planted.fraction"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not pl_module.method.needs_attribution:
            if pl_module.method.critical_neuron_mask:
                log.info(
                    "method.trainable=%s: no down projection is updated, so no critical neurons are needed",
                    pl_module.method.trainable,
                )
            return
        start = time.perf_counter()
        if self.neurons is not None and trainer.ckpt_path:
            # single-device strategies restore the checkpoint before this hook: the weights are no longer
            # the target's, so the masks come from the checkpoint rather than a new attribution
            log.info("reusing the critical neurons saved in the checkpoint %s", trainer.ckpt_path)
            neurons, scores = self.neurons, None
        else:
            if trainer.ckpt_path and not trainer.strategy.restore_checkpoint_after_setup:
                raise SimuError(
                    f"{trainer.ckpt_path} holds no critical neurons (written by an older version?) and "
                    "the weights are already restored: attributing now would score half-unlearned "
                    "weights; start the run in a new output directory"
                )
            scores, neurons, self.ranking = self.select(trainer, pl_module)
        self.neurons = neurons
        if self.planted is not None:
            self.localisation = localisation(
                neurons, self.ranking or {k: m.float() for k, m in neurons.items()}, self.planted
            )
            log.info(
                "localisation against the %d planted neurons: %s",
                sum(int(m.sum()) for m in self.planted.values()),
                ", ".join(f"{k} {v:.3f}" for k, v in self.localisation["overall"].items() if v is not None),
            )
        pl_module.set_critical_neurons(neurons)
        self.kept = {name: int(mask.sum()) for name, mask in neurons.items()}
        if trainer.is_global_zero and self.ranking is not None:
            self._save(self.ranking if scores is None else scores, neurons)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {f"attribution/kept/layer_{i}": kept for i, kept in enumerate(self.kept.values())}
                | {"attribution/kept_fraction": self.kept_fraction(neurons)},
                step=0,
            )
        self.seconds = time.perf_counter() - start

    def select(self, trainer: L.Trainer, pl_module) -> tuple[dict | None, dict[str, torch.Tensor], dict]:
        """The forget set's scores, the selected neurons and the scores they rank by (see selection.py)."""
        if self.settings.selection == "planted":
            log.info("attribution.selection=planted: the planted neurons themselves (the oracle mask)")
            return None, self.planted, {name: mask.float() for name, mask in self.planted.items()}
        data = trainer.datamodule
        scores = self._cached_scores(trainer, pl_module, data.forget, "forget")
        neurons, self.chosen_t = select_critical(scores, self.settings.t, self.settings.auto)
        if self.settings.t == "auto":
            log.info(
                "attribution.t=auto (%s): t per layer %s",
                "mass %g" % self.settings.auto["mass"] if self.settings.auto["rule"] == "mass" else "knee",
                " ".join("-" if t is None else f"{t:.3f}" for t in self.chosen_t.values()),
            )
        if self.settings.exclude_retain:
            retain_scores = self._cached_scores(trainer, pl_module, data.retain, "retain")
            retain, _ = select_critical(retain_scores, self.settings.t, self.settings.auto)
            neurons, self.dropped = exclude_shared(neurons, retain)
            log.info(
                "attribution.exclude_retain: dropped %d of %d critical neurons that are critical for the "
                "retain set too (per layer: %s)",
                sum(self.dropped.values()),
                sum(self.dropped.values()) + sum(int(m.sum()) for m in neurons.values()),
                " ".join(str(n) for n in self.dropped.values()),
            )
        ranking = scores
        if self.settings.selection == "random":
            neurons, ranking = random_like(neurons, self.seed)
            log.info(
                "attribution.selection=random: the attribution's per-layer counts at random positions (seed %d)",
                self.seed,
            )
        return scores, neurons, ranking

    @staticmethod
    def kept_fraction(neurons: dict[str, torch.Tensor]) -> float:
        return sum(int(m.sum()) for m in neurons.values()) / sum(m.numel() for m in neurons.values())

    def compute(
        self, trainer: L.Trainer, pl_module, examples: list[dict], split: str = "forget"
    ) -> dict[str, torch.Tensor]:
        """Scores over the whole split; with several processes each scores its share (padding
        weighted 0) and the shares are summed, so every process derives the same masks."""
        tokenizer = trainer.datamodule.tokenizer
        samples = prediction_samples(examples, tokenizer.eos_token_id)
        if not samples:
            raise SimuError(f"the {split} set has no answer tokens to attribute")
        block, real = share(samples, *rank_and_world())
        block = [dict(sample, weight=1.0 if i < real else 0.0) for i, sample in enumerate(block)]
        projs = down_projections(pl_module.model, pl_module.architecture)
        score = score_of(self.settings.selection)
        if score == "integrated_gradients":
            log.info(
                "attribution (%s): %d answer tokens, %s mode, %s rule, m=%d: %d passes per batch over %d layers",
                split,
                len(samples),
                self.settings.mode,
                self.settings.quadrature,
                self.settings.m,
                passes(self.settings.mode, len(projs), self.settings.m),
                len(projs),
            )
        else:
            log.info("attribution (%s): %d answer tokens, score %s (one pass per batch)", split, len(samples), score)
        scores = with_halving(
            lambda size: attribute(
                pl_module.model,
                projs,
                block,
                self.settings.m,
                tokenizer.pad_token_id,
                size,
                self.settings.quadrature,
                self.settings.mode,
                score,
            ),
            self.settings.max_batch,
            "attribution (attribution.max_batch)",
        )
        return {name: sum_across(score) for name, score in scores.items()}

    def cache_key(self, pl_module, examples: list[dict]) -> str:
        score = score_of(self.settings.selection)
        how = (self.settings.m, self.settings.quadrature, self.settings.mode) if score == "integrated_gradients" else ()
        return cache_key(
            "attribution",
            ATTRIBUTION_FORMAT,
            self.target_id,
            [(e["input_ids"], e["labels"]) for e in examples],
            score,
            *how,
            pl_module.compute_dtype or self.dtype,  # what attribution ran in: bf16 under FSDP mixed precision
            asdict(pl_module.architecture),
        )

    def _cached_scores(
        self, trainer: L.Trainer, pl_module, examples: list[dict], split: str
    ) -> dict[str, torch.Tensor]:
        compute = lambda: self.compute(trainer, pl_module, examples, split)  # noqa: E731
        if self.cache_dir is None:
            return compute()
        self.keys[split] = self.cache_key(pl_module, examples)
        path = self.cache_dir / "attribution" / self.keys[split]
        if agree((path / "scores.pt").exists()):
            log.info(
                "reusing cached attribution scores of the %s set %s (%s; computed for m=%d, %s, %s on %s)",
                split,
                path,
                score_of(self.settings.selection),
                self.settings.m,
                self.settings.quadrature,
                self.settings.mode,
                self.target_id,
            )
            return torch.load(path / "scores.pt", weights_only=True)
        scores = compute()
        if trainer.is_global_zero:  # one writer; the others hold the same scores in memory
            with atomic(path, keep_existing=True) as tmp:
                tmp.mkdir()
                torch.save(scores, tmp / "scores.pt")
        trainer.strategy.barrier("attribution cache written")
        return scores

    def state_dict(self) -> dict:
        return {"neurons": self.neurons, "ranking": self.ranking} if self.neurons is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("neurons") is not None:
            self.neurons, self.ranking = state_dict["neurons"], state_dict.get("ranking")

    def _save(self, scores: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor]) -> None:
        if self.output_dir is None:
            return
        out = self.output_dir / "attribution"
        out.mkdir(parents=True, exist_ok=True)
        files = [("scores.pt", scores), ("critical_neurons.pt", neurons)]
        files += [("planted_neurons.pt", self.planted)] if self.planted is not None else []
        for name, value in files:
            with atomic(out / name) as tmp:
                torch.save(value, tmp)
        summary = {
            "t": self.settings.t,
            "m": self.settings.m,
            "quadrature": self.settings.quadrature,
            "mode": self.settings.mode,
            "selection": self.settings.selection,
            "exclude_retain": self.settings.exclude_retain,
            "kept_fraction": self.kept_fraction(neurons),
            "layers": {
                name: {
                    "critical": self.kept[name],
                    "neurons": int(mask.numel()),
                    **({"t": self.chosen_t[name]} if name in self.chosen_t else {}),
                    **({"dropped_shared_with_retain": self.dropped[name]} if self.dropped else {}),
                }
                for name, mask in neurons.items()
            },
            **({"localisation": self.localisation} if self.localisation else {}),
        }
        with atomic(out / "critical_neurons.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
