"""The split interface every benchmark exposes, so attribution, unlearning and evaluation never branch
on which benchmark they got."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from datasets import Dataset

from simu_lightning.errors import SimuError


@dataclass
class Benchmark:
    """Named splits of QA rows (`question`, `answer`, and whatever else the benchmark carries).

    `forget` / `retain` name the splits unlearning works on; `target_splits` is what a base model is
    fine-tuned on to become the target (empty when the benchmark's target comes ready-made), and
    `reference_splits` what the reference ("retain-only", never saw the forget set) model is tuned on.
    `eval_splits` are evaluated before and after unlearning.
    """

    name: str
    splits: dict[str, Dataset]
    forget: str = "forget"
    retain: str = "retain"
    target_splits: tuple[str, ...] = ()
    reference_splits: tuple[str, ...] = ()
    eval_splits: tuple[str, ...] = ("forget", "retain")
    info: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> Dataset:
        if split not in self.splits:
            raise SimuError(f"benchmark {self.name!r} has no split {split!r} (it has: {', '.join(self.splits)})")
        return self.splits[split]

    def fingerprint(self, splits: tuple[str, ...]) -> str:
        """A content hash of the given splits: a cache key that changes whenever their rows change."""
        digest = hashlib.sha256()
        for split in splits:
            digest.update(split.encode())
            for row in self[split]:
                digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()[:16]
