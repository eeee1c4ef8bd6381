"""What the planner reads of a composed config, as plain values: the model's shape, the method, the
batch, the devices and the precision (`Setup`; the plan is made again from changed copies of it)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from simu_lightning.memory.shape import ModelShape, architecture_config
from simu_lightning.utils.devices import resolved_precision
from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.processes import process_count

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

    @classmethod
    def of(cls, cfg: DictConfig) -> Setup:
        trainer, parallel = cfg.trainer, cfg.get("parallel") or {}
        strategy = trainer.get("strategy")
        target = str(strategy.get("_target_", "")) if isinstance(strategy, (dict, DictConfig)) else str(strategy)
        checkpointing = parallel.get("activation_checkpointing", False)
        if checkpointing not in (True, False, "auto"):
            raise SimuError(f"parallel.activation_checkpointing={checkpointing!r} must be true, false or auto")
        dtype = str(cfg.model.get("dtype", "float32"))
        if dtype not in DTYPE_BYTES:
            raise SimuError(f"model.dtype={dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
        return cls(
            name=str(cfg.model.get("name", "model")),
            shape=ModelShape.of(architecture_config(cfg.model)),
            dtype=dtype,
            max_length=_positive(cfg.model.get("max_length"), "model.max_length"),
            method=OmegaConf.to_container(cfg.method, resolve=True),
            loss=str(cfg.loss.get("_target_")),
            batch_size=_positive(cfg.data.batch_size, "data.batch_size"),
            retain_per_forget=_positive(cfg.data.get("retain_per_forget", 1), "data.retain_per_forget"),
            devices=_devices(trainer),
            num_nodes=_positive(trainer.get("num_nodes", 1) or 1, "trainer.num_nodes"),
            fsdp=target.endswith(FSDP),
            precision=str(trainer.get("precision", "32-true")),
            accelerator=str(trainer.get("accelerator", "auto")),
            mixed_precision=parallel.get("mixed_precision"),
            activation_checkpointing=checkpointing,
        )

    @property
    def processes(self) -> int:
        return self.devices * self.num_nodes

    @property
    def shards(self) -> int:
        """How many ways FSDP2 shards a parameter (the devices of a node); 1 without FSDP."""
        return self.devices if self.fsdp else 1


def _devices(trainer) -> int:
    """Devices per node (trainer.devices: a count, a list or "auto", as run.py counts them)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    try:
        count = process_count(trainer) // int(trainer.get("num_nodes", 1) or 1)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise SimuError(f"trainer.devices={devices!r} is not a device count, a list of devices or auto")
    return count


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimuError(f"{name}={value!r} must be a positive integer")
    return value
