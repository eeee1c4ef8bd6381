"""Will it fit? What an unlearning run holds per GPU, planned from the composed config before any weight
is loaded, so that a run that cannot fit refuses at start-up in one line (`check_fits`).

Counted per process, in bytes:
1. weights, as loaded (model.dtype; bf16 under a *-true 16-bit precision), sharded under FSDP;
2. gradients of the trainable parameters, in the parameters' dtype, sharded likewise;
3. optimiser state: the optimiser's moments per trainable parameter (float32 in the masked optimisers,
   with a float32 master copy of a bf16 parameter; like the parameter in torch's own); a masked down
   projection (or, under a head mask, q/k/v/o) with compact state keeps them for its critical columns
   only. How many neurons are critical is known only after the attribution, so the plan assumes a share
   (`critical_share`) and reports the worst case (every neuron critical) beside it;
4. the frozen copy of the target that some losses need (NPO, RMU, ...): its weights;
5. activations: the peak of the step's passes (activations.py) or of the optimiser's update;
6. under FSDP2 the parameters all-gathered for the layers in flight (two decoder layers, and the root's
   embeddings and head, which stay gathered from the forward to the backward) and the unsharded gradients
   of the unit being reduced with their float32 reduce-scatter buffer; under DDP its gradient buckets;
7. on a GPU, the CUDA context and the allocator's reserve (CUDA_CONTEXT).

The parts are summed: a first-order step runs its forward while the last step's gradients are still held
(UnlearningModule zeroes them just before the backward), so its peak is that sum; a second-order step
frees them before the GNB pass, so its total is high by up to the gradients.

FSDP2 pads a parameter's dim 0 to a multiple of the shard count: every rank holds ceil(dim0 / shards)
rows, the figure used for every sharded tensor. Shards are the devices of one node (HSDP replicates across
nodes, distributed.parallelize). The optimisers' 0-d step counters stay on the CPU (torch's AdamW unless
capturable, Sophia always) and are left out.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from simu_lightning.memory.activations import (
    Batches,
    Numerics,
    Pass,
    Trainable,
    hessian_logits,
    loss_logits,
    pass_peak,
)
from simu_lightning.memory.shape import ModelShape, architecture_config, skeleton
from simu_lightning.models.architecture import attention_projections, architecture_of, down_projections
from simu_lightning.models.heads import head_masks
from simu_lightning.optim.compact import CompactState
from simu_lightning.unlearning.methods import Method
from simu_lightning.utils.errors import SimuError

GiB = 2**30
CUDA_CONTEXT = GiB  # the CUDA context, cuBLAS workspaces and what the caching allocator keeps in reserve
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
PARTS = {  # the plan's byte counts, in the order they are printed, and their labels
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_state": "optimiser state",
    "frozen_copy": "frozen copy",
    "activations": "activations",
    "parallel_buffers": "FSDP / DDP buffers",
    "cuda_context": "CUDA context",
}


def resolve_precision(precision, device: str) -> str:
    """trainer.precision as Lightning names it; "auto": bf16-mixed on a GPU, 32-true on a CPU."""
    value = str(precision)
    if value == "auto":
        return "bf16-mixed" if device == "cuda" else "32-true"
    if value not in PRECISIONS:
        raise SimuError(f"trainer.precision={value!r} must be auto or one of {', '.join(PRECISIONS)}")
    return PRECISIONS[value]


def resolve_activation_checkpointing(
    cfg: DictConfig,
    *,
    length: int | None = None,
    device_bytes: int | None = None,
    critical_share: float = 0.1,
) -> bool:
    """parallel.activation_checkpointing; "auto": on when the plan without it does not fit `device_bytes`
    (never on a CPU, where no device size is given)."""
    setup = Setup.of(cfg)
    if setup.activation_checkpointing != "auto":
        return setup.activation_checkpointing
    if device_bytes is None:
        return False
    unchecked = dataclasses.replace(setup, activation_checkpointing=False)
    return not plan_setup(unchecked, length, "cuda", device_bytes, critical_share).fits(device_bytes)


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
    """Devices per node (trainer.devices: a count, a list or "auto", as pipeline/cli.py counts them)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    from simu_lightning.pipeline.cli import process_count  # (imports the pipeline: only when needed)

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


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int
    attention: int  # of the trainable: the attention projections'
    down_proj: int  # of the trainable: the down projections'


