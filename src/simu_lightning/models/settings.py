"""The model a run unlearns, as conf/model/*.yaml describes it, read once into typed settings that check
themselves (litgpt's way): where the base comes from, how its answers are prompted, how it becomes a
target (`finetune`), and what a memory plan needs of its architecture offline (`config`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from simu_lightning.data.formatting import PromptFormat
from simu_lightning.utils.errors import SimuError


@dataclass(frozen=True)
class ModelSettings:
    name: str
    source: str  # "tiny" (built here), a hub id, a local folder, or a GGUF file (pkg://... or a path)
    dtype: str = "float32"
    max_length: int = 128
    revision: str | None = None
    tokenizer: str | None = None  # a tokenizer source other than the model's own
    trust_remote_code: bool = False
    prompt: PromptFormat = field(default_factory=PromptFormat)
    architecture: dict | None = None  # module names for an architecture the registry does not know
    targets: dict = field(default_factory=dict)  # ready-made targets per benchmark: {source, tokenizer, ...}
    finetune: dict | None = None  # the target's recipe (epochs, lr, batch_size, ...; None: the base as it is)
    tiny: dict | None = None  # the laptop model's shape (source: tiny)
    config: dict | None = None  # the architecture for memory planning offline (the source's config.json)
    relearn_lr: float | None = None  # the relearning attack's learning rate (robustness=standard)

    @classmethod
    def of(cls, node: Mapping) -> ModelSettings:
        """From the model node as plain data; an unknown key or a bad value names the setting."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(node) - known):
            raise SimuError(f"model.{unknown[0]} is not a model setting (known: {', '.join(sorted(known))})")
        values = dict(node)
        values["prompt"] = PromptFormat(**(values.get("prompt") or {}))
        values["targets"] = dict(values.get("targets") or {})
        settings = cls(**values)
        if not isinstance(settings.max_length, int) or settings.max_length <= 0:
            raise SimuError(f"model.max_length must be a positive integer, got {settings.max_length!r}")
        return settings

    @property
    def finetune_seed(self) -> int | None:
        return (self.finetune or {}).get("seed")

    def ready_target(self, benchmark: str) -> dict | None:
        """The ready-made target this model names for `benchmark` (model.targets.<benchmark>), if any."""
        return self.targets.get(benchmark) or None
