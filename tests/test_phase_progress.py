"""Progress of the long phases: in a log file, lines with the rows or steps done, of how many, and an ETA
from the pace so far; an evaluation's phases count every prompt and every answer it scores."""

import logging
import re

import pytest

from simu_lightning.evaluation import qa
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.utils import phase_progress
from simu_lightning.utils.phase_progress import advance, eta, phase


@pytest.fixture()
def every_line():
    phase_progress.configure(0)  # a line at every advance
    yield
    phase_progress.configure(30)


def test_the_eta_extrapolates_the_pace_so_far():
    assert eta(1, 4, 10.0) == "30 s left"  # 10 s a unit, 3 units to go
    assert eta(30, 40, 90.0) == "30 s left"
    assert eta(10, 130, 10.0) == "2 min 00 s left"
    assert eta(0, 4, 5.0) == "? left"


def test_lines_count_the_innermost_phase_and_nothing_outside_one(every_line, caplog):
    with caplog.at_level(logging.INFO, logger="simu_lightning.utils.phase_progress"):
        advance(5)  # no phase: nothing
        with phase("outer", 3, "steps"):
            advance()
            with phase("inner", 2, "rows"):
                advance(2)
            advance()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert [re.sub(r", [^,]*$", "", re.sub(r", \d+ s,", ",", line)) for line in lines] == [
        "progress: outer: 1/3 steps",
        "progress: inner: 2/2 rows",
        "progress: outer: 2/3 steps",
    ]
    assert all(line.endswith("left") for line in lines)


def test_an_evaluation_counts_every_prompt_and_every_scored_answer(
    every_line, caplog, tiny_model, small_benchmark, prompt_format
):
    model, tokenizer = tiny_model
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=8)
    with caplog.at_level(logging.INFO, logger="simu_lightning.utils.phase_progress"):
        qa.evaluate(model, tokenizer, prompt_format, small_benchmark, "after", settings)
    done = {}
    for record in caplog.records:
        match = re.match(r"progress: evaluation \(after\): (\w+): (\d+)/(\d+)", record.getMessage())
        if match:
            done[match[1]] = (int(match[2]), int(match[3]))
    splits = [small_benchmark[name] for name in small_benchmark.eval_splits]
    prompts = sum(len(split) for split in splits)
    # each row's answer, and where there are perturbed answers, its paraphrase (if any) and each of them
    answers = sum(
        len(split)
        + ("perturbed_answer" in split.column_names)
        * (len(split) * ("paraphrased_answer" in split.column_names) + sum(map(len, split["perturbed_answer"])))
        for split in splits
    )
    assert done == {"generation": (prompts, prompts), "likelihoods": (answers, answers)}
