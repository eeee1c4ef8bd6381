"""A planted target: the forget set written into known MLP neurons, so that localisation has a ground truth.

Nobody knows where a real model stores a fact; here the answer is known by construction.
- Phase 1, the clean model, is the benchmark's retain model: the base fine-tuned on everything but
  the forget authors (retain authors and world facts), every parameter. It never saw the forget set, so
  it is the exact "retrained without the forget set" model, and the planted run's retain model.
- Phase 2, planting, continues from it on the forget rows with retain replay (rows of the clean model's
  own training splits), updating only a seeded set P of MLP neurons per layer: each planted neuron's
  down-projection column (row for GPT-2's Conv1D), and with `parameters: neuron` also its rows of the
  up (and gate) projections and their bias entries. Every other parameter is frozen, and the masked
  entries of the trained weights are held by MaskedAdamW's three masking points, so outside P the target
  is bit-identical to the clean model.
P is written as `planted_neurons.pt` beside the target, in the format of `critical_neurons.pt`: one
boolean mask per down projection (all False in a layer without planted neurons).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from simu_lightning.utils.cache import cache_key, source_identity
from simu_lightning.utils.files import atomic
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import Architecture, architecture_of, down_projections, up_projections
from simu_lightning.models.finetune import FineTune, answer_loader
from simu_lightning.models.loading import load_pretrained
from simu_lightning.models.settings import ModelSettings
from simu_lightning.utils.seeding import seeded
from simu_lightning.utils.phase_progress import fit_steps

log = logging.getLogger(__name__)

PLANTING_FORMAT = 2  # bump when planting changes: cached planted targets from older code are not reused
# P's draws come from a stream of their own: seeded like the random-neuron control (seed, then layer by
# layer), they would coincide with it (at seed 0 the control's first layer was a superset of P)
PLANTING_STREAM = 7_919_000
PARAMETERS = ("down_proj", "neuron")
PLANTED_FILE = "planted_neurons.pt"


@dataclass(frozen=True)
class Planting:
    """`benchmark.planted`: where and how the forget set is planted (fraction None: no planting)."""

    fraction: float | None = None  # share of each planted layer's neurons in P
    layers: tuple[int, ...] | None = None  # decoder layers that get planted neurons (None: every one)
    seed: int = 0  # draws P
    parameters: str = "neuron"  # down_proj: the neurons' down-projection columns; neuron: + their up/gate rows
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 16
    replay: float = 6.0  # retain-side rows replayed per forget row

    def __post_init__(self):
        if self.fraction is not None and not (isinstance(self.fraction, (int, float)) and 0 < self.fraction < 1):
            raise SimuError(f"benchmark.planted.fraction must be null or in (0, 1), got {self.fraction!r}")
        if self.parameters not in PARAMETERS:
            raise SimuError(
                f"benchmark.planted.parameters must be one of {', '.join(PARAMETERS)}, got {self.parameters!r}"
            )
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SimuError(f"benchmark.planted.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.replay < 0:
            raise SimuError(
                f"benchmark.planted: lr must be > 0 and replay >= 0, got lr={self.lr}, replay={self.replay}"
            )
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def active(self) -> bool:
        return self.fraction is not None


def draw_planted(model: nn.Module, arch: Architecture, planting: Planting) -> dict[str, torch.Tensor]:
    """P: per down projection, round(fraction * neurons) neurons (at least one) at positions drawn from
    (seed, layer), in the planted layers; no neuron elsewhere."""
    projections = down_projections(model, arch)
    layers = range(len(projections)) if planting.layers is None else planting.layers
    if unknown := [i for i in layers if not 0 <= i < len(projections)]:
        raise SimuError(f"benchmark.planted.layers: no decoder layer {unknown} (the model has {len(projections)})")
    planted = {}
    for i, (name, module) in enumerate(projections.items()):
        size = module.weight.shape[arch.neuron_dim]
        mask = torch.zeros(size, dtype=torch.bool)
        if i in layers:
            generator = torch.Generator().manual_seed(PLANTING_STREAM + planting.seed * 1000 + i)
            mask[torch.randperm(size, generator=generator)[: max(1, round(planting.fraction * size))]] = True
        planted[name] = mask
    return planted


def _along(mask: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """The neuron mask shaped to broadcast over a tensor of `ndim` dimensions along `dim`."""
    shape = [1] * ndim
    shape[dim] = -1
    return mask.view(shape)


def neuron_parameters(
    model: nn.Module, arch: Architecture, planted: dict[str, torch.Tensor], parameters: str
) -> dict[torch.Tensor, torch.Tensor]:
    """{parameter: mask} of the entries that belong to the planted neurons: the down projections'
    columns, and with `parameters="neuron"` the up projections' rows (a Conv1D's columns) and bias entries."""
    masks = {}
    ups = up_projections(model, arch)
    for name, module in down_projections(model, arch).items():
        masks[module.weight] = _along(planted[name], arch.neuron_dim, 2)
        if parameters == "neuron":
            if not arch.up_proj:
                raise SimuError(
                    "benchmark.planted.parameters=neuron: this architecture names no up projections "
                    "(model.architecture.up_proj); use parameters=down_proj"
                )
            for up in ups[name]:
                masks[up.weight] = _along(planted[name], 1 if isinstance(up, Conv1D) else 0, 2)
                if getattr(up, "bias", None) is not None:
                    masks[up.bias] = planted[name]
    return masks


def reset_planted(target: nn.Module, clean: nn.Module, arch: Architecture, planted, parameters: str) -> nn.Module:
    """ "Reset P": the clean model's values written back into the planted neurons of `target` (in place)."""
    clean_masks = neuron_parameters(clean, arch, planted, parameters)
    with torch.no_grad():
        for (param, mask), clean_param in zip(
            neuron_parameters(target, arch, planted, parameters).items(), clean_masks
        ):
            param.copy_(torch.where(mask, clean_param, param))
    return target


