"""The console: one line per event, info lines from rank 0 only."""

from __future__ import annotations

import logging

import datasets
import transformers
from lightning.pytorch.utilities import rank_zero_only


class RankZero(logging.Filter):
    """Info lines from rank 0 only (warnings and errors from every process): in a multi-process run
    each stage is announced once. Lightning keeps `rank_zero_only.rank` set from the environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank_zero_only.rank == 0


def quiet_libraries() -> None:
    """One line per event on the console: Lightning prints its own INFO lines, so they need not also
    travel through Hydra's root handler; per-shard progress bars and rouge-score's notices add nothing."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RankZero) for f in handler.filters):
            handler.addFilter(RankZero())
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("absl").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()  # the probes' rewording of a split is instant
