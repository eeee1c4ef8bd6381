"""Checkpoints of the unlearning, and what a pre-empted run leaves so that the same command resumes it.

- At the end of every `checkpoint.every_n_epochs` epochs: the latest epoch's checkpoint, with
  `checkpoints/last.ckpt` linking to it (save_top_k=1 deletes the previous one only once the new one is
  complete; save_top_k=0 would write "last" only at the end of the fit, after a top-k save).
- On SIGTERM (a scheduler's pre-emption) or Ctrl-C: Lightning finishes the step in progress, then this
  callback saves a checkpoint of that step, `last.ckpt` links to it, and it records how many batches
  of the epoch were done, so the resumed run starts the epoch where it stopped (the epoch's seeded
  order skips them) and ends where the uninterrupted run would.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from simu_lightning.distributed import agree

from simu_lightning.utils.files import atomic

log = logging.getLogger(__name__)


class SaveOnInterrupt(L.Callback):
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.epoch, self.batches_done = 0, 0
        self.resume: tuple[int, int] | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.resume is not None and getattr(trainer.datamodule, "sampler", None) is not None:
            trainer.datamodule.sampler.resume_at(*self.resume)
            log.info("resuming epoch %d after its first %d batches", *self.resume)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        resumed = self.resume is not None and self.resume[0] == trainer.current_epoch
        self.epoch, self.batches_done = trainer.current_epoch, self.resume[1] if resumed else 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.batches_done += 1

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        path = self.folder / f"interrupted-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            with atomic(self.folder / "last.ckpt") as tmp:
                os.symlink(path.name, tmp)
        self.saved = path
        log.warning(
            "interrupted at step %d (epoch %d, %d batches into it): saved %s; run the same command "
            "(same hydra.run.dir) to resume",
            trainer.global_step,
            self.epoch,
            self.batches_done,
            path,
        )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("batches_done"):
            self.resume = (state_dict["epoch"], state_dict["batches_done"])


def checkpoint_callbacks(every: int | None, out: Path) -> tuple[list, str | None]:
    """The checkpoint callbacks (every `every` epochs; None or 0: none) and the checkpoint to resume from,
    when this output directory holds one."""
    if not every:
        return [], None
    folder = out / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=folder, save_top_k=1, save_last="link", every_n_epochs=every),
        SaveOnInterrupt(folder),
    ]
    last = folder / "last.ckpt"
    return callbacks, (str(last) if agree(last.exists()) else None)
