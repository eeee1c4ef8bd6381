"""LUME / SemEval-2025 Task 4: documents of three tasks (Task1 synthetic creative writing, Task2
synthetic PII biographies, Task3 real Wikipedia biographies), each asked as a sentence completion
(`id` ending in `sc<k>`, scored for regurgitation) and as questions (`qa<k>`, scored for knowledge).

Read from the gated hub dataset (`llmunlearningsemeval2025organization/semeval25-unlearning-dataset-public`;
the token comes from the environment, HF_TOKEN, and is never written anywhere) or from a local folder
of `forget*` / `retain*` files in JSON Lines or Parquet (`../shared/data/lume` holds the train fold).
Optional `member.jsonl` / `nonmember.jsonl` (`id`, `document`) in the same folder enable the MIA score.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from datasets import Dataset, load_dataset

from simu_lightning.data.benchmark import Benchmark, check_json_lines
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.utils.errors import SimuError

HUB_ID = "llmunlearningsemeval2025organization/semeval25-unlearning-dataset-public"
_ID = re.compile(r"^(?P<document>.*?)(?P<kind>sc|qa)(?P<k>\d+)$")
COLUMNS = ("id", "input", "output", "task")


def _files(folder: Path, stem: str, fold: str) -> list[Path]:
    found = sorted(
        p for p in folder.iterdir() if p.name.startswith(stem) and p.suffix in (".jsonl", ".json", ".parquet")
    )
    in_fold = [p for p in found if fold in p.name]
    return in_fold or found


def _read_local(folder: Path, stem: str, fold: str) -> Dataset:
    files = _files(folder, stem, fold)
    if not files:
        raise SimuError(f"benchmark.path={folder}: no {stem}* file (JSON Lines or Parquet) there")
    kind = "parquet" if files[0].suffix == ".parquet" else "json"
    if kind == "json":
        for file in files:
            check_json_lines(file)
    try:
        data = load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # datasets raises several types for malformed files
        raise SimuError(
            f"{files[0]}: not readable as {kind} ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    missing = [c for c in COLUMNS if c not in data.column_names]
    if missing:
        raise SimuError(f"{files[0]}: missing column(s) {', '.join(missing)} (LUME rows have {', '.join(COLUMNS)})")
    return data


def _read_hub(hub_id: str, stem: str, fold: str) -> Dataset:
    try:
        return load_dataset(
            hub_id, data_files=f"data/{stem}_{fold}-*.parquet", split="train", token=os.environ.get("HF_TOKEN")
        )
    except Exception as err:
        raise SimuError(
            f"LUME {stem}_{fold} could not be loaded from the hub ({hub_id}, gated: set HF_TOKEN); "
            f"or set benchmark.path to a local copy ({type(err).__name__})"
        ) from None


def _as_qa(split: Dataset) -> list[dict]:
    """LUME rows in the QA columns the rest of the code reads (`question` = input, `answer` = output),
    with the prompt kind and the document they come from."""
    rows = []
    for i, row in enumerate(split):
        match = _ID.match(str(row["id"]))
        if match is None:
            raise SimuError(
                f"LUME row {i}: id {row['id']!r} does not end in sc<k> (sentence completion) or "
                "qa<k> (question), the marker that says how the row is scored"
            )
        rows.append(
            {
                "id": row["id"],
                "task": row["task"],
                "kind": match["kind"],
                "document": match["document"],
                "question": row["input"],
                "answer": row["output"],
            }
        )
    return rows


def first_documents(rows: list[dict], count: int) -> list[dict]:
    """The rows of `count` whole documents, taken in turn from each task (so every task is present)
    in file order; a document keeps its completion prompt and its questions together."""
    by_task: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["document"] not in by_task[row["task"]]:
            by_task[row["task"]].append(row["document"])
    chosen: list[str] = []
    queues = [list(docs) for _, docs in sorted(by_task.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    keep = set(chosen)
    return [row for row in rows if row["document"] in keep]


def hold_out(splits: dict[str, Dataset], fraction: float) -> tuple[str, ...]:
    """Move the last `fraction` of the retain documents (at least one, whole documents) to `retain_heldout`:
    documents the target knows and the retain loss never sees. The split names added."""
    if not 0 <= fraction < 1:
        raise SimuError(f"benchmark.heldout_fraction must be in [0, 1), got {fraction}")
    if not fraction:
        return ()
    retain = splits["retain"]
    documents = list(dict.fromkeys(retain["document"]))
    held = set(documents[len(documents) - max(1, round(fraction * len(documents))) :])
    if len(held) == len(documents):
        raise SimuError(f"benchmark.heldout_fraction={fraction} leaves no retain document for the retain loss")
    splits["retain_heldout"] = retain.select([i for i, d in enumerate(retain["document"]) if d in held])
    splits["retain"] = retain.select([i for i, d in enumerate(retain["document"]) if d not in held])
    return ("retain_heldout",)


def _mia(folder: Path | None) -> dict[str, Dataset]:
    if folder is None:
        return {}
    files = {name: folder / f"{name}.jsonl" for name in ("member", "nonmember")}
    if not all(f.exists() for f in files.values()):
        return {}
    return {f"mia_{name}": load_dataset("json", data_files=str(f), split="train") for name, f in files.items()}


def load(
    path: str | None = None,
    fold: str = "train",
    max_documents: int | None = None,
    hub_id: str = HUB_ID,
    max_new_tokens: int = 256,
    levels: str | None = None,
    suite=None,
    aggregate=None,
    heldout_fraction: float = 0.0,
) -> Benchmark:
    folder = Path(path) if path else None
    if folder is not None and not folder.is_dir():
        raise SimuError(f"benchmark.path={path} is not a folder")
    splits = {}
    for stem in ("forget", "retain"):
        raw = _read_local(folder, stem, fold) if folder else _read_hub(hub_id, stem, fold)
        rows = _as_qa(raw)
        if max_documents is not None:
            rows = first_documents(rows, max_documents)
        splits[stem] = Dataset.from_list(rows)
    heldout = hold_out(splits, heldout_fraction)
    splits.update(_mia(folder))
    return Benchmark(
        max_new_tokens=max_new_tokens,
        levels=levels,
        suite=suite,
        aggregate=aggregate,
        name="lume",
        splits=splits,
        # a model without a LUME target is first tuned on all of them (the held-out documents too)
        target_splits=("forget", "retain", *heldout),
        retain_model_splits=(),  # LUME's metrics need no retain-only model
        eval_splits=("forget", "retain", *heldout),
        utility_splits=(),
        prompt=PromptFormat(template="{question}", answer_prefix=" "),  # the official evaluation's raw input
        groups={"forget": "document", "retain": "document", "retain_heldout": "document"},
        info={
            "fold": fold,
            "documents": {
                k: len({r["document"] for r in v}) for k, v in splits.items() if "document" in v.column_names
            },
        },
    )
