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
