"""TOFU and LUME loaders on the real files in ../shared/data (skipped when that folder is absent)."""

import json

import pytest

from conftest import SHARED_DATA
from simu_lightning.data import lume, tofu
from simu_lightning.utils.errors import SimuError

TOFU = SHARED_DATA / "tofu"
LUME = SHARED_DATA / "lume"
needs_tofu = pytest.mark.skipif(not (TOFU / "full.json").exists(), reason=f"TOFU data not found at {TOFU}")
needs_lume = pytest.mark.skipif(not (LUME / "forget_train.jsonl").exists(), reason=f"LUME data not found at {LUME}")


@needs_tofu
def test_tofu_splits_and_the_matching_retain_set():
    bench = tofu.load(path=str(TOFU), forget_split="forget05")
    assert len(bench["forget"]) == 200 and len(bench["retain_train"]) == 3800 and len(bench["retain"]) == 400
    assert len(bench["full"]) == 4000 and len(bench["holdout"]) == 200
    assert {"paraphrased_answer", "perturbed_answer"} <= set(bench["forget"].column_names)
    assert not set(bench["forget"]["question"]) & set(bench["retain_train"]["question"])
    assert bench.eval_splits == ("forget", "retain", "real_authors", "world_facts")


@needs_tofu
def test_tofu_max_authors_keeps_every_forget_author():
    bench = tofu.load(path=str(TOFU), forget_split="forget01", max_authors=6)
    assert len(bench["forget"]) == 40 and len(bench["retain_train"]) == 80 and len(bench["retain"]) == 80
    assert len(bench["full"]) == 120
    assert set(bench["retain"]["question"]) <= set(bench["retain_train"]["question"])
    with pytest.raises(SimuError, match="benchmark.max_authors=2 must exceed the 2 forget authors"):
        tofu.load(path=str(TOFU), forget_split="forget01", max_authors=2)
    # 2 forget authors and 4 retain authors, all 4 held out: none left for the retain loss
    with pytest.raises(SimuError, match=r"leaves 4 retain authors, .*heldout_authors=4 .* at least 7$"):
        tofu.load(path=str(TOFU), forget_split="forget01", max_authors=6, heldout_authors=4)


def test_tofu_bad_settings_name_what_is_wrong(tmp_path):
    with pytest.raises(SimuError, match="benchmark.forget_split='forget07'"):
        tofu.load(path=str(tmp_path), forget_split="forget07")
    with pytest.raises(SimuError, match="no forget10_perturbed.json"):
        tofu.load(path=str(tmp_path))


@needs_lume
def test_lume_rows_kinds_and_whole_documents():
    full = lume.load(path=str(LUME))
    assert len(full["forget"]) == 2206 and len(full["retain"]) == 2188
    small = lume.load(path=str(LUME), max_documents=12)
    for split in ("forget", "retain"):
        rows = small[split]
        documents = set(rows["document"])
        assert len(documents) == 12 and set(rows["task"]) == {"Task1", "Task2", "Task3"}
        for document in documents:  # whole: every row of the document in the full split came along
            assert sum(d == document for d in full[split]["document"]) == sum(d == document for d in rows["document"])
        assert set(rows["kind"]) == {"sc", "qa"}
    assert small.prompt.template == "{question}"


def test_lume_bad_ids_and_columns_are_named(tmp_path):
    (tmp_path / "forget.jsonl").write_text(
        json.dumps({"id": "doc1", "input": "a", "output": "b", "task": "Task1"}) + "\n"
    )
    (tmp_path / "retain.jsonl").write_text(json.dumps({"id": "doc2qa0", "input": "a", "output": "b"}) + "\n")
    with pytest.raises(SimuError, match=r"id 'doc1' does not end in sc<k> \(sentence completion\) or qa<k>"):
        lume.load(path=str(tmp_path))
    (tmp_path / "forget.jsonl").write_text(
        json.dumps({"id": "doc1sc0", "input": "a", "output": "b", "task": "Task1"}) + "\n"
    )
    with pytest.raises(SimuError, match="retain.jsonl: missing column"):
        lume.load(path=str(tmp_path))


def test_lume_mia_files_become_splits(tmp_path):
    for stem, row_id in (("forget", "d1sc0"), ("retain", "d2qa0")):
        (tmp_path / f"{stem}.jsonl").write_text(
            json.dumps({"id": row_id, "input": "a", "output": "b", "task": "Task2"}) + "\n"
        )
    for name in ("member", "nonmember"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": name, "document": f"text of {name}"}) + "\n")
    bench = lume.load(path=str(tmp_path))
    assert bench["mia_member"]["document"] == ["text of member"]


def test_without_the_network_the_hub_error_says_to_use_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SimuError, match="set benchmark.path to a local copy"):
        tofu.load(forget_split="forget01")
    with pytest.raises(SimuError, match="set HF_TOKEN.*benchmark.path"):
        lume.load()
