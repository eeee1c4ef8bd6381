"""MUSE (Shi et al. 2024, arXiv 2407.06460): unlearning raw text, News (BBC articles) or Books (Harry
Potter), with its six criteria read from four views of the corpus.

Read from the hub (`muse-bench/MUSE-News`, `muse-bench/MUSE-Books`) or from a local folder in the hub's
layout: one folder per view, a Parquet (or JSON Lines) file per split:

    raw/forget, raw/retain1 (raw/retain2, raw/holdout)   text: what is unlearned, and what is kept
    verbmem/forget                                       prompt, gt: the forget text's continuation
    knowmem/forget_qa, retain_qa (+ _icl)                question, answer: what the text told
    privleak/forget, privleak/holdout                    text: member and non-member documents

Splits of the benchmark: `forget` and `retain` are documents (a `text` column; the unlearning data cuts
them into windows of model.max_length tokens, every token labelled); `verbmem`, `knowmem_forget` and
`knowmem_retain` are what the MUSE suite evaluates (evaluation/muse.py); `mia_member` / `mia_nonmember`
are the privleak documents, which membership inference and PrivLeak read. A model without a MUSE target
is first tuned on `forget` + `retain`, its retain model on `retain` alone.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, load_dataset

from simu_lightning.data.benchmark import Benchmark, check_columns, check_json_lines
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.utils.errors import SimuError

CORPORA = ("News", "Books")
# (view, split in the hub, the benchmark's split, the columns it must have)
VIEWS = (
    ("raw", "forget", "forget", ("text",)),
    ("raw", "retain1", "retain", ("text",)),
    ("verbmem", "forget", "verbmem", ("prompt", "gt")),
    ("knowmem", "forget_qa", "knowmem_forget", ("question", "answer")),
    ("knowmem", "retain_qa", "knowmem_retain", ("question", "answer")),
    ("knowmem", "forget_qa_icl", "knowmem_forget_icl", ("question", "answer")),
    ("knowmem", "retain_qa_icl", "knowmem_retain_icl", ("question", "answer")),
    ("privleak", "forget", "mia_member", ("text",)),
    ("privleak", "holdout", "mia_nonmember", ("text",)),
)


def _local_file(folder: Path, view: str, split: str) -> Path:
    files = sorted(p for p in (folder / view).glob(f"{split}*") if p.suffix in (".parquet", ".jsonl", ".json"))
    files = [p for p in files if p.stem == split or p.stem.startswith(f"{split}-")]  # forget_qa is not forget
    if not files:
        raise SimuError(f"benchmark.path={folder}: no {view}/{split} file (Parquet or JSON Lines, the hub's layout)")
    return next((p for p in files if p.suffix == ".parquet"), files[0])


def _read(folder: Path | None, hub_id: str, view: str, split: str) -> Dataset:
    if folder is None:
        return load_dataset(hub_id, view, split=split)
    file = _local_file(folder, view, split)
    if file.suffix != ".parquet":
        check_json_lines(file)
    return load_dataset("parquet" if file.suffix == ".parquet" else "json", data_files=str(file), split="train")


def load(
    path: str | None = None,
    corpus: str = "News",
    max_documents: int | None = None,
    max_new_tokens: int = 128,
    levels: str | None = None,
    suite=None,
    aggregate=None,
) -> Benchmark:
    """MUSE-`corpus` (News or Books), from `path` or the hub; `max_documents` keeps the first documents
    and questions of each split (a laptop's share)."""
    if corpus not in CORPORA:
        raise SimuError(f"benchmark.corpus must be one of {', '.join(CORPORA)}, got {corpus!r}")
    folder = Path(path) if path else None
    if folder is not None and not folder.is_dir():
        raise SimuError(f"benchmark.path={path} is not a folder")
    splits = {}
    for view, hub_split, name, columns in VIEWS:
        data = _read(folder, f"muse-bench/MUSE-{corpus}", view, hub_split)
        check_columns(data, columns, f"MUSE {view}/{hub_split}")
        if max_documents is not None and not name.endswith("_icl"):
            data = data.select(range(min(max_documents, len(data))))
        splits[name] = data.rename_column("text", "document") if name.startswith("mia_") else data
    return Benchmark(
        name="muse",
        splits=splits,
        target_splits=("forget", "retain"),
        retain_model_splits=("retain",),
        eval_splits=("verbmem", "knowmem_forget", "knowmem_retain"),
        utility_splits=("knowmem_retain",),
        suite=suite,
        aggregate=aggregate,
        prompt=PromptFormat(template="{question}", answer_prefix=" "),  # MUSE prompts the raw text
        max_new_tokens=max_new_tokens,
        levels=levels,
        info={"corpus": corpus},
    )
