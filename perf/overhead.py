"""Framework overhead: the Lightning unlearning loop against the plain loop of loop.py, on the same model,
batches and optimiser (SO-GradDiff: Sophia with its Hessian estimate every step), in tokens per second."""

from __future__ import annotations

import copy
import statistics
import time

import lightning as L
import torch

from perf.common import device, olmo, parameters, sync
from perf.loop import METHODS, plain_step, prepare, synthetic_batches, to, tokens
from simu_lightning.models.architecture import architecture_of
from simu_lightning.unlearning.losses import GradDiff
from simu_lightning.unlearning.module import UnlearningModule


class StepClock(L.Callback):
    """The time from one batch's start to the next's: everything the loop does per step."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync()
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        sync()
        self.starts.append(time.perf_counter())


def lightning_seconds(model, batches, warmup: int) -> list[float]:
    clock = StepClock()
    module = UnlearningModule(model, METHODS["so"], GradDiff(), architecture_of(model))
    trainer = L.Trainer(
        max_steps=len(batches),
        accelerator=device().type,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(clock.starts[warmup:], clock.starts[warmup + 1 :])]


def plain_seconds(model, batches, warmup: int) -> list[float]:
    optimizer = prepare(model.train(), "so")
    times = []
    for step, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        plain_step(model, optimizer, to(batch, device()), step=step)
        sync()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def run(size: str = "medium", steps: int = 12, warmup: int = 2, rows: int = 8, length: int = 64) -> dict:
    model = olmo(size)
    batches = synthetic_batches(model.config.vocab_size, steps, rows, length)
    plain = statistics.median(plain_seconds(copy.deepcopy(model), batches, warmup))
    framework = statistics.median(lightning_seconds(copy.deepcopy(model), batches, warmup))
    per_step = tokens(batches[0])
    return {
        "model": f"{size} ({parameters(model) / 1e6:.1f}M parameters)",
        "tokens_per_step": per_step,
        "plain_tokens_per_s": round(per_step / plain, 1),
        "lightning_tokens_per_s": round(per_step / framework, 1),
        "ratio_lightning_to_plain": round(plain / framework, 3),
    }