@dataclass(frozen=True)
class PlanSettings:
    """What the plan assumed."""

    model: str
    method: str
    optimizer: str
    loss: str
    device: str
    precision: str
    compute: str  # fp32, autocast or bf16 (Numerics.mode)
    activation_checkpointing: bool
    attention: str
    length: int
    forget_rows: int  # per process
    retain_rows: int  # per process
    processes: int
    shards: int
    mixed_precision: str | None
    critical_share: float
    compact_state: bool


@dataclass(frozen=True)
class MemoryPlan:
    settings: PlanSettings
    parameters: ParameterCounts
    weights: int
    gradients: int
    optimizer_state: int
    frozen_copy: int
    activations: int
    parallel_buffers: int
    cuda_context: int
    optimizer_state_worst: int  # every neuron (and head) critical
    hessian_pass: Pass | None  # Sophia's GNB estimate
    loss_pass: Pass
    update: int  # the optimiser step's temporaries
    setup: Setup = field(compare=False, repr=False)

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in PARTS)

    def fits(self, device_bytes: int) -> bool:
        return self.total <= device_bytes

    def to_dict(self) -> dict:
        """The plan as JSON-ready values: every byte and parameter count an integer; `bytes` sums to `total`."""
        passes = {"loss": dataclasses.asdict(self.loss_pass), "update": self.update}
        if self.hessian_pass is not None:
            passes["hessian_estimate"] = dataclasses.asdict(self.hessian_pass)
        return {
            "total": self.total,
            "bytes": {name: getattr(self, name) for name in PARTS},
            "optimizer_state_worst_case": self.optimizer_state_worst,
            "parameters": dataclasses.asdict(self.parameters),
            "settings": dataclasses.asdict(self.settings),
            "passes": passes,
        }

    def lines(self, device_bytes: int | None = None) -> list[str]:
        """The plan as a table, with whether it fits `device_bytes`."""
        s, p = self.settings, self.parameters
        rows = f"{s.forget_rows} forget + {s.retain_rows} retain rows x {s.length} tokens per process"
        processes = f"{s.processes} process{'es' if s.processes > 1 else ''}"
        sharding = f"FSDP over {s.shards}" if s.shards > 1 else "unsharded"
        lines = [
            f"memory plan per GPU: model {s.model}, method {s.method} ({s.optimizer}), loss {s.loss}",
            f"  {s.device}, precision {s.precision} (computing {s.compute}), activation checkpointing "
            f"{'on' if s.activation_checkpointing else 'off'}, attention {s.attention}",
            f"  {rows}, {processes}, {sharding}, critical share {s.critical_share:g} (assumed), "
            f"compact state {'on' if s.compact_state else 'off'}",
            f"  parameters {p.total:,}, trainable {p.trainable:,} "
            f"(attention {p.attention:,}, down projections {p.down_proj:,})",
        ]
        for name, label in PARTS.items():
            note = ""
            if name == "optimizer_state":
                note = f"  (every neuron critical: {gib(self.optimizer_state_worst)})"
            if name == "activations":
                note = f"  ({self.peak_phase()})"
            lines.append(f"  {label:<20}{gib(getattr(self, name)):>12}{note}")
        verdict = ""
        if device_bytes is not None:
            verdict = f" of {gib(device_bytes)}: {'fits' if self.fits(device_bytes) else 'does NOT fit'}"
        lines.append(f"  {'total':<20}{gib(self.total):>12}{verdict}")
        return lines

    def peak_phase(self) -> str:
        phases = {"loss pass": self.loss_pass.total, "optimiser update": self.update}
        if self.hessian_pass is not None:
            phases["GNB pass"] = self.hessian_pass.total
        return "peak of " + ", ".join(f"{name} {gib(value)}" for name, value in phases.items())

    def __str__(self) -> str:
        return "\n".join(self.lines())


