"""The loop every suite shares: each evaluation split (at most `evaluation.max_examples` rows), its
per-example rows and its summary, with a line per split for the evaluations that take a while.

Which rows a limit keeps: a draw stratified by the split's groups (Benchmark.groups: TOFU's authors, the
synthetic benchmark's authors, LUME's documents), as many from every group as the limit allows (the
larger share to the first groups), each group's rows drawn with `evaluation.sample_seed`, which is not the
run's seed: every method and every seed of a comparison sees the same rows, and every author is in them.
Ungrouped splits are drawn uniformly with the same seed. A limit smaller than a split's number of groups
is refused (check_limits): some author would never be evaluated."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
from datasets import Dataset

from simu_lightning.evaluation.types import EvaluationSettings, Evaluation
from simu_lightning.utils.errors import SimuError

log = logging.getLogger(__name__)


def quotas(sizes: list[int], limit: int) -> list[int]:
    """Rows taken from groups of these sizes for `limit` rows in all: as even as the groups allow, the
    remainder one each to the first groups that have rows left."""
    taken, left = [0] * len(sizes), limit
    while left > 0 and any(t < s for t, s in zip(taken, sizes)):
        open_groups = [g for g, (t, s) in enumerate(zip(taken, sizes)) if t < s]
        share = max(1, left // len(open_groups))
        for g in open_groups:
            grant = min(share, sizes[g] - taken[g], left)
            taken[g] += grant
            left -= grant
            if not left:
                break
    return taken


def sampled_rows(groups: list | None, count: int, limit: int | None, seed: int) -> list[int]:
    """The indices (ascending) of the rows a limit keeps out of `count` rows with these group ids (None:
    ungrouped): every row when there is no limit or it is not below `count`."""
    if limit is None or count <= limit:
        return list(range(count))
    if groups is None:
        return sorted(np.random.default_rng([seed]).permutation(count)[:limit].tolist())
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    rows = []
    for g, (indices, quota) in enumerate(zip(members.values(), quotas([len(m) for m in members.values()], limit))):
        drawn = np.random.default_rng([seed, g]).permutation(len(indices))[:quota]
        rows += [indices[i] for i in drawn]
    return sorted(rows)


def evaluated_rows(benchmark, name: str, max_examples: int | None, seed: int) -> list[int]:
    """The rows of split `name` that an evaluation limited to `max_examples` reads."""
    return sampled_rows(benchmark.group_ids(name), len(benchmark[name]), max_examples, seed)


def limited(benchmark, name: str, settings: EvaluationSettings) -> Dataset:
    """The rows an evaluation reads of split `name` (all when `settings.max_examples` is null)."""
    split = benchmark[name]
    rows = evaluated_rows(benchmark, name, settings.max_examples, settings.sample_seed)
    return split if len(rows) == len(split) else split.select(rows)


def check_limits(benchmark, limits: dict[str, int | None]) -> None:
    """Refuse, in one line, a row limit (setting -> value) smaller than an evaluated split's number of
    groups: some author or document would never be evaluated."""
    for setting, limit in limits.items():
        for name in benchmark.eval_splits:
            groups = benchmark.group_ids(name)
            count = len(set(groups)) if groups is not None else 0
            if limit is not None and limit < count:
                noun = "documents" if benchmark.groups.get(name) == "document" else "authors"
                raise SimuError(
                    f"{setting}={limit} is smaller than split {name!r}'s {count} {noun}: every one of them must "
                    f"be evaluated; set it to at least {count} (or null for every row)"
                )


def view(benchmark, **splits: Dataset):
    """The benchmark with these splits (replacing its own of the same name) as its only evaluation splits."""
    return dataclasses.replace(benchmark, splits={**benchmark.splits, **splits}, eval_splits=tuple(splits))


def evaluate_splits(
    benchmark,
    stage: str,
    settings: EvaluationSettings,
    split_rows: Callable[[str, Dataset], list[dict]],
    summarise: Callable[[str, list[dict]], dict[str, float]],
) -> Evaluation:
    result = Evaluation()
    for name in benchmark.eval_splits:
        picked = evaluated_rows(benchmark, name, settings.max_examples, settings.sample_seed)
        split = benchmark[name] if len(picked) == len(benchmark[name]) else benchmark[name].select(picked)
        start = time.perf_counter()
        rows = split_rows(name, split)
        # the evaluations during unlearning stay quiet: there are many of them
        level = logging.DEBUG if stage == "during" else logging.INFO
        log.log(level, "evaluation (%s): %s, %d rows, %.0f s", stage, name, len(split), time.perf_counter() - start)
        result.summary[name] = summarise(name, rows)
        # `row`: the row's place in the whole split (which rows a limited evaluation read)
        result.rows += [
            {"split": name, "stage": stage, "index": i, "row": picked[i], **row} for i, row in enumerate(rows)
        ]
    return result
