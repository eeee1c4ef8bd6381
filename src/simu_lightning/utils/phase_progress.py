"""Progress of the phases that take more than a few seconds (target fine-tuning, the attribution, each
evaluation, each attack): a bar with its rows or steps and an ETA on a terminal (rich), and a line every
`every_seconds` in a log file (stdout not a terminal: a cluster's log, where a bar shows nothing).

A phase is opened where its total is known (`with phase("evaluation (after): likelihoods", 960, "rows")`)
and advanced from wherever the work is done (`advance(64)`), however deep: the loops that do the work
need no handle passed down. Outside a phase, `advance` does nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# seconds between two log lines of one phase when stdout is not a terminal (progress.every_seconds)
EVERY_SECONDS = [30.0]


def configure(every_seconds: float) -> None:
    """The interval of the log lines (from the run's settings, once)."""
    EVERY_SECONDS[0] = float(every_seconds)


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def eta(done: float, total: float, seconds: float) -> str:
    """`12 s left`, from the pace so far (`?` before anything is done)."""
    if done <= 0 or total <= 0:
        return "? left"
    return f"{duration(seconds * max(0.0, total - done) / done)} left"


@dataclass
class Phase:
    name: str
    total: int
    unit: str
    done: int = 0
    start: float = field(default_factory=time.perf_counter)
    last_line: float = field(default_factory=time.perf_counter)
    task: object = None  # the rich task id, on a terminal

    def line(self, now: float) -> str:
        seconds = now - self.start
        return (
            f"{self.name}: {self.done}/{self.total} {self.unit}, {seconds:.0f} s, {eta(self.done, self.total, seconds)}"
        )


_open: list[Phase] = []
_bars = [None]  # the rich Progress shared by the phases open on a terminal


def _bar_display():
    if _bars[0] is None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        _bars[0] = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        _bars[0].start()
    return _bars[0]


@contextmanager
def phase(name: str, total: int, unit: str = "rows", bar: bool = True) -> Iterator[Phase]:
    """A phase of `total` `unit`s. `bar=False`: no bar of its own on a terminal (where one is shown already,
    as Lightning's during a fit), the log lines only."""
    current = Phase(name, int(total), unit)
    terminal = on_terminal()
    if terminal and bar and total > 0:
        current.task = _bar_display().add_task(name, total=total, unit=unit)
    _open.append(current)
    try:
        yield current
    finally:
        _open.remove(current)
        if current.task is not None:
            _bars[0].remove_task(current.task)
            if not _bars[0].tasks:
                _bars[0].stop()
                _bars[0] = None
        if not terminal and time.perf_counter() - current.start >= EVERY_SECONDS[0]:
            log.info("%s: %d %s in %.0f s", name, current.done, unit, time.perf_counter() - current.start)


def advance(count: int = 1) -> None:
    """`count` more units of the innermost open phase (nothing outside a phase)."""
    if not _open:
        return
    current = _open[-1]
    current.done += count
    if current.task is not None:
        _bars[0].update(current.task, completed=current.done)
    now = time.perf_counter()
    if not on_terminal() and now - current.last_line >= EVERY_SECONDS[0]:
        current.last_line = now
        log.info("progress: %s", current.line(now))


def fit_steps(name: str):
    """A Lightning callback that makes a fit (target fine-tuning, the relearning attack) a phase of its
    optimiser steps: log lines in a log file; on a terminal, Lightning's own bar is the one shown."""
    import lightning as L

    class FitSteps(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self._phase = phase(name, trainer.estimated_stepping_batches, "steps", bar=False)
            self._phase.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            advance()

        def on_train_end(self, trainer, pl_module) -> None:
            self._phase.__exit__(None, None, None)

    return FitSteps()
