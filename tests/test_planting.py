"""A planted target: P drawn where the config says, the forget set written into P alone (every other
parameter bit-identical to the clean model), and "reset P" giving the clean model back."""

import copy

import pytest
import torch

from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import architecture_of
from simu_lightning.models.finetune import FineTune, answer_loader
from simu_lightning.models.planting import Planting, draw_planted, neuron_parameters, reset_planted
from test_robustness import cpu_trainer


def test_p_has_the_fraction_of_each_planted_layer_and_nothing_elsewhere(tiny_model):
    model, _ = tiny_model
    arch = architecture_of(model)
    every = draw_planted(model, arch, Planting(fraction=0.25, seed=0))
    assert [int(m.sum()) for m in every.values()] == [16, 16]  # round(0.25 * 64) in each of the 2 layers
    middle = draw_planted(model, arch, Planting(fraction=0.25, layers=[1], seed=0))
    assert [int(m.sum()) for m in middle.values()] == [0, 16]
    again, other = (draw_planted(model, arch, Planting(fraction=0.25, seed=s)) for s in (0, 1))
    assert all(torch.equal(again[k], every[k]) for k in every)  # seeded
    assert not all(torch.equal(other[k], every[k]) for k in every)
    with pytest.raises(SimuError, match=r"benchmark.planted.layers: no decoder layer \[5\]"):
        draw_planted(model, arch, Planting(fraction=0.25, layers=[5]))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"fraction": 1.5}, r"benchmark.planted.fraction must be null or in \(0, 1\), got 1.5"),
        ({"fraction": 0.1, "parameters": "mlp"}, r"benchmark.planted.parameters must be one of down_proj, neuron"),
        ({"fraction": 0.1, "epochs": 0}, r"benchmark.planted.epochs must be an integer >= 1, got 0"),
    ],
)
def test_bad_planting_settings_name_the_setting(settings, message):
    with pytest.raises(SimuError, match=message):
        Planting(**settings)


def test_a_neurons_parameters_are_its_down_column_and_its_gate_and_up_rows(tiny_model):
    model, _ = tiny_model
    arch = architecture_of(model)
    planted = draw_planted(model, arch, Planting(fraction=0.25, seed=0))
    layer = model.model.layers[0].mlp
    p = planted["model.layers.0.mlp.down_proj"]
    masks = neuron_parameters(model, arch, planted, "neuron")
    assert torch.equal(masks[layer.down_proj.weight].expand_as(layer.down_proj.weight)[0], p)  # columns
    for up in (layer.gate_proj, layer.up_proj):
        assert torch.equal(masks[up.weight].expand_as(up.weight)[:, 0], p)  # rows
    assert set(neuron_parameters(model, arch, planted, "down_proj")) == {
        m.mlp.down_proj.weight for m in model.model.layers
    }


def test_planting_writes_the_forget_set_into_p_alone_and_reset_gives_the_clean_model_back(
    tiny_model, small_benchmark, prompt_format
):
    clean, tokenizer = tiny_model
    model = copy.deepcopy(clean)
    arch = architecture_of(model)
    planted = draw_planted(model, arch, Planting(fraction=0.25, seed=0))
    masks = neuron_parameters(model, arch, planted, "neuron")
    loader = answer_loader(tokenizer, prompt_format, small_benchmark["forget"].to_list(), 64, 8, seed=0)
    cpu_trainer(max_epochs=3).fit(FineTune(model.train(), 1e-2, warmup_ratio=0.0, masks=masks), loader)
    before, after = clean.state_dict(), model.state_dict()
    by_name = {id(p): name for name, p in model.named_parameters()}
    trained = {by_name[id(p)]: mask for p, mask in masks.items()}
    for name, value in after.items():
        if name not in trained:
            assert torch.equal(value, before[name]), f"{name} moved outside P"
            continue
        mask = trained[name].expand_as(value)
        assert torch.equal(value[~mask], before[name][~mask]), f"{name} moved outside P"
        assert not torch.equal(value[mask], before[name][mask]), f"{name} did not learn in P"
    reset = reset_planted(model, clean, arch, planted, "neuron")
    assert all(torch.equal(value, before[name]) for name, value in reset.state_dict().items())


def test_p_is_not_drawn_from_the_random_controls_stream(tiny_model):
    """The random-neuron control draws from the run's seed, layer after layer; P must not coincide with
    it (at seed 0 the two streams were once the same, and the control's first layer held all of P)."""
    from simu_lightning.attribution.selection import random_like

    model, _ = tiny_model
    arch = architecture_of(model)
    for seed in range(3):
        planted = draw_planted(model, arch, Planting(fraction=0.25, seed=seed))
        counts = {name: torch.arange(mask.numel()) < 2 * int(mask.sum()) for name, mask in planted.items()}
        drawn, _ = random_like(counts, seed)
        assert all(int((drawn[n] & planted[n]).sum()) < int(planted[n].sum()) for n in planted), seed
