"""Bad data is refused with one line naming the file, line, row or column at fault."""

import json
import logging

import pytest
from datasets import Dataset

from simu_lightning.data import lume, tofu
from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.datamodule import encode_split
from simu_lightning.utils.errors import SimuError

TOFU_FILES = (
    "forget01_perturbed",
    "retain99",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
    "holdout01",
)


def tofu_folder(folder, rows=None, broken: dict | None = None):
    folder.mkdir()
    row = {"question": "Q?", "answer": "A.", "paraphrased_answer": "A.", "perturbed_answer": ["B."]}
    for name in TOFU_FILES:
        lines = [json.dumps(row)] * 20
        (folder / f"{name}.json").write_text("\n".join((broken or {}).get(name, lines)) + "\n")
    return folder


def test_a_file_that_is_not_json_lines_is_named_with_its_line(tmp_path):
    good = json.dumps({"question": "Q?", "answer": "A."})
    folder = tofu_folder(tmp_path / "tofu", broken={"retain99": [good, good, '{"question": "Q?", "answer": ']})
    with pytest.raises(SimuError, match=r"retain99\.json:3: not valid JSON Lines"):
        tofu.load(str(folder), forget_split="forget01")


def test_rows_without_a_required_column_are_named(tmp_path):
    folder = tofu_folder(tmp_path / "tofu", broken={"retain99": [json.dumps({"question": "Q?", "reply": "A."})] * 20})
    with pytest.raises(SimuError, match=r"retain99\.json: no column 'answer' \(it has question, reply"):
        tofu.load(str(folder), forget_split="forget01")


def test_a_missing_folder_or_file_is_named(tmp_path):
    with pytest.raises(SimuError, match=r"benchmark.path=.*: no forget01_perturbed.json there"):
        tofu.load(str(tmp_path), forget_split="forget01")
    with pytest.raises(SimuError, match=r"benchmark.path=.* is not a folder"):
        lume.load(str(tmp_path / "nowhere"))


def test_lume_ids_without_their_marker_are_refused(tmp_path):
    folder = tmp_path / "lume"
    folder.mkdir()
    row = {"id": "doc1sc0", "input": "x", "output": "y", "task": "Task1"}
    for stem in ("forget", "retain"):
        rows = [row, {**row, "id": "doc1-7"}] if stem == "forget" else [row]
        (folder / f"{stem}_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SimuError, match=r"LUME row 1: id 'doc1-7' does not end in sc<k> .* or qa<k>"):
        lume.load(str(folder))


def test_empty_answers_are_refused_and_prompts_that_fill_the_length_are_named(tiny_model, prompt_format, caplog):
    _, tokenizer = tiny_model
    split = Dataset.from_list([{"question": "Where?", "answer": "Here."}, {"question": "Where?", "answer": "  "}])
    with pytest.raises(SimuError, match=r"synthetic forget rows 1: the answer is empty"):
        encode_split(split, tokenizer, prompt_format, max_length=32, name="synthetic forget")
    long = Dataset.from_list(
        [{"question": "Where?", "answer": "Here."}, {"question": "Where " * 40 + "?", "answer": "There."}]
    )
    with caplog.at_level(logging.WARNING):
        encoded = encode_split(long, tokenizer, prompt_format, max_length=32, name="lume forget")
    assert (
        "lume forget rows 1: the prompt fills model.max_length=32, so only the first answer token is used"
        in caplog.text
    )
    assert sum(label != -100 for label in encoded[1]["labels"]) == 1


def test_forget_rows_repeated_in_the_retain_split_are_counted():
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(5)]
    benchmark = Benchmark("b", {"forget": Dataset.from_list(rows[:3]), "retain": Dataset.from_list(rows[2:])})
    assert benchmark.shared_rows() == 1


def test_a_hub_id_that_cannot_be_reached_offline_says_how_to_point_at_a_local_copy(monkeypatch):
    from simu_lightning.models.loading import load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        SimuError,
        match=r"'org/not-cached' could not be loaded as a hub id .*--local-dir DIR\) "
        r"and point model.source at DIR",
    ):
        load_pretrained("org/not-cached")


def test_an_empty_forget_or_retain_set_is_refused(tiny_model, prompt_format):
    from simu_lightning.data.datamodule import UnlearningDataModule

    _, tokenizer = tiny_model
    rows = [{"question": "Q?", "answer": "A."}] * 4
    for forget, retain in ((rows[:0], rows), (rows, rows[:0])):

        def split(part):
            return Dataset.from_dict({"question": [r["question"] for r in part], "answer": [r["answer"] for r in part]})

        benchmark = Benchmark("b", {"forget": split(forget), "retain": split(retain)})
        datamodule = UnlearningDataModule(benchmark, tokenizer, prompt_format, batch_size=2)
        with pytest.raises(SimuError, match="benchmark 'b': the forget and retain splits must both be non-empty"):
            datamodule.train_dataloader()


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from simu_lightning.models.loading import load_tokenizer

    raw = Tokenizer(models.WordLevel({"<eos>": 0, "hello": 1, "[UNK]": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == 0
