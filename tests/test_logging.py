"""Console lines in multi-process runs: each stage announced once (rank 0), warnings from everyone."""

import logging

from lightning.pytorch.utilities import rank_zero_only

from simu_lightning.utils.logging import RankZero


def test_info_lines_come_from_rank_zero_only_and_warnings_from_every_rank(monkeypatch):
    record = {
        level: logging.LogRecord("x", level, __file__, 1, "message", None, None)
        for level in (logging.INFO, logging.WARNING)
    }
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not RankZero().filter(record[logging.INFO]) and RankZero().filter(record[logging.WARNING])
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert RankZero().filter(record[logging.INFO])


def test_a_progress_line_says_the_step_the_losses_the_win_rate_and_the_watched_metric():
    import io
    from types import SimpleNamespace

    import torch

    from simu_lightning.pipeline.progress import ProgressLines, duration, wanted
    from simu_lightning.unlearning.stopping import StoppingRule

    rule = StoppingRule.parse("forget.exact_match<=0.1")
    evaluations = SimpleNamespace(points=[{"step": 10, "summary": {"forget": {"exact_match": 0.25}}, "scores": {}}])
    trainer = SimpleNamespace(
        estimated_stepping_batches=180,
        current_epoch=1,
        callback_metrics={
            "unlearn/loss": torch.tensor(-1.5),
            "unlearn/forget": torch.tensor(2.0),
            "optim/win_rate": 0.3,
        },
    )
    progress = ProgressLines(10, evaluations, rule)
    progress._start = (0.0, 0)
    line = progress.line(trainer, 12)
    assert line.startswith("progress: step 12/180 (epoch 1); loss -1.5, forget 2; win rate 0.300; ")
    assert "forget.exact_match 0.250 at step 10 (stops at <=0.1)" in line and "s/step" in line
    assert duration(3725) == "1 h 02 min" and duration(75) == "1 min 15 s" and duration(9) == "9 s"
    tty = io.StringIO()
    tty.isatty = lambda: True
    assert wanted(10, io.StringIO()) and not wanted(10, tty) and not wanted(0, io.StringIO())
