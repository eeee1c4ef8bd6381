"""The controls that separate where SIMU updates from how: neuron selections, trainable sets, exclusion."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.attribution.integrated_gradients import attribute, quadrature
from simu_lightning.attribution.selection import exclude_shared, random_like
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.unlearning.methods import Method
from test_attribution import plain_integrated_gradients


def masks(*rows):
    return {f"layer{i}": torch.tensor(row, dtype=torch.bool) for i, row in enumerate(rows)}


def test_random_selection_keeps_each_layers_count_and_changes_with_the_seed():
    neurons = {"a": torch.arange(100) < 7, "b": torch.arange(100) % 10 == 0, "c": torch.zeros(100, dtype=torch.bool)}
    draws = {seed: random_like(neurons, seed)[0] for seed in (0, 1)}
    for drawn in draws.values():
        assert {n: int(m.sum()) for n, m in drawn.items()} == {"a": 7, "b": 10, "c": 0}
    assert not torch.equal(draws[0]["a"], draws[1]["a"]) and not torch.equal(draws[0]["b"], draws[1]["b"])
    assert all(torch.equal(random_like(neurons, 0)[0][n], draws[0][n]) for n in neurons)  # seeded: reproducible
    # the ranking it reports is the draw: each layer's top-count neurons by it are the drawn ones
    _, ranking = random_like(neurons, 0)
    for name, mask in neurons.items():
        top = ranking[name].argsort(descending=True)[: int(mask.sum())]
        assert set(top.tolist()) == set(draws[0][name].nonzero().flatten().tolist())


def test_exclude_retain_drops_exactly_the_neurons_critical_for_both():
    forget = masks([1, 1, 0, 1, 0], [0, 1, 1, 0, 0])
    retain = masks([0, 1, 1, 1, 0], [0, 0, 0, 0, 1])
    kept, dropped = exclude_shared(forget, retain)
    assert kept["layer0"].tolist() == [True, False, False, False, False]  # neurons 1 and 3 are shared
    assert kept["layer1"].tolist() == [False, True, True, False, False]  # nothing shared
    assert dropped == {"layer0": 2, "layer1": 0}


def test_the_callback_thresholds_both_splits_excludes_then_draws_at_random():
    """Constructed scores per split, through the callback: t = 0.5 keeps forget {0, 1, 3} and retain {1, 2}
    in layer 0; neuron 1 is dropped, and `random` then draws 2 neurons (the count left) in that layer."""
    scores = {
        "forget": {"l0": torch.tensor([1.0, 0.9, 0.1, 0.6]), "l1": torch.tensor([0.0, 0.2, 1.0, 0.4])},
        "retain": {"l0": torch.tensor([0.1, 1.0, 0.8, 0.2]), "l1": torch.tensor([1.0, 0.0, 0.0, 0.0])},
    }
    callback = NeuronAttribution(AttributionSettings(t=0.5, m=2, selection="random", exclude_retain=True), seed=3)
    callback.compute = lambda trainer, pl_module, examples, split, unit: scores[split]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))
    returned, neurons, ranking = callback.select(trainer, None)
    assert returned is scores["forget"] and ranking.keys() == neurons.keys()
    assert callback.dropped == {"l0": 1, "l1": 0}
    assert {n: int(m.sum()) for n, m in neurons.items()} == {"l0": 2, "l1": 1}
    callback.settings = dataclasses.replace(callback.settings, selection="integrated_gradients")
    assert {n: m.tolist() for n, m in callback.select(trainer, None)[1].items()} == {
        "l0": [True, False, False, True],
        "l1": [False, False, True, False],
    }


def test_an_unknown_selection_names_the_setting():
    with pytest.raises(
        SimuError,
        match=r"attribution.selection must be one of integrated_gradients, random, "
        r"activation, gradient, planted, got 'top'",
    ):
        AttributionSettings(selection="top")


def test_activation_and_gradient_scores_equal_their_plain_definitions(tiny_model, forget_samples):
    """activation: sum over answer tokens of |beta|; gradient: of |beta * d log p / d beta| (the integrand at
    alpha = 1, one layer at a time), each sample computed on its own, unpadded, without the prefix cache."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    samples = forget_samples[1][:5]
    projs = down_projections(model, architecture_of(model))
    for score in ("activation", "gradient"):
        scores = attribute(model, projs, samples, m=7, pad_token_id=tokenizer.pad_token_id, score=score)
        for name, proj in projs.items():
            plain = [
                plain_integrated_gradients(model, [proj], s["input_ids"], s["target"], *quadrature("riemann", 1))
                for s in samples
            ]
            expected = sum((att[0] if score == "gradient" else beta[0]).abs() for att, beta in plain)
            torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "trainable, attention, down",
    [("attention_and_down_proj", True, True), ("down_proj", False, True), ("attention", True, False)],
)
def test_trainable_picks_attention_down_projections_or_both(tiny_model, trainable, attention, down):
    model, _ = tiny_model
    arch = architecture_of(model)
    method = Method("simu", optimizer=None, trainable=trainable, critical_neuron_mask=True)
    names = method.trainable_parameter_names(model, arch)
    attention_names = {
        f"{m}.{n}" for m, p in attention_projections(model, arch).items() for n, _ in p.named_parameters()
    }
    down_names = {f"{m}.weight" for m in down_projections(model, arch)}
    assert names == (attention_names if attention else set()) | (down_names if down else set())
    assert method.needs_attribution == down  # attention alone: nothing to mask, nothing to attribute


def test_an_unknown_trainable_set_names_the_setting():
    with pytest.raises(
        SimuError,
        match="^method.trainable='mlp' must be one of all, attention_and_down_proj, down_proj, attention, "
        "attention_heads_and_down_proj$",
    ):
        Method("simu", optimizer=None, trainable="mlp")
