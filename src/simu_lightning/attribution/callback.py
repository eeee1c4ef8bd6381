"""The pre-fit callback that runs SIMU stage 1 when the method needs critical-neuron masks (and, with
method.trainable=attention_heads_and_down_proj, critical-head masks: the same rules over attention heads).

Scores depend only on the target, the attributed examples (the forget set; with exclude_retain also
the retain set), the score (the selection rule's, rules/), m, the quadrature rule, the mode, the dtype they were
computed in (the run's compute dtype: the weights', or bf16 under bf16-mixed's autocast or when FSDP2
all-gathers the weights in bf16), the
architecture's module names and the attribution code (ATTRIBUTION_FORMAT), so they are cached under
exactly that key; the threshold t, the random draw and the retain exclusion are applied after the
cache, which makes a sweep over t (or over seeds of `selection=random`) cost one attribution. A control
that keeps the attribution's per-layer counts (`activation`, `gradient` under match_counts) reads the
integrated-gradient scores from the same cache (or computes and caches them) beside its own. Head scores
are cached beside them under the same key with "heads" added. The masks travel in every checkpoint: a
resumed run reuses them and never attributes on half-unlearned weights.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch

from simu_lightning.attribution.integrated_gradients import prediction_samples
from simu_lightning.attribution.localisation import localisation
from simu_lightning.attribution.neurons import select_critical
from simu_lightning.attribution.rules import ATTRIBUTION, selects_no_heads
from simu_lightning.attribution.scores import attribute, attribute_heads
from simu_lightning.attribution.selection import counts_of, exclude_shared, top_counts
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.utils.cache import cache_key
from simu_lightning.distributed import agree, share, sum_across
from simu_lightning.utils.processes import rank_and_world
from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.files import atomic
from simu_lightning.utils.memory import with_halving
from simu_lightning.models.architecture import down_projections, output_projections
from simu_lightning.models.heads import head_shape

log = logging.getLogger(__name__)

# Bump when the attribution's arithmetic changes: cached scores from older code are then not reused.
ATTRIBUTION_FORMAT = 2


@dataclass(frozen=True)
class Selection:
    """What the attribution stage selected, as the stages after the fit read it (results.json, the
    dashboards, the manifest): NeuronAttribution.selection() at the fit's end."""

    settings: AttributionSettings
    neurons: dict | None  # layer -> its critical-neuron mask (None: the method selects none)
    ranking: dict | None  # what the selection ranked the neurons by
    kept: dict  # critical neurons per layer
    chosen_t: dict  # each layer's t (t=auto)
    dropped: dict  # exclude_retain: neurons dropped per layer
    heads: dict | None  # o_proj's name -> one bool per head
    heads_kept: dict  # per layer, the indices of its critical heads
    head_t: dict
    localisation: dict | None  # a planted target's: the selection against P
    keys: dict  # the scores' cache key per attributed split
    seconds: float


