"""Objects built from config nodes: `build` (Hydra's instantiate, letting our one-line errors through),
the trainers of a run and of its target preparation, its loggers and its device; what run.py's
orchestration reads (Launch); what the memory planner reads (memory_setup). With plan.py, the only module
that reads the Hydra config."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from simu_lightning.memory.setup import DTYPE_BYTES, FSDP, Setup, positive_count
from simu_lightning.memory.shape import REQUIRED, ModelShape
from simu_lightning.utils.devices import resolved_precision
from simu_lightning.utils.processes import is_launched_externally, process_count
from simu_lightning.utils.errors import SimuError

if TYPE_CHECKING:  # (Lightning is imported where a trainer is built: the memory command needs none)
    import lightning as L


@dataclass(frozen=True)
class TrainerSettings:
    """The Lightning trainer of a run, read once from the trainer node (its precision as it runs), and what
    the stages derive from it: this process's device, whether several processes take part, the settings
    that cache keys and target fine-tuning read."""

    arguments: dict  # the trainer node, resolved: what `make` instantiates
    device: torch.device  # this process's device during the fit (what Lightning's `auto` picks)
    several_processes: bool  # a sharded or multi-device trainer, or torchrun / srun
    cache_devices: dict  # where and in what precision a model is evaluated (part of cache keys)
    finetune_numerics: dict  # the settings that target fine-tuning inherits (part of its cache key)

    @classmethod
    def of(cls, node: DictConfig) -> TrainerSettings:
        return cls(
            arguments=OmegaConf.to_container(node, resolve=True),
            device=run_device(node),
            several_processes=several_processes(node),
            cache_devices=devices_of(node),
            finetune_numerics=finetune_trainer_settings(node),
        )

    @property
    def max_epochs(self) -> int:
        return self.arguments.get("max_epochs")

    @property
    def precision(self) -> str:
        return str(self.arguments.get("precision"))

    def make(self, **overrides) -> L.Trainer:
        """The trainer, with `overrides` (callbacks, logger, max_steps, ...) over the node's arguments."""
        return build(self.arguments, **overrides)

    def at(self, out: Path, old: Path) -> TrainerSettings:
        """The same trainer writing under `out` where it wrote under `old` (a continual request's folder)."""
        return dataclasses.replace(self, arguments=rebased(self.arguments, old, out))

    def single_process(self, out: Path):
        """A factory of single-process trainers (target preparation, the relearning attack)."""
        return single_process_trainers(self, out)


def several_processes(trainer: DictConfig) -> bool:
    """Whether the run uses several processes (a sharded or multi-device trainer, or torchrun / srun)."""
    several = str(trainer.get("devices", 1)) not in ("1", "auto") or int(trainer.get("num_nodes", 1) or 1) > 1
    return several or is_launched_externally()


def build(node: DictConfig, **overrides):
    """`instantiate`, letting a bad-input error of ours through as itself (Hydra wraps what a
    constructor raises in an InstantiationException several lines long)."""
    try:
        return instantiate(node, **overrides)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SimuError):
            raise cause from None
        raise


def make_trainer(trainer_cfg: DictConfig, **overrides) -> L.Trainer:
    """The Lightning trainer of a config node, its precision `auto` resolved (`trainer_precision`)."""
    return build(trainer_cfg, **{"precision": trainer_precision(trainer_cfg), **overrides})


def loggers(nodes: tuple[dict, ...]) -> list:
    """The run's loggers, built from their resolved nodes (RunPlan.loggers)."""
    return [instantiate(node) for node in nodes]


