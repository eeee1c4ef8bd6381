"""The comparison protocol's parts in the framework: which rows a limited evaluation reads (a draw stratified
by author or document, the same for every run seed, never a split's first rows: TOFU lists each author's
20 questions together, so the first 20 rows of forget01 are one of its two authors), utility on rows the
retain loss never sees, and a search's objective on them."""

import json

import pytest

from conftest import SHARED_DATA, run_here
from simu_lightning.evaluation.splits import evaluated_rows, quotas, sampled_rows
from simu_lightning.utils.errors import SimuError
from test_run import SMALL


@pytest.mark.parametrize(
    "sizes, limit, expected",
    [([20, 20], 20, [10, 10]), ([3, 20], 20, [3, 17]), ([5, 5, 5], 7, [3, 2, 2]), ([2, 2], 9, [2, 2])],
)
def test_a_limit_is_shared_as_evenly_as_the_groups_allow(sizes, limit, expected):
    assert quotas(sizes, limit) == expected


def test_the_draw_takes_every_author_evenly_with_its_own_seed():
    authors = [i // 20 for i in range(40)]  # two authors, their questions together, as TOFU lists them
    rows = sampled_rows(authors, 40, 20, seed=0)
    assert [sum(authors[r] == a for r in rows) for a in (0, 1)] == [10, 10]
    assert rows == sorted(rows) and len(set(rows)) == 20
    assert sampled_rows(authors, 40, 20, seed=0) == rows  # the same rows every time
    assert sampled_rows(authors, 40, 20, seed=1) != rows  # another sample seed, another draw
    assert sampled_rows(authors, 40, None, seed=0) == list(range(40)) == sampled_rows(authors, 40, 40, seed=3)
    ungrouped = sampled_rows(None, 40, 20, seed=0)
    assert len(set(ungrouped)) == 20 and ungrouped != list(range(20))


TOFU = SHARED_DATA / "tofu"


@pytest.mark.skipif(not (TOFU / "forget01.json").exists(), reason=f"TOFU data not found at {TOFU}")
def test_on_tofu_forget01_twenty_rows_are_ten_of_each_forget_author():
    from simu_lightning.data import tofu

    benchmark = tofu.load(path=str(TOFU), forget_split="forget01", max_authors=4)
    rows = evaluated_rows(benchmark, "forget", 20, seed=0)
    assert [sum(r // 20 == author for r in rows) for author in (0, 1)] == [10, 10]
    questions = benchmark["forget"].select(rows)["question"]
    assert len(set(questions)) == 20


def generation_rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_every_run_seed_evaluates_the_same_rows_of_every_author(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    two_authors = [*SMALL, "benchmark.num_authors=6", "benchmark.forget_fraction=0.34", "evaluation.max_examples=8"]
    read = {}
    for seed in (0, 1):
        results = run_here([*two_authors, f"seed={seed}"], tmp_path / str(seed), cache)
        forget = [r for r in generation_rows(tmp_path / str(seed)) if r["split"] == "forget" and r["stage"] == "after"]
        read[seed] = [r["row"] for r in forget]
        assert results["evaluated_rows"]["forget"] == read[seed]
    from simu_lightning.data import synthetic

    benchmark = synthetic.load(num_authors=6, forget_fraction=0.34, holdout_fraction=0.25, seed=0)
    authors = benchmark["forget"]["author"]
    assert read[0] == read[1] and len(read[0]) == 8
    assert sorted({authors[r] for r in read[0]}) == sorted(set(authors))  # both forget authors
    assert [authors[r] for r in read[0]].count(authors[0]) == 4


def test_a_limit_below_the_number_of_authors_is_refused_in_one_line(tmp_path):
    with pytest.raises(SimuError, match=r"^evaluation.max_examples=1 is smaller than split 'forget''s 2 authors"):
        run_here(
            [*SMALL, "benchmark.num_authors=6", "benchmark.forget_fraction=0.34", "evaluation.max_examples=1"],
            tmp_path,
            tmp_path / "cache",
        )
    assert not (tmp_path / "cache" / "models").exists()  # refused before any work


# -- held-out utility --------------------------------------------------------------------------------
def test_the_synthetic_held_out_retain_authors_are_learnt_by_the_target_and_never_by_the_retain_loss():
    from simu_lightning.data import synthetic

    benchmark = synthetic.load(heldout_retain_fraction=0.1)
    authors = {name: set(benchmark[name]["author"]) for name in ("full", "retain", "retain_heldout", "forget")}
    assert len(authors["retain_heldout"]) == 3 and authors["retain_heldout"] <= authors["full"]
    assert not authors["retain_heldout"] & (authors["retain"] | authors["forget"])
    assert benchmark.retain == "retain" and "retain_heldout" in benchmark.eval_splits
    assert set(benchmark.retain_model_splits) == {"retain", "retain_heldout", "world_facts"}
    # the rest of the benchmark is what it was without held-out authors: the same rows of full and forget
    plain = synthetic.load()
    assert benchmark["full"].to_list() == plain["full"].to_list()
    assert benchmark["forget"].to_list() == plain["forget"].to_list()


@pytest.mark.skipif(not (TOFU / "forget01.json").exists(), reason=f"TOFU data not found at {TOFU}")
def test_tofu_holds_out_retain_authors_the_target_knows_and_the_retain_loss_never_sees():
    from simu_lightning.data import tofu

    benchmark = tofu.load(path=str(TOFU), forget_split="forget01", max_authors=6, heldout_authors=2)
    held = set(benchmark["retain_heldout"]["question"])
    assert len(benchmark["retain_heldout"]) == 40 and "perturbed_answer" in benchmark["retain_heldout"].column_names
    assert held <= set(benchmark["full"]["question"])  # the target learns them
    assert not held & set(benchmark["retain_train"]["question"])  # the retain loss never sees them
    assert not held & set(benchmark["retain"]["question"])  # `retain` is the rows the loss trains on
    assert set(benchmark["retain"]["question"]) <= set(benchmark["retain_train"]["question"])
    assert (
        benchmark["full"].to_list()
        == tofu.load(path=str(TOFU), forget_split="forget01", max_authors=6)["full"].to_list()
    )


def test_an_objective_on_a_split_the_benchmark_does_not_evaluate_is_refused_before_any_work(tmp_path):
    overrides = [*SMALL, "hparams_search=optuna", "benchmark.heldout_retain_fraction=0"]
    with pytest.raises(SimuError, match=r"^objective.metric=retain_heldout.rougeL_recall: benchmark 'synthetic'"):
        run_here(overrides, tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache" / "models").exists()
