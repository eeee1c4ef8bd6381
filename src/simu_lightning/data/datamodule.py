"""The unlearning data: every forget batch travels with a retain batch (GradDiff), of the same size
by default, or `retain_per_forget` times as large (more of the retain set seen per step).

The retain partner of forget example i in epoch e is a fixed function of (seed, e, i), and forget
examples are spread over processes by `GlobalBatchSampler`, whose shards interleave; so the global batch
at every step holds the same (forget, retain) pairs whatever the number of processes, and each process
draws its own retain examples. When the forget set does not divide into whole global batches, the rows
past the last whole batch sit the epoch out (the next epoch's permutation brings them back) instead of
being padded with repeated rows, which would change the global batch with the process count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import cached_property

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, DistributedSampler

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.formatting import IGNORE_INDEX, PromptFormat, collate, document_windows, encode_example
from simu_lightning.utils.errors import SimuError

log = logging.getLogger(__name__)


def _rows(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:10])) + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def encode_split(split: Dataset, tokenizer, fmt: PromptFormat, max_length: int, name: str = "split") -> list[dict]:
    """Every row as prompt + answer token ids with answer-only labels, tagged with its row index.
    Rows with an empty answer are refused by row number (nothing to unlearn or keep in them); rows whose
    prompt fills max_length keep their first answer token only, and a warning names them. A split of
    documents (a `text` column, MUSE) becomes windows of max_length tokens, each its own row."""
    if "text" in split.column_names:
        windows = document_windows_of(split, tokenizer, max_length)
        if not windows:
            raise SimuError(f"{name}: its documents hold no tokens")
        return windows
    encoded = [
        dict(encode_example(tokenizer, fmt, row["question"], row["answer"], max_length), index=i)
        for i, row in enumerate(split)
    ]
    empty = [e["index"] for e, answer in zip(encoded, split["answer"]) if not str(answer).strip()]
    if empty:
        raise SimuError(
            f"{name} rows {_rows(empty)}: the answer is empty, so there is nothing to unlearn or keep "
            "in them: drop the rows"
        )
    cut = [e["index"] for e in encoded if e["labels"].count(IGNORE_INDEX) >= max_length]
    if cut:
        log.warning(
            "%s rows %s: the prompt fills model.max_length=%d, so only the first answer token is used "
            "(raise model.max_length to use more)",
            name,
            _rows(cut),
            max_length,
        )
    return encoded


def document_windows_of(split: Dataset, tokenizer, max_length: int) -> list[dict]:
    windows = [w for text in split["text"] for w in document_windows(tokenizer, text, max_length) if w["input_ids"]]
    return [dict(w, index=i) for i, w in enumerate(windows)]


def retain_partners(
    seed: int, epoch: int, forget_indices: list[int], num_retain: int, per_forget: int = 1
) -> list[int]:
    """Which retain examples go with each forget example this epoch: a seeded permutation of the
    retain set, read at positions i * per_forget ... i * per_forget + per_forget - 1 for forget row i
    (wrapping round when they run past the end)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_retain)
    return [int(order[(i * per_forget + j) % num_retain]) for i in forget_indices for j in range(per_forget)]


