"""A model's architecture without its weights: the Hugging Face config values that decide every parameter's
shape and every activation's size, read offline (the hub is unreachable where a run is planned), and a
skeleton of the model on the meta device so that the method's own rules pick the trainable parameters.

Where the values come from, first found: a local folder `model.source` (its config.json), the tiny model's
`model.tiny` (models/tiny.py builds an OLMo config from it), or `model.config` in conf/model/*.yaml. A
benchmark's ready-made target (`model.targets`) is planned as its base: it is a fine-tuned copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from simu_lightning.utils.errors import SimuError

# The decoder families modelled: a Llama-style layer (pre-norm attention with rotary positions, gated MLP).
# OLMo's norms are LayerNorms without weights; Qwen2's q/k/v carry biases.
FAMILIES = ("llama", "mistral", "qwen2", "olmo")
REQUIRED = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q, k, v and o biases (Llama, OLMo); Qwen2 has q/k/v biases always
    mlp_bias: bool = False
    attn_implementation: str = "sdpa"  # what from_pretrained picks by default in transformers 5

    @property
    def norm(self) -> str:
        """ "layer" (OLMo: LayerNorm without weights, statistics in float32) or "rms" (RMSNorm with a weight)."""
        return "layer" if self.model_type == "olmo" else "rms"

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def of(cls, config: dict) -> ModelShape:
        """From a Hugging Face config's values (config.json, or `model.config`)."""
        missing = [k for k in REQUIRED if config.get(k) is None]
        if missing:
            raise SimuError(f"memory plan: the model's config lacks {', '.join(missing)} (model.config.<name>)")
        if config["model_type"] not in FAMILIES:
            raise SimuError(
                f"memory plan: model_type {config['model_type']!r} is not modelled (one of {', '.join(FAMILIES)})"
            )
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        if heads % kv:
            raise SimuError(f"memory plan: {heads} attention heads are not a multiple of {kv} key/value heads")
        return cls(
            model_type=config["model_type"],
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            attn_implementation=str(config.get("attn_implementation") or config.get("_attn_implementation") or "sdpa"),
        )

    def layer_parameters(self, prefix: str) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of one decoder layer's parameters, as Hugging Face names them."""
        h, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv_bias = self.attention_bias or self.model_type == "qwen2"
        o_bias = self.attention_bias and self.model_type != "qwen2"
        shapes = []
        for name, out, inp, bias in (
            ("self_attn.q_proj", q, h, qkv_bias),
            ("self_attn.k_proj", kv, h, qkv_bias),
            ("self_attn.v_proj", kv, h, qkv_bias),
            ("self_attn.o_proj", h, q, o_bias),
            ("mlp.gate_proj", f, h, self.mlp_bias),
            ("mlp.up_proj", f, h, self.mlp_bias),
            ("mlp.down_proj", h, f, self.mlp_bias),
        ):
            shapes.append((f"{prefix}.{name}.weight", (out, inp)))
            if bias:
                shapes.append((f"{prefix}.{name}.bias", (out,)))
        if self.norm == "rms":
            shapes += [(f"{prefix}.input_layernorm.weight", (h,)), (f"{prefix}.post_attention_layernorm.weight", (h,))]
        return shapes

    def root_parameters(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of the parameters outside the decoder layers: embeddings, final norm, output head
        (none of its own when tied to the embeddings)."""
        shapes = [("model.embed_tokens.weight", (self.vocab_size, self.hidden_size))]
        if self.norm == "rms":
            shapes.append(("model.norm.weight", (self.hidden_size,)))
        if not self.tie_word_embeddings:
            shapes.append(("lm_head.weight", (self.vocab_size, self.hidden_size)))
        return shapes

    def parameters(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every parameter once (a tied output head is the embeddings' parameter)."""
        layers = [p for i in range(self.num_layers) for p in self.layer_parameters(f"model.layers.{i}")]
        return self.root_parameters() + layers


def skeleton(shape: ModelShape, dtype: torch.dtype) -> nn.Module:
    """The model's module tree with parameters on the meta device (no memory), for the code that selects
    parameters by module (Method.trainable_parameter_names, models/heads.py)."""
    root = nn.Module()
    root.config = _SkeletonConfig(shape)
    for name, dims in shape.parameters():
        *path, leaf = name.split(".")
        module = root
        for i, part in enumerate(path):
            if part not in module._modules:
                child = nn.ModuleList() if path[i + 1 : i + 2] and path[i + 1].isdigit() else _module(path[i:])
                module.add_module(part, child)
            module = module._modules[part]
        if isinstance(module, nn.ModuleList) or leaf in module._parameters:
            raise AssertionError(f"skeleton: {name} placed twice")
        module.register_parameter(leaf, nn.Parameter(torch.empty(dims, dtype=dtype, device="meta")))
    return root


def _module(path: list[str]) -> nn.Module:
    """A projection is an nn.Linear (out x in), as models/heads.py tells it from GPT-2's Conv1D."""
    if path[-1].endswith("_proj") and len(path) == 1:
        linear = nn.Linear(1, 1, bias=False, device="meta")
        del linear.weight  # registered from the shape list
        return linear
    return nn.Module()


class _SkeletonConfig:
    """What the parameter-selecting code reads of `model.config`."""

    def __init__(self, shape: ModelShape):
        self.model_type = shape.model_type
        self.num_attention_heads = shape.num_heads
        self.num_key_value_heads = shape.num_kv_heads
        self.tie_word_embeddings = shape.tie_word_embeddings
