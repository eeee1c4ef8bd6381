"""Every registered architecture, built from a tiny config: where its neurons are, attribution on them,
and a neuron mask that holds on its down projection."""

import pytest
import torch
from transformers.pytorch_utils import Conv1D
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    OlmoConfig,
    Qwen2Config,
)

from simu_lightning.attribution.scores import attribute
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import ARCHITECTURES, architecture_of, attention_projections, down_projections
from simu_lightning.optim import Sophia
from simu_lightning.robustness.quantization import SCHEMES, projections, quantized_copy

D_FF, LAYERS = 48, 2
COMMON = dict(
    vocab_size=96,
    hidden_size=16,
    intermediate_size=D_FF,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    num_key_value_heads=1,  # grouped-query attention, as SmolLM2 and LLaMA-2-70B
    max_position_embeddings=64,
)
CONFIGS = {
    "llama": LlamaConfig(**COMMON),
    "mistral": MistralConfig(**COMMON),
    "qwen2": Qwen2Config(**COMMON),
    "olmo": OlmoConfig(**COMMON),
    "olmo2": Olmo2Config(**COMMON),
    "gpt_neox": GPTNeoXConfig(
        vocab_size=96,
        hidden_size=16,
        intermediate_size=D_FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        max_position_embeddings=64,
    ),
    "gpt2": GPT2Config(vocab_size=96, n_embd=16, n_inner=D_FF, n_layer=LAYERS, n_head=2, n_positions=64),
}


def test_every_registered_architecture_is_tested():
    assert set(CONFIGS) == set(ARCHITECTURES)


def neuron(weight: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return weight.select(dim, k)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_neurons_attribution_and_masks(model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type])
    arch = architecture_of(model)
    downs = down_projections(model, arch)
    assert len(downs) == LAYERS and len(attention_projections(model, arch)) == LAYERS * len(arch.attention)
    first = next(iter(downs.values()))
    assert first.weight.shape[arch.neuron_dim] == D_FF

    with torch.no_grad():
        neuron(first.weight, arch.neuron_dim, 5).zero_()  # neuron 5 of layer 0 no longer writes anything
    samples = [{"input_ids": torch.randint(0, 96, (n,)).tolist(), "target": 7} for n in (5, 9, 3)]
    scores = attribute(model, downs, samples, m=3, pad_token_id=0)
    name = next(iter(downs))
    assert scores[name].shape == (D_FF,) and scores[name][5].item() == 0.0 and scores[name].abs().sum() > 0

    shape = [1, 1]
    shape[arch.neuron_dim] = -1
    critical = torch.zeros(D_FF, dtype=torch.bool)
    critical[[1, 4]] = True
    before = first.weight.detach().clone()
    optimizer = Sophia([first.weight], lr=0.1, masks={first.weight: critical.view(shape)})
    first.weight.grad = torch.randn_like(first.weight)
    optimizer.update_hessian()
    optimizer.step(bs=4)
    changed = (first.weight != before).any(dim=1 - arch.neuron_dim)
    assert changed.tolist() == critical.tolist()


def test_an_unknown_architecture_says_how_to_name_its_modules():
    class Mystery(torch.nn.Module):
        config = type("Config", (), {"model_type": "mystery"})()

    with pytest.raises(SimuError, match="unknown architecture 'mystery'.*model.architecture="):
        architecture_of(Mystery())
    custom = architecture_of(Mystery(), {"layers": "blocks", "down_proj": "ff.out", "attention": ["att.qkv"]})
    assert custom.layers == "blocks" and custom.attention == ("att.qkv",) and custom.neuron_dim == 1


