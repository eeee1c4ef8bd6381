"""Seeded work that leaves the global random generators as it found them."""

from __future__ import annotations

import os
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.utilities.seed import isolate_rng


@contextmanager
def seeded(seed: int):
    """Every generator seeded with `seed` inside (torch, CUDA, numpy, Python, Lightning's
    PL_GLOBAL_SEED), and handed back as it was found on leaving. Target fine-tuning and the relearning
    attack run before the unlearning, which must draw (dropout, shuffling) what it would draw whether
    or not a cached target was reused or an attack stage ran."""
    previous = os.environ.get("PL_GLOBAL_SEED")
    with isolate_rng():
        L.seed_everything(seed, verbose=False)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("PL_GLOBAL_SEED", None)
            else:
                os.environ["PL_GLOBAL_SEED"] = previous
