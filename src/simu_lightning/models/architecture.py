"""Where each architecture keeps its MLP down projection and its attention projections.

A down-projection neuron is one input feature of the down projection: a column of an `nn.Linear`
weight (out x in), a row of GPT-2's transposed `Conv1D` weight (in x out); `neuron_dim` says which.
The same neuron is an output feature of the layer's up projections (`up_proj`: gate and up, or the
one input projection), whose weight holds it along the other dimension (a planted target writes both).

The last of `attention` is the output projection (o_proj), which reads the heads' outputs; the others write
the queries, keys and values, laid out as `qkv` says (`heads.py`: where each head's entries sit).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from simu_lightning.utils.errors import SimuError


@dataclass(frozen=True)
class Architecture:
    layers: str  # the ModuleList of decoder layers, from the model's root
    down_proj: str  # within a layer
    attention: tuple[str, ...]  # within a layer: the attention projections SIMU trains
    neuron_dim: int = 1  # the weight dimension that indexes down-projection neurons
    up_proj: tuple[str, ...] = ()  # within a layer: the projections into the neurons (their rows / columns)
    qkv: str = "separate"  # q, k, v projections apart, or fused: "per_head" (GPT-NeoX), "stacked" (GPT-2)

    @property
    def o_proj(self) -> str:
        """Within a layer: the projection that reads the attention heads' outputs."""
        return self.attention[-1]


_LLAMA_LIKE = Architecture(
    "model.layers",
    "mlp.down_proj",
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    up_proj=("mlp.gate_proj", "mlp.up_proj"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gpt_neox": Architecture(
        "gpt_neox.layers",
        "mlp.dense_4h_to_h",
        ("attention.query_key_value", "attention.dense"),
        up_proj=("mlp.dense_h_to_4h",),
        qkv="per_head",
    ),
    "gpt2": Architecture(
        "transformer.h",
        "mlp.c_proj",
        ("attn.c_attn", "attn.c_proj"),
        neuron_dim=0,
        up_proj=("mlp.c_fc",),
        qkv="stacked",
    ),
}


def architecture_of(model: nn.Module, override: dict | None = None) -> Architecture:
    """The registered layout of `model`, or the one named in the config (`model.architecture`)."""
    if override:
        try:
            return Architecture(
                override["layers"],
                override["down_proj"],
                tuple(override["attention"]),
                int(override.get("neuron_dim", 1)),
                tuple(override.get("up_proj") or ()),
                str(override.get("qkv", "separate")),
            )
        except KeyError as missing:
            raise SimuError(
                f"model.architecture is missing {missing}; it needs layers, down_proj and attention"
            ) from None
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in ARCHITECTURES:
        raise SimuError(
            f"unknown architecture {model_type!r}: name its modules in the config, e.g. "
            "model.architecture='{layers: model.layers, down_proj: mlp.down_proj, "
            "attention: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj]}'"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module, arch: Architecture) -> nn.ModuleList:
    return model.get_submodule(arch.layers)


def down_projections(model: nn.Module, arch: Architecture) -> dict[str, nn.Module]:
    """Every layer's down projection, keyed by its full module name."""
    return {
        f"{arch.layers}.{i}.{arch.down_proj}": layer.get_submodule(arch.down_proj)
        for i, layer in enumerate(decoder_layers(model, arch))
    }


def attention_projections(model: nn.Module, arch: Architecture) -> dict[str, nn.Module]:
    return {
        f"{arch.layers}.{i}.{name}": layer.get_submodule(name)
        for i, layer in enumerate(decoder_layers(model, arch))
        for name in arch.attention
    }


def output_projections(model: nn.Module, arch: Architecture) -> dict[str, nn.Module]:
    """Every layer's attention output projection (o_proj), keyed by its full module name."""
    return {
        f"{arch.layers}.{i}.{arch.o_proj}": layer.get_submodule(arch.o_proj)
        for i, layer in enumerate(decoder_layers(model, arch))
    }


def up_projections(model: nn.Module, arch: Architecture) -> dict[str, list[nn.Module]]:
    """Every layer's projections into its MLP neurons, keyed by the layer's down projection's name."""
    return {
        f"{arch.layers}.{i}.{arch.down_proj}": [layer.get_submodule(name) for name in arch.up_proj]
        for i, layer in enumerate(decoder_layers(model, arch))
    }
