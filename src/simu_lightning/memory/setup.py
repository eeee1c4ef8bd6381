"""What the planner reads of a composed config, as plain values: the model's shape, the method, the
batch, the devices and the precision (`Setup`, built from the config by pipeline/building.py's
memory_setup; the plan is made again from changed copies of it)."""

from __future__ import annotations

from dataclasses import dataclass

from simu_lightning.memory.shape import ModelShape
from simu_lightning.utils.devices import resolved_precision
from simu_lightning.utils.errors import SimuError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISIONS = {
    "32-true": "32-true",
    "32": "32-true",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    "bf16-true": "bf16-true",
    "16-true": "16-true",
}
MIXED = ("bf16-mixed", "16-mixed")
HALF_TRUE = ("bf16-true", "16-true")
FSDP = "ModelParallelStrategy"


def resolve_precision(precision, device: str, mixed_precision: str | None = None, sharded: bool = False) -> str:
    """trainer.precision as Lightning names it and as a run on `device` resolves it (utils/devices.py)."""
    value = resolved_precision(str(precision), device, mixed_precision, sharded)
    if value not in PRECISIONS:
        raise SimuError(f"trainer.precision={value!r} must be auto or one of {', '.join(PRECISIONS)}")
    return PRECISIONS[value]


@dataclass(frozen=True)
class Setup:
    """What the planner reads of a composed config, as plain values (re-planned with changes by
    `check_fits`)."""

    name: str
    shape: ModelShape
    dtype: str
    max_length: int
    method: dict
    loss: str
    batch_size: int
    retain_per_forget: int
    devices: int
    num_nodes: int
    fsdp: bool
    precision: str
    accelerator: str
    mixed_precision: str | None
    activation_checkpointing: bool | str

    @property
    def processes(self) -> int:
        return self.devices * self.num_nodes

    @property
    def shards(self) -> int:
        """How many ways FSDP2 shards a parameter (the devices of a node); 1 without FSDP."""
        return self.devices if self.fsdp else 1


def positive_count(value, name: str) -> int:
    """`value` as the positive integer the setting `name` must be (one line naming it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimuError(f"{name}={value!r} must be a positive integer")
    return value