def gib(value: int) -> str:
    return f"{value / GiB:.2f} GiB"


def critical_count(neurons: int, share: float) -> int:
    """Critical neurons (or heads) of a layer under the assumed share: at least one (the layer's largest
    attribution is always at least t times itself)."""
    return min(neurons, max(1, math.ceil(share * neurons - 1e-9)))


def plan_memory(
    cfg: DictConfig,
    *,
    length: int | None = None,
    device_bytes: int | None = None,
    critical_share: float = 0.1,
    device: str | None = None,
) -> MemoryPlan:
    """The memory plan of the run `cfg` composes, for rows of `length` tokens (the longest encoded row;
    None: model.max_length). A plan for a GPU (`device_bytes` given, or `device="cuda"`) resolves
    precision "auto" to bf16-mixed and counts the CUDA context; activation checkpointing "auto" is on
    when the plan without it does not fit `device_bytes`."""
    if not 0 < critical_share <= 1:
        raise SimuError(f"memory plan: the critical share must be in (0, 1], got {critical_share}")
    setup = Setup.of(cfg)
    device = device or ("cuda" if device_bytes is not None else _run_device(setup.accelerator))
    return plan_setup(setup, length, device, device_bytes, critical_share)


def _run_device(accelerator: str) -> str:
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def plan_setup(
    setup: Setup, length: int | None, device: str, device_bytes: int | None, critical_share: float
) -> MemoryPlan:
    """The plan of `setup` (see `plan_memory`)."""
    checkpointing = setup.activation_checkpointing
    if checkpointing == "auto":
        unchecked = dataclasses.replace(setup, activation_checkpointing=False)
        off = plan_setup(unchecked, length, device, device_bytes, critical_share)
        if device_bytes is None or off.fits(device_bytes):
            return off
        checkpointing = True
    length = setup.max_length if length is None else _positive(length, "length")
    precision = resolve_precision(setup.precision, device)
    if setup.mixed_precision == "bf16" and not setup.fsdp and precision == "32-true":
        precision = "bf16-mixed"  # on one device parallel.mixed_precision asks for it (pipeline/building.py)
    model = Model.of(setup, precision, critical_share)
    weights = model.sharded(model.names, setup.shards)
    frozen = weights if _loss_class(setup.loss).needs_frozen_target else 0
    numerics = model.numerics(setup, precision)
    forget = math.ceil(setup.batch_size / setup.processes)
    batches = Batches(forget, forget * setup.retain_per_forget, length)
    hessian, loss = model.passes(setup, numerics, batches, bool(checkpointing))
    update = model.update_bytes(setup, device)
    settings = PlanSettings(
        model=setup.name,
        method=model.method.name,
        optimizer=model.optimizer.__name__,
        loss=setup.loss.rsplit(".", 1)[-1],
        device=device,
        precision=precision,
        compute=numerics.mode,
        activation_checkpointing=bool(checkpointing),
        attention=setup.shape.attn_implementation,
        length=length,
        forget_rows=batches.forget,
        retain_rows=batches.retain,
        processes=setup.processes,
        shards=setup.shards,
        mixed_precision=setup.mixed_precision if setup.fsdp else None,
        critical_share=critical_share,
        compact_state=model.compact,
    )
    return MemoryPlan(
        settings=settings,
        parameters=model.counts(),
        weights=weights,
        gradients=model.sharded(model.trainable, setup.shards),
        optimizer_state=model.state_bytes(setup, critical_share),
        frozen_copy=frozen,
        activations=max(loss.total, hessian.total if hessian else 0, update),
        parallel_buffers=model.parallel_bytes(setup, numerics),
        cuda_context=CUDA_CONTEXT if device == "cuda" else 0,
        optimizer_state_worst=model.state_bytes(setup, 1.0),
        hessian_pass=hessian,
        loss_pass=loss,
        update=update,
        setup=setup,
    )