class GlobalBatchSampler(DistributedSampler):
    """This process's share of every global batch: the epoch's seeded permutation (DistributedSampler's),
    cut to whole global batches, dealt round-robin to the processes."""

    def __init__(self, dataset, global_batch: int, num_replicas: int, rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.global_batch = global_batch
        self.usable = len(dataset) // global_batch * global_batch
        self.resume: tuple[int, int] | None = None  # (epoch, global batches already done in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start epoch `epoch` after its first `batches_done` global batches (a run resumed mid-epoch);
        the length stays the epoch's full length, which is what Lightning's restored progress counts against."""
        self.resume = (epoch, batches_done)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()[: self.usable]
        mine = order[self.rank :: self.num_replicas]
        if self.resume is not None and self.resume[0] == self.epoch:
            mine = mine[self.resume[1] * self.global_batch // self.num_replicas :]
        return iter(mine)

    def __len__(self) -> int:
        return self.usable // self.num_replicas


def _as_list(examples):
    return examples


class UnlearningDataModule(L.LightningDataModule):
    def __init__(
        self,
        benchmark: Benchmark,
        tokenizer,
        prompt: PromptFormat,
        batch_size: int = 8,
        max_length: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        retain_per_forget: int = 1,
        alternates: tuple[str, ...] = (),
    ):
        super().__init__()
        self.alternates = tuple(alternates)  # refusal answers: the `alternate` batch (IdkNLL, IdkDPO)
        if retain_per_forget < 1:
            raise SimuError(f"data.retain_per_forget must be >= 1, got {retain_per_forget}")
        self.retain_per_forget = retain_per_forget
        self.benchmark, self.tokenizer, self.prompt = benchmark, tokenizer, prompt
        self.batch_size, self.max_length, self.seed, self.num_workers = batch_size, max_length, seed, num_workers

    @cached_property
    def forget(self) -> list[dict]:
        return encode_split(
            self.benchmark[self.benchmark.forget],
            self.tokenizer,
            self.prompt,
            self.max_length,
            f"{self.benchmark.name} {self.benchmark.forget}",
        )

    @cached_property
    def retain(self) -> list[dict]:
        return encode_split(
            self.benchmark[self.benchmark.retain],
            self.tokenizer,
            self.prompt,
            self.max_length,
            f"{self.benchmark.name} {self.benchmark.retain}",
        )

    @cached_property
    def alternate(self) -> list[dict]:
        """Each forget question with one of the refusal answers, the same one for a row in every epoch
        (drawn from the seed and the row)."""
        forget = self.benchmark[self.benchmark.forget]
        if "question" not in forget.column_names:
            raise SimuError(
                f"loss: the refusal objectives (idk_nll, idk_dpo) answer the forget questions with a refusal, "
                f"and benchmark {self.benchmark.name!r} unlearns documents (its {self.benchmark.forget!r} split "
                "has no questions): choose another loss"
            )
        questions = forget["question"]
        picks = [
            int(np.random.default_rng([self.seed, i]).integers(len(self.alternates))) for i in range(len(questions))
        ]
        return [
            dict(encode_example(self.tokenizer, self.prompt, q, self.alternates[k], self.max_length), index=i)
            for i, (q, k) in enumerate(zip(questions, picks))
        ]

    def encode(self) -> None:
        """Encode the forget and retain rows (once; the properties keep them), refusing rows that
        cannot be used."""
        self.forget, self.retain  # noqa: B018  (cached properties: touching them encodes)
        if self.alternates:
            self.alternate  # noqa: B018

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device_batch_size(self) -> int:
        world_size, _ = self._world()
        if self.batch_size % world_size:
            raise SimuError(
                f"data.batch_size={self.batch_size} (the global batch) must be divisible by "
                f"the number of processes ({world_size})"
            )
        return self.batch_size // world_size

    def train_dataloader(self) -> DataLoader:
        if not self.forget or not self.retain:
            raise SimuError(f"benchmark {self.benchmark.name!r}: the forget and retain splits must both be non-empty")
        if len(self.forget) < self.batch_size:
            raise SimuError(
                f"data.batch_size={self.batch_size} is larger than the forget set ({len(self.forget)} rows): "
                f"set it to at most {len(self.forget)}"
            )
        world_size, rank = self._world()
        sampler = self.sampler = GlobalBatchSampler(
            self.forget, self.batch_size, num_replicas=world_size, rank=rank, seed=self.seed
        )
        return DataLoader(
            self.forget,
            batch_size=self.per_device_batch_size(),
            sampler=sampler,
            collate_fn=_as_list,
            num_workers=self.num_workers,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        if not isinstance(batch, list):  # already paired (e.g. a batch handed in by a test)
            return batch
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        partners = retain_partners(
            self.seed, epoch, [e["index"] for e in batch], len(self.retain), self.retain_per_forget
        )
        paired = {"forget": self.collate(batch), "retain": self.collate([self.retain[j] for j in partners])}
        if self.alternates:
            paired["alternate"] = self.collate([self.alternate[e["index"]] for e in batch])
        return paired

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Every tensor of the paired batch to the device but the rows' indices, which stay on the host as
        lists: the GNB labels are drawn there from them (reading them back from a GPU would wait for it at
        every step)."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        rows = {split: part.pop("index") for split, part in batch.items() if "index" in part}
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        for split, index in rows.items():
            batch[split]["index"] = index.tolist()
        return batch

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate(examples, self.tokenizer.pad_token_id)
        batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch


@dataclass(frozen=True)
class DataSettings:
    """`data`: the unlearning batches (the global forget batch, its retain partners, loader workers)."""

    batch_size: int = 32
    retain_per_forget: int = 1
    num_workers: int = 0

    @classmethod
    def of(cls, node: dict) -> DataSettings:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(node) - known):
            raise SimuError(f"data.{unknown[0]} is not a data setting (known: {', '.join(sorted(known))})")
        return cls(**node)

    def __post_init__(self):
        for name in ("batch_size", "retain_per_forget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SimuError(f"data.{name} must be a positive integer, got {value!r}")