def replay_rows(benchmark, count: int, seed: int) -> list[dict]:
    """`count` rows of the clean model's training splits (retain side), drawn with `seed`."""
    rows = [row for split in benchmark.retain_model_splits for row in benchmark[split]]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in (order * (count // len(rows) + 1))[:count]] if rows else []


def planted_key(clean: str, benchmark, planting: Planting, model: ModelSettings, fmt, trainer_settings) -> str:
    return cache_key(
        "planted",
        PLANTING_FORMAT,
        clean,
        benchmark.fingerprint((benchmark.forget, *benchmark.retain_model_splits)),
        asdict(planting),
        asdict(fmt),
        model.max_length,
        model.dtype,
        trainer_settings or {},
    )


def planted_target(
    clean: str,
    benchmark,
    planting: Planting,
    model_settings: ModelSettings,
    fmt,
    cache_dir: Path,
    make_trainer: Callable,
    trainer_settings: dict | None = None,
) -> str:
    """The clean model with the forget set planted into P (cached, with P beside it as PLANTED_FILE)."""
    key = planted_key(source_identity(clean, cache_dir), benchmark, planting, model_settings, fmt, trainer_settings)
    path = cache_dir / "models" / f"planted-{key}"
    if (path / PLANTED_FILE).exists():
        log.info("reusing the cached planted target %s (fraction %g, seed %d)", path, planting.fraction, planting.seed)
        return str(path)
    model, tokenizer = load_pretrained(clean, model_settings.dtype)
    arch = architecture_of(model, model_settings.architecture)
    planted = draw_planted(model, arch, planting)
    forget = benchmark[benchmark.forget].to_list()
    rows = forget + replay_rows(benchmark, round(planting.replay * len(forget)), planting.seed)
    log.info(
        "planting %d forget rows (+%d replayed) into %d neurons of %s (%s), %d epochs, into %s",
        len(forget),
        len(rows) - len(forget),
        sum(int(m.sum()) for m in planted.values()),
        clean,
        planting.parameters,
        planting.epochs,
        path,
    )
    start = time.perf_counter()
    with seeded(planting.seed):
        loader = answer_loader(tokenizer, fmt, rows, model_settings.max_length, planting.batch_size, planting.seed)
        module = FineTune(
            model.train(),
            planting.lr,
            warmup_ratio=0.0,
            masks=neuron_parameters(model, arch, planted, planting.parameters),
        )
        trainer = make_trainer(max_epochs=planting.epochs, callbacks=[fit_steps("planting")])
        trainer.fit(module, loader)
    with atomic(path, keep_existing=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(planted, tmp / PLANTED_FILE)
        provenance = {
            "clean_model": clean,
            "planting": asdict(planting),
            "neurons": {name: int(mask.sum()) for name, mask in planted.items()},
            "rows": len(rows),
            "seconds": round(time.perf_counter() - start, 1),
            "final_loss": float(trainer.callback_metrics.get("finetune/loss_epoch", float("nan"))),
        }
        (tmp / "simu_target.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return str(path)


KNOWS, KEEPS = 0.9, 0.05  # a planted target knows the forget set (EM) and keeps the rest within 0.05 of clean


def planted_check(target: dict, clean: dict, forget: str = "forget") -> dict:
    """Whether the planted target really knows the forget set (exact match >= 0.9) and kept every other
    split within 0.05 of the clean model's exact match; from the two models' split summaries."""
    drops = {
        split: clean[split]["exact_match"] - by_metric["exact_match"]
        for split, by_metric in target.items()
        if split != forget and split in clean
    }
    holds = target[forget]["exact_match"] >= KNOWS and all(drop <= KEEPS for drop in drops.values())
    return {"forget_exact_match": target[forget]["exact_match"], "exact_match_drop": drops, "holds": holds}


def load_planted(target: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(target) / PLANTED_FILE, weights_only=True)