def rebased(value, old: Path, new: Path):
    """`value` (a resolved node: dicts, lists, strings) with every path under `old` moved under `new`."""
    if isinstance(value, dict):
        return {key: rebased(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [rebased(item, old, new) for item in value]
    if isinstance(value, str) and (value == str(old) or value.startswith(f"{old}/")):
        return str(new) + value[len(str(old)) :]
    return value


def devices_of(trainer_cfg: DictConfig) -> dict[str, str]:
    """The trainer settings that decide where and in what precision a model is evaluated (cache keys)."""
    return {k: str(trainer_cfg.get(k)) for k in ("accelerator", "devices", "num_nodes", "precision", "strategy")}


def run_device(trainer_cfg: DictConfig) -> torch.device:
    """The device this process's model is on during the fit (what Lightning's `auto` picks): a GPU
    node's process computes on its own GPU, the one of its local rank."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def trainer_precision(trainer_cfg: DictConfig, mixed_precision: str | None = None) -> str:
    """trainer.precision as this run's device runs it (utils/devices.resolved_precision)."""
    device, precision = run_device(trainer_cfg).type, str(trainer_cfg.get("precision", "32-true"))
    bf16 = device == "cuda" and precision == "auto" and torch.cuda.is_bf16_supported()  # (asked only if needed)
    return resolved_precision(precision, device, mixed_precision, sharded="strategy" in trainer_cfg, bf16=bf16)


def with_resolved_precision(cfg: DictConfig) -> DictConfig:
    """`cfg` with trainer.precision resolved (`auto`, and parallel.mixed_precision on one device): the
    trainer, the cache keys and config.yaml all see the precision that ran."""
    precision = trainer_precision(cfg.trainer, (cfg.get("parallel") or {}).get("mixed_precision"))
    if str(cfg.trainer.get("precision")) == precision:
        return cfg
    cfg = copy.deepcopy(cfg)  # interpolations kept
    with open_dict(cfg):
        cfg.trainer.precision = precision
    return cfg


def use_tensor_cores(device: torch.device) -> None:
    """On a CUDA run, float32 matmuls in TF32 (torch's "high"): strict float32 leaves an H100 at ~67 of
    its ~495 TF32 TFLOP/s. The float32 master weights, optimiser state and reductions are unaffected."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def single_process_trainers(trainer: TrainerSettings, out: Path):
    """Target preparation and the relearning attack run in one process, whatever the unlearning's
    strategy: a factory of such trainers."""

    def make(**overrides) -> L.Trainer:
        if is_launched_externally():
            raise SimuError(
                "the target is not prepared yet, and preparing it needs a single process: run the "
                "same command once without torchrun/srun, adding mode=prepare"
            )
        return trainer.make(
            devices=1,
            num_nodes=1,
            strategy="auto",
            logger=False,
            enable_checkpointing=False,
            default_root_dir=str(out / "finetune"),
            **overrides,
        )

    return make


def finetune_trainer_settings(trainer_cfg: DictConfig) -> dict:
    """The trainer settings that target fine-tuning inherits and that change its result (the precision as
    it runs: `auto` resolved, so a key never says auto)."""
    settings = {
        name: trainer_cfg.get(name)
        for name in ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
    }
    if settings["precision"] is not None:
        settings["precision"] = trainer_precision(trainer_cfg)
    return settings


@dataclass(frozen=True)
class Launch:
    """What run.py's orchestration (launch.py) reads before a plan exists: how many processes the trainer
    runs and on how many nodes, the seeds a tuning trial runs at, and the run's folder."""

    processes: int
    num_nodes: int
    tuning_seeds: tuple[int, ...]
    output_dir: str

    @classmethod
    def of(cls, cfg: DictConfig) -> Launch:
        return cls(
            processes=process_count(cfg.trainer),
            num_nodes=int(cfg.trainer.get("num_nodes", 1) or 1),
            tuning_seeds=tuple(int(s) for s in (cfg.get("objective") or {}).get("seeds") or ()),
            output_dir=str(cfg.paths.output_dir),
        )


def preparing(cfg: DictConfig) -> DictConfig:
    """The same run, stopped once its target is prepared (mode=prepare)."""
    return OmegaConf.merge(cfg, {"mode": "prepare"})


def tuning_trial_run(cfg: DictConfig, seed: int, seeds: tuple[int, ...]) -> DictConfig:
    """A tuning trial's run at one of its seeds, in <trial>/seed_<s>, recording the seeds that tuned it
    (tuned.seeds, which the report keeps out of reported groups)."""
    trial = copy.deepcopy(cfg)  # (interpolations kept: the loggers' folders follow paths.output_dir)
    with open_dict(trial):
        trial.seed = seed
        trial.paths.output_dir = f"{cfg.paths.output_dir}/seed_{seed}"
        trial.tuned = {"seeds": list(seeds)}
    return trial


def memory_setup(cfg: DictConfig) -> Setup:
    """What the memory planner reads of a composed config (memory/setup.py's Setup)."""
    trainer, parallel = cfg.trainer, cfg.get("parallel") or {}
    strategy = trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, (dict, DictConfig)) else str(strategy)
    checkpointing = parallel.get("activation_checkpointing", False)
    if checkpointing not in (True, False, "auto"):
        raise SimuError(f"parallel.activation_checkpointing={checkpointing!r} must be true, false or auto")
    dtype = str(cfg.model.get("dtype", "float32"))
    if dtype not in DTYPE_BYTES:
        raise SimuError(f"model.dtype={dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return Setup(
        name=str(cfg.model.get("name", "model")),
        shape=ModelShape.of(architecture_values(cfg.model)),
        dtype=dtype,
        max_length=positive_count(cfg.model.get("max_length"), "model.max_length"),
        method=OmegaConf.to_container(cfg.method, resolve=True),
        loss=str(cfg.loss.get("_target_")),
        batch_size=positive_count(cfg.data.batch_size, "data.batch_size"),
        retain_per_forget=positive_count(cfg.data.get("retain_per_forget", 1), "data.retain_per_forget"),
        devices=devices_per_node(trainer),
        num_nodes=positive_count(trainer.get("num_nodes", 1) or 1, "trainer.num_nodes"),
        fsdp=target.endswith(FSDP),
        precision=str(trainer.get("precision", "32-true")),
        accelerator=str(trainer.get("accelerator", "auto")),
        mixed_precision=parallel.get("mixed_precision"),
        activation_checkpointing=checkpointing,
    )


def devices_per_node(trainer: DictConfig) -> int:
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


def architecture_values(model_cfg: DictConfig) -> dict:
    """The Hugging Face config values of the model a run unlearns, without its weights (memory/shape.py's
    docstring: where they come from)."""
    source = str(model_cfg.get("source") or "")
    local = Path(source).expanduser() / "config.json"
    if source and local.is_file():
        return json.loads(local.read_text())
    if source == "tiny":
        tiny = model_cfg.tiny  # models/tiny.py: OlmoConfig with these values, untied, no biases
        return {
            "model_type": "olmo",
            "vocab_size": tiny.vocab_size,
            "hidden_size": tiny.hidden_size,
            "intermediate_size": tiny.intermediate_size,
            "num_hidden_layers": tiny.num_layers,
            "num_attention_heads": tiny.num_heads,
            "num_key_value_heads": tiny.num_heads,
            "tie_word_embeddings": False,
        }
    config = model_cfg.get("config")
    if not config:
        raise SimuError(
            f"memory plan: the architecture of model.source={source!r} is unknown offline: give its config "
            f"values as model.config ({', '.join(REQUIRED)}, num_key_value_heads, tie_word_embeddings)"
        )
    return {k: v for k, v in config.items()}


def composed(conf_dir: Path, overrides: list[str]) -> DictConfig:
    """The config run.py composes for `overrides` over `conf_dir` (Hydra's runtime set, so that
    ${hydra:...} resolves), for a command that composes its own (python -m simu_lightning.memory)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from simu_lightning.pipeline import cli

    if not (conf_dir / "config.yaml").is_file():
        raise SimuError(f"no Hydra config at {conf_dir}: run from a checkout of simu-lightning")
    if problem := cli.unknown_group_option(overrides, conf_dir) or cli.unquoted_condition(overrides):
        raise SimuError(problem)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise SimuError(str(err).strip().splitlines()[0]) from None
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