@pytest.mark.parametrize("model_type", [t for t in sorted(CONFIGS) if t in ("gpt2", "gpt_neox")])
def test_simu_freezes_down_projection_biases_which_belong_to_no_neuron(model_type):
    from simu_lightning.unlearning.methods import Method

    model = AutoModelForCausalLM.from_config(CONFIGS[model_type])
    arch = ARCHITECTURES[model_type]
    biases = {f"{name}.bias" for name, proj in down_projections(model, arch).items() if proj.bias is not None}
    assert len(biases) == LAYERS  # these architectures have one
    simu = Method("simu", optimizer=None, trainable="attention_and_down_proj", critical_neuron_mask=True)
    names = simu.trainable_parameter_names(model, arch)
    assert not biases & names
    assert {f"{name}.weight" for name in down_projections(model, arch)} <= names
    unmasked = Method("x", optimizer=None, trainable="attention_and_down_proj", critical_neuron_mask=False)
    assert biases <= unmasked.trainable_parameter_names(model, arch)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_the_shared_prefix_gives_the_plain_attribution(model_type, attention):
    """Samples of two QA pairs reading their pair's context cache (its later positions masked out), the
    scaled copies laid out as positions (the layers below the scaled one run once) or as rows, against
    whole sequences repeated once per scaled copy: each layer alone, and all layers together (joint), in
    float64 so that 1e-6 relative is the layouts' difference and not rounding."""
    from simu_lightning.attribution.integrated_gradients import (
        SharedPrefix,
        activations,
        batches,
        integrated_gradients,
        quadrature,
    )

    torch.manual_seed(0)
    config = CONFIGS[model_type]
    config._attn_implementation = attention
    model = AutoModelForCausalLM.from_config(config).double().eval().requires_grad_(False)
    projs = list(down_projections(model, architecture_of(model)).values())
    pairs = [torch.randint(2, 96, (n,)).tolist() for n in (9, 12)]
    samples = [{"input_ids": ids[:t], "target": ids[t], "example": e} for e, ids in enumerate(pairs) for t in (4, 6, 8)]
    batch = next(batches(samples, len(samples), pad_token_id=0))
    alone = [next(batches([sample], 1, pad_token_id=0)) for sample in samples]  # no padding at all
    nodes = quadrature("gauss_legendre", 3)

    def plain(layers):  # each sample on its own, its whole sequence repeated per copy
        listed = [projs[i] for i in layers]
        per_sample = [
            integrated_gradients(model, listed, one, activations(model, listed, one), *nodes) for one in alone
        ]
        return [torch.cat(scores) for scores in zip(*per_sample)]

    prefix = SharedPrefix(model, batch)
    betas = activations(model, projs, batch, prefix)
    for i, proj in enumerate(projs):
        for layout in ("positions", "rows"):
            shared = integrated_gradients(model, [proj], batch, [betas[i]], *nodes, prefix, layout)
            torch.testing.assert_close(shared[0], plain([i])[0], rtol=1e-6, atol=1e-9)
    joint = integrated_gradients(model, projs, batch, betas, *nodes, prefix)
    for shared, alone_scores in zip(joint, plain(list(range(len(projs))))):
        torch.testing.assert_close(shared, alone_scores, rtol=1e-6, atol=1e-9)
    for layer in prefix.cache(1).layers:  # every forward left the cache as it found it: the prefix alone
        assert layer.keys.shape[-2] == prefix.length and not layer.keys.requires_grad


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_quantisation_rounds_every_projection_weight_per_output_channel(model_type, scheme):
    """Every nn.Linear and Conv1D weight but the output head changes; 4-bit per-row rounding leaves at
    most 16 values per output channel, which for GPT-2's Conv1D (in x out) is a column."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantized_copy(model, scheme)
    names = [name for name, _ in projections(model)]
    assert names and not any(name.endswith("lm_head") for name in names)
    for name in names:
        weight = quantized.get_submodule(name).weight
        assert not torch.equal(weight, before[f"{name}.weight"]), f"{scheme} left {name} as it was"
        if scheme == "rtn4":
            channels = weight.t() if isinstance(quantized.get_submodule(name), Conv1D) else weight
            assert all(len(channel.unique()) <= 16 for channel in channels), name
    assert model_type != "gpt2" or any(isinstance(m, Conv1D) for _, m in projections(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself untouched