class NeuronAttribution(L.Callback):
    def __init__(
        self,
        settings: AttributionSettings,
        output_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        target_id: str = "",
        seed: int = 0,
        planted: dict[str, torch.Tensor] | None = None,
    ):
        self.settings, self.seed = settings, seed
        self.keys: dict[str, str] = {}  # cache key of the scores of each attributed split
        self.dropped: dict[str, int] = {}  # exclude_retain: neurons dropped per layer as shared with the retain set
        self.output_dir = Path(output_dir) if output_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.target_id = target_id
        self.seconds = 0.0
        self.kept: dict[str, int] = {}
        self.chosen_t: dict[str, float | None] = {}  # each layer's t (t=auto chooses one per layer)
        self.neurons: dict[str, torch.Tensor] | None = None  # restored from a checkpoint, or computed
        self.ranking: dict[str, torch.Tensor] | None = None  # what the selection ranks neurons by
        self.planted = planted  # a planted target's P: the selection is scored against it (localisation.py)
        self.localisation: dict | None = None
        # method.trainable=attention_heads_and_down_proj: the critical heads, chosen by the same rules
        self.heads: dict[str, torch.Tensor] | None = None  # o_proj's name -> one bool per head
        self.head_ranking: dict[str, torch.Tensor] | None = None
        self.head_t: dict[str, float | None] = {}
        self.heads_dropped: dict[str, int] = {}
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
        if pl_module.method.critical_head_mask:
            self.attend_heads(trainer, pl_module)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {f"attribution/kept/layer_{i}": kept for i, kept in enumerate(self.kept.values())}
                | {"attribution/kept_fraction": self.kept_fraction(neurons)},
                step=0,
            )
        self.seconds = time.perf_counter() - start

    def select(self, trainer: L.Trainer, pl_module) -> tuple[dict | None, dict[str, torch.Tensor], dict]:
        """The forget set's scores, the selected neurons and the scores they rank by (the rule's, rules/)."""
        rule = self.settings.rule_of("neurons")
        if rule.scores() is None:  # planted: no scores, a mask of its own
            log.info("attribution.selection=%s: the planted neurons themselves (the oracle mask)", rule.name)
            return None, *rule.place(None, None, self.draw_seed, self.planted)
        scores, neurons, self.chosen_t, self.dropped = self._thresholded(trainer, pl_module, "neurons")
        return scores, *rule.place(neurons, scores, self.draw_seed)

    def select_heads(self, trainer: L.Trainer, pl_module) -> tuple[dict, dict[str, torch.Tensor], dict]:
        """The forget set's head scores, the critical heads and what they rank by: the neurons' rules (t or
        t=auto per layer, exclude_retain, random in the same per-layer counts) over each layer's heads."""
        rule = self.settings.rule_of("heads")
        if not rule.selects_heads:  # checks.py refuses it before any work
            raise SimuError(selects_no_heads(rule.name))
        scores, heads, self.head_t, self.heads_dropped = self._thresholded(trainer, pl_module, "heads")
        return scores, *rule.place(heads, scores, self.draw_seed)

    @property
    def draw_seed(self) -> int:
        """The seed of `selection=random`'s draw: the run's (a continual request derives its own)."""
        return self.seed

    def attend_heads(self, trainer: L.Trainer, pl_module) -> None:
        """Select the critical heads (or take them from the checkpoint) and mask q/k/v/o to them."""
        if self.heads is not None and trainer.ckpt_path:
            log.info("reusing the critical heads saved in the checkpoint %s", trainer.ckpt_path)
            scores = None
        elif trainer.ckpt_path and not trainer.strategy.restore_checkpoint_after_setup:
            raise SimuError(
                f"{trainer.ckpt_path} holds no critical heads (written for another method.trainable?) and the "
                "weights are already restored: start the run in a new output directory"
            )
        else:
            scores, self.heads, self.head_ranking = self.select_heads(trainer, pl_module)
        pl_module.set_critical_heads(self.heads)
        log.info(
            "critical heads per layer: %s", " | ".join(" ".join(map(str, h)) or "-" for h in self.heads_kept.values())
        )
        if trainer.is_global_zero and self.head_ranking is not None:
            self._save_heads(self.head_ranking if scores is None else scores)

    def selection(self) -> Selection:
        return Selection(
            self.settings,
            self.neurons,
            self.ranking,
            dict(self.kept),
            dict(self.chosen_t),
            dict(self.dropped),
            self.heads,
            self.heads_kept,
            dict(self.head_t),
            self.localisation,
            dict(self.keys),
            self.seconds,
        )

    @property
    def heads_kept(self) -> dict[str, list[int]]:
        """Per layer (o_proj's name), the indices of its critical heads."""
        return {name: mask.nonzero().flatten().tolist() for name, mask in (self.heads or {}).items()}

    def _thresholded(self, trainer: L.Trainer, pl_module, unit: str) -> tuple[dict, dict, dict, dict[str, int]]:
        """The forget set's scores of `unit` (neurons or heads), those at t (or t=auto) of each layer's
        largest, each layer's t, and, with exclude_retain, how many were dropped per layer. A selection
        that keeps the attribution's counts (settings.counted) keeps, per layer, as many of its own
        highest-scoring units as the integrated-gradient scores hold at t; the t reported is theirs."""
        data = trainer.datamodule
        scores = self._cached_scores(trainer, pl_module, data.forget, "forget", unit)
        t = self.settings.t_of(unit)
        counted = self.settings.counted(unit)
        if counted:
            counts_from = self._cached_scores(trainer, pl_module, data.forget, "forget", unit, ATTRIBUTION)
            attributed, chosen_t = select_critical(counts_from, t, self.settings.auto)
            selected, _ = top_counts(scores, counts_of(attributed))
            log.info(
                "attribution.selection=%s, match_counts: %s per layer as integrated gradients keeps (%s), "
                "the highest by %s",
                self.settings.selection_of(unit),
                unit,
                " ".join(str(n) for n in counts_of(attributed).values()),
                self.settings.selection_of(unit),
            )
        else:
            selected, chosen_t = select_critical(scores, t, self.settings.auto)
        if t == "auto":
            log.info(
                "attribution.%s=auto (%s), %s: t per layer %s",
                "t" if unit == "neurons" or self.settings.head_t is None else "head_t",
                "mass %g" % self.settings.auto["mass"] if self.settings.auto["rule"] == "mass" else "knee",
                unit,
                " ".join("-" if t is None else f"{t:.3f}" for t in chosen_t.values()),
            )
        dropped = {}
        if self.settings.exclude_retain:
            retain_scores = self._cached_scores(trainer, pl_module, data.retain, "retain", unit)
            if counted:  # each side in the attribution's counts; the forget side in its count after exclusion
                retain_attribution = self._cached_scores(trainer, pl_module, data.retain, "retain", unit, ATTRIBUTION)
                attributed_retain, _ = select_critical(retain_attribution, t, self.settings.auto)
                left, _ = exclude_shared(attributed, attributed_retain)
                retain, _ = top_counts(retain_scores, counts_of(attributed_retain))
                selected, dropped = top_counts(scores, counts_of(left), excluded=retain)
            else:
                retain, _ = select_critical(retain_scores, t, self.settings.auto)
                selected, dropped = exclude_shared(selected, retain)
            log.info(
                "attribution.exclude_retain: dropped %d of %d critical %s that are critical for the "
                "retain set too (per layer: %s)",
                sum(dropped.values()),
                sum(dropped.values()) + sum(int(m.sum()) for m in selected.values()),
                unit,
                " ".join(str(n) for n in dropped.values()),
            )
        return scores, selected, chosen_t, dropped

    @staticmethod
    def kept_fraction(neurons: dict[str, torch.Tensor]) -> float:
        return sum(int(m.sum()) for m in neurons.values()) / sum(m.numel() for m in neurons.values())

    def compute(
        self,
        trainer: L.Trainer,
        pl_module,
        examples: list[dict],
        split: str = "forget",
        unit: str = "neurons",
        score: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores of `unit` (every down projection's neurons, or every layer's heads) over the whole split,
        by `score` (None: the selection's); with several processes each scores its share (padding weighted
        0) and the shares are summed, so every process derives the same masks."""
        tokenizer = trainer.datamodule.tokenizer
        samples = prediction_samples(examples, tokenizer.eos_token_id)
        if not samples:
            raise SimuError(f"the {split} set has no answer tokens to attribute")
        block, real = share(samples, *rank_and_world())
        block = [dict(sample, weight=1.0 if i < real else 0.0) for i, sample in enumerate(block)]
        model, arch = pl_module.model, pl_module.architecture
        if unit == "heads":  # the output projections' input, summed per head
            projs, run = output_projections(model, arch), partial(attribute_heads, heads=head_shape(model, arch).count)
        else:
            projs, run = down_projections(model, arch), attribute
        score = score or self.settings.rule_of(unit).scores()
        scorer = self.settings.rule_named(score)
        log.info(
            "attribution (%s, %s): %d answer tokens, score %s%s: %d passes per batch over %d layers",
            split,
            unit,
            len(samples),
            score,
            " (%s mode, %s rule, m=%d)" % scorer.key()[::-1] if scorer.key() else "",
            scorer.passes(len(projs)),
            len(projs),
        )
        # in the run's compute precision (bf16-mixed: under its autocast), which the cache key names
        with trainer.precision_plugin.forward_context():
            scores = self._run_batched(run, model, projs, block, tokenizer, score)
        return {name: sum_across(score) for name, score in scores.items()}

    def _run_batched(self, run, model, projs, block, tokenizer, score) -> dict[str, torch.Tensor]:
        return with_halving(
            lambda size: run(
                model,
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

    def cache_key(self, pl_module, examples: list[dict], unit: str = "neurons", score: str | None = None) -> str:
        score = score or self.settings.rule_of(unit).scores()
        how = self.settings.rule_named(score).key()  # integrated gradients': m, quadrature, mode
        # where q, k, v hold the heads changes no score (and the neurons' keys stay those of earlier code)
        architecture = {k: v for k, v in asdict(pl_module.architecture).items() if k != "qkv"}
        return cache_key(
            "attribution",
            ATTRIBUTION_FORMAT,
            self.target_id,
            [(e["input_ids"], e["labels"]) for e in examples],
            score,
            *how,
            pl_module.compute_dtype,  # what attribution ran in: bf16 under bf16-mixed, bf16-true, FSDP's bf16
            architecture,
            *(("heads",) if unit == "heads" else ()),
        )

    def _cached_scores(
        self,
        trainer: L.Trainer,
        pl_module,
        examples: list[dict],
        split: str,
        unit: str = "neurons",
        score: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The split's scores of `unit` by `score` (None: the selection's own), from the cache or computed."""
        by = {"score": score} if score else {}  # (compute is called as the selection's own when no score is named)
        compute = lambda: self.compute(trainer, pl_module, examples, split, unit, **by)  # noqa: E731
        if self.cache_dir is None:
            return compute()
        name = (split if unit == "neurons" else f"{split}_{unit}") + (f"_{score}" if score else "")
        self.keys[name] = self.cache_key(pl_module, examples, unit, score)
        path = self.cache_dir / "attribution" / self.keys[name]
        if agree((path / "scores.pt").exists()):
            log.info(
                "reusing cached attribution scores of the %s set's %s %s (%s; computed for m=%d, %s, %s on %s)",
                split,
                unit,
                path,
                score or self.settings.rule_of(unit).scores(),
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
        if self.neurons is None:
            return {}
        heads = {"heads": self.heads, "head_ranking": self.head_ranking} if self.heads is not None else {}
        return {"neurons": self.neurons, "ranking": self.ranking, **heads}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("neurons") is not None:
            self.neurons, self.ranking = state_dict["neurons"], state_dict.get("ranking")
        if state_dict.get("heads") is not None:
            self.heads, self.head_ranking = state_dict["heads"], state_dict.get("head_ranking")

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
            "match_counts": self.settings.match_counts,
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

    def _save_heads(self, scores: dict[str, torch.Tensor]) -> None:
        if self.output_dir is None:
            return
        out = self.output_dir / "attribution"
        out.mkdir(parents=True, exist_ok=True)
        for name, value in (("head_scores.pt", scores), ("critical_heads.pt", self.heads)):
            with atomic(out / name) as tmp:
                torch.save(value, tmp)
        summary = {
            "t": self.settings.t_of("heads"),
            "selection": self.settings.selection_of("heads"),
            "match_counts": self.settings.match_counts,
            "exclude_retain": self.settings.exclude_retain,
            "layers": {
                name: {
                    "critical": kept,
                    "heads": int(self.heads[name].numel()),
                    **({"t": self.head_t[name]} if name in self.head_t else {}),
                    **({"dropped_shared_with_retain": self.heads_dropped[name]} if self.heads_dropped else {}),
                }
                for name, kept in self.heads_kept.items()
            },
        }
        with atomic(out / "critical_heads.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
