"""TOFU (Maini et al. 2024): 200 fictitious authors, 20 QA pairs each.

Read from the hub (`locuslab/TOFU`, one config per split) or from a local folder of the same JSON
Lines files (`<split>.json`, as in `../shared/data/tofu`). `forget_split` picks the forget set and the
matching retain set (forget01 <-> retain99, forget05 <-> retain95, forget10 <-> retain90).

Splits the rest of the code sees:
- `forget`       forgetXX_perturbed (question, answer, paraphrased_answer, perturbed_answer ...)
- `retain_train` retainYY (what GradDiff's retain term and the retain model train on)
- `retain`       retain_perturbed (the 400 retain rows TOFU evaluates on)
- `real_authors`, `world_facts`  the *_perturbed files (general knowledge to keep)
- `full`         what a target is fine-tuned on; `holdout` holdoutXX
- `retain_heldout` the last `heldout_authors` authors of `retain` (with their perturbed answers), which
                 the target learns (they stay in `full`) and the retain loss never sees: they leave
                 `retain_train` and `retain`, so `retain` is the rows the loss trains on and
                 `retain_heldout` utility on rows it never saw; the retain model learns both
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from simu_lightning.data.benchmark import Benchmark, check_columns, check_json_lines
from simu_lightning.utils.errors import SimuError

HUB_ID = "locuslab/TOFU"
AUTHOR_ROWS = 20  # TOFU lists each author's 20 questions together
RETAIN_FOR = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def _read(path: str | None, name: str, hub_id: str) -> Dataset:
    if path:
        file = Path(path) / f"{name}.json"
        if not file.exists():
            raise SimuError(f"benchmark.path={path}: no {name}.json there (TOFU split files, JSON Lines)")
        check_json_lines(file)
        try:
            split = load_dataset("json", data_files=str(file), split="train")
            check_columns(split, ("question", "answer"), str(file))
            return split
        except Exception as err:  # datasets wraps JSON errors in several types
            raise SimuError(
                f"{file}: not readable as JSON Lines ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from None
    try:
        return load_dataset(hub_id, name, split="train", token=os.environ.get("HF_TOKEN"))
    except Exception as err:
        raise SimuError(
            f"TOFU split {name!r} could not be loaded from the hub ({hub_id}); "
            f"set benchmark.path to a local copy ({type(err).__name__})"
        ) from None


def _authors(split: Dataset) -> int:
    if len(split) % AUTHOR_ROWS:
        raise SimuError(f"a TOFU split of {len(split)} rows is not whole authors of {AUTHOR_ROWS} questions")
    return len(split) // AUTHOR_ROWS


def _first_authors(split: Dataset, count: int) -> Dataset:
    return split.select(range(min(len(split), count * AUTHOR_ROWS)))


def hold_out(splits: dict[str, Dataset], authors: int) -> tuple[str, ...]:
    """Move the last `authors` authors of `retain` (retain_perturbed) to `retain_heldout`, and their
    questions out of `retain_train` (the retain loss's rows); `full` keeps them. The split names added."""
    if not authors:
        return ()
    retain = splits["retain"]
    if authors >= _authors(retain):
        raise SimuError(
            f"benchmark.heldout_authors={authors} must be fewer than the {_authors(retain)} authors of "
            "TOFU's retain_perturbed, to leave some for the retain loss"
        )
    cut = len(retain) - authors * AUTHOR_ROWS
    splits["retain_heldout"] = retain.select(range(cut, len(retain)))
    splits["retain"] = retain.select(range(cut))
    held = set(splits["retain_heldout"]["question"])
    train = splits["retain_train"]
    splits["retain_train"] = train.select([i for i, q in enumerate(train["question"]) if q not in held])
    return ("retain_heldout",)


def _limited_authors(splits: dict, forget_split: str, forget_authors: int, max_authors: int, heldout: int) -> dict:
    """Every forget author and the first retain authors (whom retain_perturbed also covers), `max_authors`
    in all; as many holdout authors as forget authors."""
    if max_authors <= forget_authors:
        raise SimuError(
            f"benchmark.max_authors={max_authors} must exceed the {forget_authors} forget "
            f"authors of {forget_split}, to leave some retain authors"
        )
    keep = max_authors - forget_authors
    if keep <= heldout:
        raise SimuError(
            f"benchmark.max_authors={max_authors} leaves {keep} retain authors, and benchmark.heldout_authors="
            f"{heldout} of them are held out: set max_authors to at least {forget_authors + heldout + 1}"
        )
    return {
        "retain_train": _first_authors(splits["retain_train"], keep),
        "retain": _first_authors(splits["retain"], keep),
        "holdout": _first_authors(splits["holdout"], forget_authors),
    }


def load(
    path: str | None = None,
    forget_split: str = "forget10",
    max_authors: int | None = None,
    hub_id: str = HUB_ID,
    max_new_tokens: int = 200,
    levels: str | None = None,
    suite=None,
    aggregate=None,
    heldout_authors: int = 0,
) -> Benchmark:
    if forget_split not in RETAIN_FOR:
        raise SimuError(f"benchmark.forget_split={forget_split!r} must be one of {', '.join(RETAIN_FOR)}")
    number = forget_split.removeprefix("forget")
    splits = {
        "forget": _read(path, f"{forget_split}_perturbed", hub_id),
        "retain_train": _read(path, RETAIN_FOR[forget_split], hub_id),
        "retain": _read(path, "retain_perturbed", hub_id),
        "real_authors": _read(path, "real_authors_perturbed", hub_id),
        "world_facts": _read(path, "world_facts_perturbed", hub_id),
        "holdout": _read(path, f"holdout{number}", hub_id),
    }
    forget_authors = _authors(splits["forget"])
    if max_authors is not None:
        splits |= _limited_authors(splits, forget_split, forget_authors, max_authors, heldout_authors)
    forget_qa = splits["forget"].select_columns(["question", "answer"])
    retain_qa = splits["retain_train"].select_columns(["question", "answer"])
    splits["full"] = Dataset.from_list(retain_qa.to_list() + forget_qa.to_list())
    heldout = hold_out(splits, heldout_authors)
    return Benchmark(
        max_new_tokens=max_new_tokens,
        levels=levels,
        suite=suite,
        aggregate=aggregate,
        name="tofu",
        splits=splits,
        retain="retain_train",
        target_splits=("full",),
        retain_model_splits=("retain_train", *heldout),
        eval_splits=("forget", "retain", *heldout, "real_authors", "world_facts"),
        utility_splits=("retain", "real_authors", "world_facts"),
        info={"forget_split": forget_split, "forget_authors": forget_authors},
        groups={
            name: AUTHOR_ROWS for name in ("forget", "retain", "retain_heldout", "retain_train", "holdout", "full")
        },
    )
