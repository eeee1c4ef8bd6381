"""The model's parameters as the method uses them: which train, with which optimiser and masks, and what
each part holds per rank (weights, gradients, optimiser state, FSDP2 buffers; the passes' activations
through activations.py)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from simu_lightning.memory.activations import (
    Batches,
    Numerics,
    Pass,
    Trainable,
    hessian_logits,
    loss_logits,
    pass_peak,
)
from simu_lightning.memory.shape import ModelShape, skeleton
from simu_lightning.models.architecture import attention_projections, architecture_of, down_projections
from simu_lightning.models.heads import head_masks
from simu_lightning.optim.compact import CompactState
from simu_lightning.optim.ada_zo import AdaZO
from simu_lightning.optim.hybrid import FirstZerothHybrid
from simu_lightning.optim.sign_sgd import SignSGD
from simu_lightning.optim.zeroth_order import ZerothOrder
from simu_lightning.unlearning.methods import Method
from simu_lightning.utils.errors import SimuError
from simu_lightning.memory.setup import DTYPE_BYTES, HALF_TRUE, MIXED, Setup


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int
    attention: int  # of the trainable: the attention projections'
    down_proj: int  # of the trainable: the down projections'


def critical_count(neurons: int, share: float) -> int:
    """Critical neurons (or heads) of a layer under the assumed share: at least one (the layer's largest
    attribution is always at least t times itself)."""
    return min(neurons, max(1, math.ceil(share * neurons - 1e-9)))


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
        state-sized list of square roots); Sophia's eager update a few tensors the size of the largest; the
        zeroth-order step three copies of every updated parameter."""
        local = [sharded_bytes(self.shapes[n], self.element, setup.shards) for n in self.trainable]
        if not local:
            return 0
        if issubclass(self.optimizer, torch.optim.Adam | torch.optim.AdamW) and device == "cuda":
            return sum(local)
        if issubclass(self.optimizer, ZerothOrder | FirstZerothHybrid):  # the weights' copy, the estimate, a direction
            return 3 * sum(local)
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
    if issubclass(optimizer, SignSGD):
        return ("momentum",)
    if issubclass(optimizer, AdaZO):
        return ("m", "v")
    if issubclass(optimizer, ZerothOrder):
        return ()  # (its step's copies are update_bytes)
    if issubclass(optimizer, FirstZerothHybrid):  # both halves' moments, planned full size (AdamW's may be compact)
        return ("exp_avg", "exp_avg_sq", "m", "v")
    raise SimuError(
        f"memory plan: optimiser {optimizer.__name__} is not modelled "
        "(Sophia, MaskedAdamW, Adam, AdamW, SGD, SignSGD, ZerothOrder, AdaZO, FirstZerothHybrid)"
    )


def _compact(optimizer: type, keywords: dict) -> bool:
    if not issubclass(optimizer, CompactState):
        return False
    default = inspect.signature(optimizer).parameters.get("compact_state")
    return bool(keywords.get("compact_state", default.default if default else False))
