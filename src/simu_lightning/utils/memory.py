"""Running out of memory in generation or attribution: halve the batch and try again, with a warning,
rather than lose a run to a batch size that fitted another machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from simu_lightning.utils.processes import is_distributed

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def with_halving(run: Callable[[int], T], batch_size: int, what: str) -> T:
    """`run(batch_size)`, retried at half the batch size while it runs out of memory (down to 1). In a
    multi-process run the processes would no longer agree on their collective calls, so the error is
    raised there instead, with the setting to lower."""
    while True:
        try:
            return run(batch_size)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or batch_size <= 1 or is_distributed():
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory in %s: retrying with batch size %d", what, batch_size)