def _loss_class(target: str):
    try:
        return get_class(target)
    except Exception:
        raise SimuError(f"loss._target_={target!r} is not a class that can be imported") from None


def _method(node: dict) -> Method:
    try:
        method = instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, SimuError):
            raise err.__cause__ from None
        raise SimuError(f"method: {str(err).splitlines()[0]}") from None
    if not isinstance(method, Method) or not isinstance(method.optimizer, partial):
        raise SimuError("memory plan: method must build a simu_lightning Method with a partial optimizer")
    return method


@dataclass(frozen=True)
class Model:
    """The model's parameters as the method uses them: which train, with which optimiser and masks."""

    shape: ModelShape
    shapes: dict[str, tuple[int, ...]]
    element: int  # bytes of a parameter (and of its gradient)
    method: Method
    optimizer: type
    moments: tuple[str, ...]
    compact: bool
    names: tuple[str, ...]
    trainable: tuple[str, ...]
    attention: frozenset[str]
    down: frozenset[str]
    module: torch.nn.Module = field(compare=False, repr=False)

    @classmethod
    def of(cls, setup: Setup, precision: str, critical_share: float) -> Model:
        element = 2 if precision in HALF_TRUE else DTYPE_BYTES[setup.dtype]
        meta = skeleton(setup.shape, {4: torch.float32, 2: torch.bfloat16}[element])
        arch = architecture_of(meta)
        method = _method(setup.method)
        trainable = method.trainable_parameter_names(meta, arch)
        optimizer = method.optimizer.func
        names = tuple(name for name, _ in meta.named_parameters())
        attention = {
            f"{m}.{n}" for m, proj in attention_projections(meta, arch).items() for n, _ in proj.named_parameters()
        }
        down = {f"{m}.{n}" for m, proj in down_projections(meta, arch).items() for n, _ in proj.named_parameters()}
        return cls(
            shape=setup.shape,
            shapes={name: tuple(p.shape) for name, p in meta.named_parameters()},
            element=element,
            method=method,
            optimizer=optimizer,
            moments=_moments(optimizer, method.optimizer.keywords),
            compact=_compact(optimizer, method.optimizer.keywords),
            names=names,
            trainable=tuple(n for n in names if n in trainable),
            attention=frozenset(attention),
            down=frozenset(down),
            module=meta,
        )

    def counts(self) -> ParameterCounts:
        def count(names) -> int:
            return sum(math.prod(self.shapes[n]) for n in names)

        return ParameterCounts(
            total=count(self.names),
            trainable=count(self.trainable),
            attention=count(n for n in self.trainable if n in self.attention),
            down_proj=count(n for n in self.trainable if n in self.down),
        )

    def sharded(self, names, shards: int) -> int:
        """Bytes per rank of these parameters (or of tensors shaped like them) under FSDP2."""
        return sum(sharded_bytes(self.shapes[n], self.element, shards) for n in names)

    def state_shapes(self, setup: Setup, share: float) -> dict[str, tuple[int, ...]]:
        """The shape of each trainable parameter's optimiser state: the parameter's, or its critical
        columns (rows) alone where the state is compact (optim/compact.py)."""
        shapes = {name: self.shapes[name] for name in self.trainable}
        if not self.compact:
            return shapes
        for name, (dim, kept) in self.mask_layout(share).items():
            if name in shapes and not (setup.fsdp and dim == 0):  # a sharded neuron dimension keeps full state
                shape = list(shapes[name])
                shape[dim] = kept
                shapes[name] = tuple(shape)
        return shapes

    def mask_layout(self, share: float) -> dict[str, tuple[int, int]]:
        """Parameter name -> (the dim its one-row or one-column mask varies along, entries kept), for the
        masks the method sets: the down projections' critical neurons, q/k/v/o's critical heads."""
        arch = architecture_of(self.module)
        masks = {}
        if self.method.needs_attribution:
            neurons = self.shape.intermediate_size
            for module in down_projections(self.module, arch):
                masks[f"{module}.weight"] = (arch.neuron_dim, critical_count(neurons, share))
        if self.method.critical_head_mask:
            heads = torch.zeros(self.shape.num_heads, dtype=torch.bool)
            heads[: critical_count(self.shape.num_heads, share)] = True
            o_names = [f"{m}.{arch.o_proj}" for m in _layer_names(self.module, arch)]
            for name, mask in head_masks(self.module, arch, dict.fromkeys(o_names, heads)).items():
                varying = [d for d in range(mask.dim()) if mask.shape[d] != 1]
                if mask.dim() == 2 and len(varying) == 1:
                    masks[name] = (varying[0], int(mask.sum()))
        return masks

    def state_bytes(self, setup: Setup, share: float) -> int:
        """The masked optimisers keep their moments in float32 whatever the parameters' dtype, and for a
        bf16 / fp16 parameter an float32 master copy in the same layout (optim/master.py); torch's own
        optimisers keep moments like the parameter."""
        shapes = self.state_shapes(setup, share)
        ours = issubclass(self.optimizer, CompactState)
        tensors = len(self.moments) + int(ours and self.element < 4)
        element = 4 if ours else self.element
        return tensors * sum(sharded_bytes(s, element, setup.shards) for s in shapes.values())

    def numerics(self, setup: Setup, precision: str) -> Numerics:
        if self.element == 2 or (setup.fsdp and setup.mixed_precision == "bf16"):
            return Numerics("bf16")
        return Numerics("autocast" if precision in MIXED else "fp32")

    def trainable_flags(self) -> Trainable:
        trains = set(self.trainable)
        layer = "model.layers.0"

        def of(*modules: str) -> int:
            return sum(f"{layer}.{m}.weight" in trains for m in modules)

        head = "model.embed_tokens.weight" if self.shape.tie_word_embeddings else "lm_head.weight"
        return Trainable(
            qkv=of("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            o=bool(of("self_attn.o_proj")),
            gate_up=of("mlp.gate_proj", "mlp.up_proj"),
            down=bool(of("mlp.down_proj")),
            norms=bool(of("input_layernorm")),
            final_norm="model.norm.weight" in trains,
            lm_head=head in trains,
        )

    def linear_weights(self) -> tuple[int, int, int]:
        """Elements of the matmul weights that autocast casts: (trainable, frozen, frozen in one layer);
        the output head's is the embeddings' when tied."""
        trains = set(self.trainable)
        head = "model.embed_tokens.weight" if self.shape.tie_word_embeddings else "lm_head.weight"
        linear = [n for n in self.names if n.endswith("_proj.weight")] + [head]
        trained = sum(math.prod(self.shapes[n]) for n in linear if n in trains)
        frozen = sum(math.prod(self.shapes[n]) for n in linear if n not in trains)
        layer = sum(math.prod(self.shapes[n]) for n in linear if n.startswith("model.layers.0.") and n not in trains)
        return trained, frozen, layer

    def weight_casts(self, numerics: Numerics, forwards: int, checkpointing: bool) -> int:
        """Autocast's bf16 copies of the weights that the backward needs: a trainable weight's copy is
        cached for the whole step, a frozen one's is made (and kept) by every forward with gradients;
        with checkpointing only one layer's at a time (and the head's, which is not checkpointed)."""
        if numerics.mode != "autocast":
            return 0
        trained, frozen, layer = self.linear_weights()
        if checkpointing:
            head = 0 if self.trainable_flags().lm_head else self.shape.vocab_size * self.shape.hidden_size
            frozen = layer + head
        return 2 * (trained + forwards * frozen)

    def passes(
        self, setup: Setup, numerics: Numerics, batches: Batches, checkpointing: bool
    ) -> tuple[Pass | None, Pass]:
        """The GNB pass (second-order optimisers) and the loss pass."""
        loss_class = _loss_class(setup.loss)
        flags = self.trainable_flags()
        both = [batches.forget_tokens, batches.retain_tokens]
        hessian = None
        if hasattr(self.optimizer, "update_hessian"):
            hessian = pass_peak(
                self.shape,
                numerics,
                flags,
                batches,
                both,
                hessian_logits(self.shape, numerics, batches, both),
                checkpointing,
                self.weight_casts(numerics, len(both), checkpointing),
            )
        tokens = both + ([batches.forget_tokens] if getattr(loss_class, "needs_alternates", False) else [])
        frozen = batches.forget_tokens if loss_class.needs_frozen_target else 0
        loss = pass_peak(
            self.shape,
            numerics,
            flags,
            batches,
            tokens,
            loss_logits(self.shape, numerics, tokens, frozen),
            checkpointing,
            self.weight_casts(numerics, len(tokens), checkpointing),
        )
        return hessian, loss

    def update_bytes(self, setup: Setup, device: str) -> int:
        """The optimiser step's temporaries: torch's AdamW on a GPU runs for-each over every tensor (one
        state-sized list of square roots); Sophia's eager update a few tensors the size of the largest."""
        local = [sharded_bytes(self.shapes[n], self.element, setup.shards) for n in self.trainable]
        if not local:
            return 0
        if issubclass(self.optimizer, torch.optim.Adam | torch.optim.AdamW) and device == "cuda":
            return sum(local)
        return 3 * max(local)

    def parallel_bytes(self, setup: Setup, numerics: Numerics) -> int:
        """FSDP2: two decoder layers' parameters all-gathered, the root's (embeddings, head, final norm)
        gathered from the forward to the backward, and the unsharded gradients of the largest unit being
        reduced with their float32 reduce-scatter input. DDP: its gradient buckets."""
        if not setup.fsdp:
            return self.sharded(self.trainable, 1) if setup.processes > 1 else 0
        gathered = 2 if setup.mixed_precision == "bf16" else self.element
        layer = [n for n in self.names if n.startswith("model.layers.0.")]
        root = [n for n in self.names if not n.startswith("model.layers.")]

        def elements(names) -> int:
            return sum(math.prod(self.shapes[n]) for n in names)

        trains = set(self.trainable)
        reduced = max(elements(n for n in layer if n in trains), elements(n for n in root if n in trains))
        return (2 * elements(layer) + elements(root)) * gathered + reduced * (gathered + 4)


def _layer_names(model, arch) -> list[str]:
    return [f"{arch.layers}.{i}" for i in range(len(model.get_submodule(arch.layers)))]


def sharded_bytes(shape: tuple[int, ...], element: int, shards: int) -> int:
    """Bytes one rank holds of a tensor FSDP2 shards along dim 0 (padded to a multiple of `shards`)."""
    rows = math.ceil(shape[0] / shards)
    return rows * math.prod(shape[1:]) * element


def _moments(optimizer: type, keywords: dict) -> tuple[str, ...]:
    """The state tensors shaped like a parameter that `optimizer` keeps."""
    if issubclass(optimizer, CompactState):
        return tuple(optimizer.MOMENTS)
    if issubclass(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if keywords.get("amsgrad") else ())
    if issubclass(optimizer, torch.optim.SGD):
        return ("momentum_buffer",) if keywords.get("momentum") else ()
    raise SimuError(
        f"memory plan: optimiser {optimizer.__name__} is not modelled (Sophia, MaskedAdamW, Adam, AdamW, SGD)"
    )


def _compact(optimizer: type, keywords: dict) -> bool:
    if not issubclass(optimizer, CompactState):
        return False
    default = inspect.signature(optimizer).parameters.get("compact_state")
    return bool(keywords.get("compact_state", default.default if default else False))


def check_fits(plan: MemoryPlan, device_bytes: int, where: str = "the GPU") -> None:
    """Refuse, in one line, a plan that does not fit `device_bytes`, naming the settings (and values) that
    would make it fit, each checked by planning again."""
    if plan.fits(device_bytes):
        return
    parts = ", ".join(
        f"{label} {getattr(plan, name) / GiB:.1f}" for name, label in PARTS.items() if getattr(plan, name)
    )
    fixes = alternatives(plan, device_bytes)
    advice = (
        "fits with " + ", or ".join(fixes)
        if fixes
        else "no change tried fits (activation checkpointing, bf16, FSDP over up to 8 GPUs, a smaller batch)"
    )
    raise SimuError(
        f"memory plan: {plan.total / GiB:.1f} GiB per GPU > {device_bytes / GiB:.1f} GiB on {where} "
        f"({parts} GiB); {advice}"
    )


def alternatives(plan: MemoryPlan, device_bytes: int) -> list[str]:
    """The changes of settings with which the plan fits `device_bytes`: each alone, or, when none does,
    each with activation checkpointing. Devices and batch size: the fewest devices, the largest batch."""
    found = _fixes(plan, device_bytes, {})
    if not found and not plan.settings.activation_checkpointing:
        on = {"activation_checkpointing": True}
        found = [f"parallel.activation_checkpointing=true with {fix}" for fix in _fixes(plan, device_bytes, on)]
    return found


def _fixes(plan: MemoryPlan, device_bytes: int, base: dict) -> list[str]:
    setup, s = plan.setup, plan.settings

    def fits(**changes) -> bool:
        changed = dataclasses.replace(setup, **base, **changes)
        return plan_setup(changed, s.length, s.device, device_bytes, s.critical_share).fits(device_bytes)

    options = []
    if not base and not s.activation_checkpointing:
        options.append(("parallel.activation_checkpointing=true", {"activation_checkpointing": True}))
    if s.precision == "32-true" and s.device == "cuda":
        options.append(("trainer.precision=bf16-mixed", {"precision": "bf16-mixed"}))
    if setup.fsdp and setup.mixed_precision is None and s.device == "cuda":
        options.append(("parallel.mixed_precision=bf16", {"mixed_precision": "bf16"}))
    if not s.compact_state and issubclass(get_class(setup.method["optimizer"]["_target_"]), CompactState):
        optimizer = {**setup.method["optimizer"], "compact_state": True}
        options.append(("optim.compact_state=true", {"method": {**setup.method, "optimizer": optimizer}}))
    found = [label for label, changes in options if fits(**changes)]
    for devices in (2, 4, 8):
        if devices > setup.devices and setup.batch_size % (devices * setup.num_nodes) == 0:
            if fits(devices=devices, fsdp=True):
                found.append(f"trainer.devices={devices}" + ("" if setup.fsdp else " with trainer=fsdp"))
                break
    batch = setup.batch_size // 2
    while batch >= setup.processes:
        if batch % setup.processes == 0 and fits(batch_size=batch):
            found.append(f"data.batch_size={batch}")
            break
        batch //= 2
    return found


def longest_length(plan: MemoryPlan, device_bytes: int) -> int:
    """The longest rows (up to model.max_length, or the plan's length if longer) with which the plan's
    settings fit; 0 when none do."""
    s = plan.settings

    def fits(length: int) -> bool:
        return plan_setup(plan.setup, length, s.device, device_bytes, s.critical_share).fits(device_bytes)

    low, high = 0, max(s.length, plan.setup.max_length)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
