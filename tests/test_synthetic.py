import pytest

from simu_lightning.data import synthetic
from simu_lightning.utils.errors import SimuError

COLUMNS = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer"}


def test_same_seed_same_rows_and_other_seed_other_rows():
    assert synthetic.generate(num_authors=8, seed=3) == synthetic.generate(num_authors=8, seed=3)
    assert synthetic.generate(num_authors=8, seed=3)["full"] != synthetic.generate(num_authors=8, seed=4)["full"]


def test_splits_are_disjoint_by_author_and_full_is_retain_plus_forget():
    splits = synthetic.generate(num_authors=20, forget_fraction=0.1, holdout_fraction=0.1, seed=0)
    authors = {name: {r["author"] for r in rows} for name, rows in splits.items()}
    assert len(authors["forget"]) == 2 and len(authors["retain"]) == 18 and len(authors["holdout"]) == 2
    assert not authors["forget"] & authors["retain"]
    assert not authors["holdout"] & authors["full"]
    assert splits["full"] == splits["retain"] + splits["forget"]
    assert len(splits["full"]) == 20 * len(synthetic.FACTS)
    full_questions = {r["question"] for r in splits["full"]}
    assert not full_questions & {r["question"] for r in splits["world_facts"]}
    assert not full_questions & {r["question"] for r in splits["holdout"]}


def test_rows_carry_tofu_columns_and_wrong_answers_are_wrong():
    bench = synthetic.load(num_authors=5, seed=1)
    for split in ("forget", "retain", "holdout", "world_facts"):
        assert COLUMNS <= set(bench[split].column_names)
    for row in bench["full"]:
        assert len(row["perturbed_answer"]) == 3
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
        assert row["author"] in row["question"] and row["author"] in row["answer"]
    for row in bench["world_facts"]:
        assert row["answer"] not in row["perturbed_answer"]


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"forget_fraction": 1.5}, "benchmark.forget_fraction"),
        ({"holdout_fraction": 0.0}, "benchmark.holdout_fraction"),
        ({"num_authors": 1}, "benchmark.num_authors"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, setting):
    with pytest.raises(SimuError, match=setting):
        synthetic.generate(**kwargs)
