"""The controls that separate where SIMU updates from how: neuron selections, trainable sets, exclusion."""

import dataclasses
from types import SimpleNamespace

import re

import pytest
import torch

from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.attribution.integrated_gradients import quadrature
from simu_lightning.attribution.scores import attribute
from simu_lightning.attribution.selection import exclude_shared, random_like
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.unlearning.methods import HEADS, Method
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
        r"activation, gradient, planted or a rule's import path, got 'top'",
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


def test_a_rule_named_by_its_import_path_scores_with_its_own_attributions(tiny_model, forget_samples):
    """docs/extending.md, "A selection rule": tests/toy_selection.py's class, named by its import path, is the
    score `attribute` sums: each sample's squared activation at its predicted token, computed here one
    unpadded sample at a time without the prefix cache."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    samples = forget_samples[1][:5]
    projs = down_projections(model, architecture_of(model))
    rule = "toy_selection.SquaredActivation"
    scores = attribute(model, projs, samples, m=7, pad_token_id=tokenizer.pad_token_id, score=rule)
    for name, proj in projs.items():
        plain = [
            plain_integrated_gradients(model, [proj], s["input_ids"], s["target"], *quadrature("riemann", 1))[1][0]
            for s in samples
        ]
        torch.testing.assert_close(scores[name], sum(beta**2 for beta in plain), rtol=1e-4, atol=1e-6)
    assert AttributionSettings(selection=rule).counted("neurons")  # its own score: integrated gradients' counts


@pytest.mark.parametrize(
    "name, message",
    [
        ("nowhere.Rule", "attribution.selection=nowhere.Rule: cannot import it (No module named 'nowhere')"),
        ("toy_selection.Missing", "attribution.selection=toy_selection.Missing: cannot import it"),
        ("torch.Tensor", "attribution.selection=torch.Tensor is not a SelectionRule (attribution/rules/base.py)"),
    ],
)
def test_a_rule_path_that_names_no_rule_is_refused_with_the_setting(name, message):
    with pytest.raises(SimuError, match="^" + re.escape(message)):
        AttributionSettings(selection=name)


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


def selected_by(scores: dict, settings: AttributionSettings, unit: str = "neurons") -> tuple[dict, NeuronAttribution]:
    """The callback's selection of `unit` from constructed scores (scores[score][split]), with the
    integrated-gradient scores given under "integrated_gradients"."""
    callback = NeuronAttribution(settings, seed=0)

    def compute(trainer, pl_module, examples, split, unit, score=None):
        return scores[score or settings.selection_of(unit)][split]

    callback.compute = compute
    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))
    _, masks, _ = (callback.select if unit == "neurons" else callback.select_heads)(trainer, None)
    return masks, callback


def counts(masks: dict) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


# integrated gradients at t = 0.5 keep 2 neurons in l0 and 1 in l1; the activation scores at t = 0.5 keep
# 4 in l0 (a flat layer) and 3 in l1: a control thresholded on its own scores trains another budget
CONTROL_SCORES = {
    "integrated_gradients": {
        "forget": {"l0": torch.tensor([1.0, 0.1, 0.6, 0.0, 0.2]), "l1": torch.tensor([0.3, 0.1, 1.0, 0.0, 0.2])},
        "retain": {"l0": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), "l1": torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])},
    },
    "activation": {
        "forget": {"l0": torch.tensor([0.7, 0.9, 0.8, 1.0, 0.1]), "l1": torch.tensor([0.6, 1.0, 0.9, 0.2, 0.1])},
        "retain": {"l0": torch.tensor([0.1, 0.2, 0.3, 1.0, 0.0]), "l1": torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])},
    },
}
CONTROL_SCORES["gradient"] = CONTROL_SCORES["activation"]


@pytest.mark.parametrize("selection", ["activation", "gradient"])
def test_a_control_keeps_the_attributions_per_layer_counts_unless_told_to_use_its_own_threshold(selection):
    """P3: by default activation (and gradient) keep, per layer, exactly as many neurons as integrated
    gradients keeps at t, the highest by their own score; attribution.match_counts=false thresholds their own
    scores at t. With exclude_retain the count is the attribution's after its exclusion (l0: 2 - 1), taken
    from the control's own ranking without the retain set's own top neurons (l0: neuron 3)."""
    matched, callback = selected_by(CONTROL_SCORES, AttributionSettings(t=0.5, selection=selection))
    ig, _ = selected_by(CONTROL_SCORES, AttributionSettings(t=0.5))
    assert counts(matched) == counts(ig) == {"l0": 2, "l1": 1}
    assert matched["l0"].tolist() == [False, True, False, True, False]  # activation's top 2: 1.0 and 0.9
    assert matched["l1"].tolist() == [False, True, False, False, False]
    assert callback.chosen_t == {"l0": 0.5, "l1": 0.5}
    own, _ = selected_by(CONTROL_SCORES, AttributionSettings(t=0.5, selection=selection, match_counts=False))
    assert counts(own) == {"l0": 4, "l1": 3}  # >= 0.5 x each layer's largest activation score
    excluded, callback = selected_by(
        CONTROL_SCORES, AttributionSettings(t=0.5, selection=selection, exclude_retain=True)
    )
    ig_excluded, _ = selected_by(CONTROL_SCORES, AttributionSettings(t=0.5, exclude_retain=True))
    assert counts(excluded) == counts(ig_excluded) == {"l0": 1, "l1": 1}
    assert excluded["l0"].tolist() == [False, True, False, False, False]  # neuron 3 is the retain set's top one
    assert excluded["l1"].tolist() == [False, False, True, False, False]  # neuron 1 is the retain set's
    assert callback.dropped == {"l0": 1, "l1": 1}
    with pytest.raises(SimuError, match="attribution.match_counts must be true or false"):
        AttributionSettings(match_counts="yes")


def test_control_heads_keep_the_attributions_head_counts():
    """The same rule over heads: activation-selected heads in integrated gradients' per-layer head counts."""
    scores = {
        "integrated_gradients": {"forget": {"o0": torch.tensor([0.2, 1.0, 0.1, 0.0])}},
        "activation": {"forget": {"o0": torch.tensor([0.9, 0.8, 1.0, 0.95])}},
    }
    heads, _ = selected_by(scores, AttributionSettings(t=0.5, selection="activation"), "heads")
    assert heads["o0"].tolist() == [False, False, True, False]  # one head, as attributed: activation's best
    own, _ = selected_by(scores, AttributionSettings(t=0.5, selection="activation", match_counts=False), "heads")
    assert own["o0"].tolist() == [True, True, True, True]


def hand_counts(model, trainable_attention: int, down_columns: int) -> dict[str, int]:
    h = model.config.hidden_size
    return {
        "total": trainable_attention + h * down_columns,
        "attention": trainable_attention,
        "down_proj": h * down_columns,
    }


@pytest.mark.parametrize(
    "method, trainable, masked",
    [("simu", "attention_and_down_proj", True), ("fo", "all", False), ("simu", "attention", True)],
)
def test_trained_parameters_count_the_entries_the_optimiser_may_change(tiny_model, method, trainable, masked):
    """results.json `trained_parameters` against a count by hand on the tiny OLMo (no biases, no norm
    weights, untied embeddings): SIMU trains every q/k/v/o entry and hidden x kept columns of each down
    projection; FO every parameter; attention-only the q/k/v/o alone."""
    from simu_lightning.pipeline.results import trained_parameters

    model, _ = tiny_model
    arch = architecture_of(model)
    cfg = model.config
    h, i, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    names = Method(method, optimizer=None, trainable=trainable, critical_neuron_mask=masked).trainable_parameter_names(
        model, arch
    )
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    neurons = {name: torch.arange(i) % (3 + k) == 0 for k, name in enumerate(down_projections(model, arch))}
    kept = sum(int(m.sum()) for m in neurons.values())
    attention = layers * 4 * h * h
    counted = trained_parameters(model, arch, neurons if trainable != "attention" and masked else None)
    if method == "fo":
        mlp = layers * 3 * h * i
        assert counted == {
            "total": 2 * vocab * h + attention + mlp,
            "attention": attention,
            "down_proj": layers * h * i,
        }
    elif trainable == "attention":
        assert counted == hand_counts(model, attention, 0)
    else:
        assert counted == hand_counts(model, attention, kept) and kept < layers * i


def test_trained_parameters_of_a_head_mask_count_the_kept_rows_and_columns(tiny_model):
    """attention_heads_and_down_proj: a kept head trains its d rows of q, k, v (2 heads, no grouping here)
    and its d columns of o_proj, each h long."""
    from simu_lightning.pipeline.results import trained_parameters

    model, _ = tiny_model
    arch = architecture_of(model)
    cfg = model.config
    h, d = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    assert cfg.num_key_value_heads == cfg.num_attention_heads
    names = Method("simu", optimizer=None, trainable=HEADS, critical_neuron_mask=True).trainable_parameter_names(
        model, arch
    )
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    neurons = {name: torch.arange(cfg.intermediate_size) < 5 for name in down_projections(model, arch)}
    o_projs = [f"{layer}.self_attn.o_proj" for layer in (n.removesuffix(".mlp.down_proj") for n in neurons)]
    heads = {o_projs[0]: torch.tensor([True, False]), o_projs[1]: torch.tensor([False, False])}
    assert trained_parameters(model, arch, neurons, heads) == hand_counts(model, 4 * d * h, 5 * len(neurons))


@pytest.fixture(scope="module")
def runs_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("controls_cache")


def test_the_activation_arm_trains_as_many_parameters_as_simu_and_results_say_how_many(tmp_path, runs_cache):
    """End to end on the embedded default (small): attribution=activation keeps SIMU's per-layer counts (from
    the integrated-gradient scores it computes and caches) and so the same trained_parameters; with
    match_counts=false it keeps its own threshold's count; fo trains every parameter."""
    from safetensors.torch import load_file

    from conftest import run_here
    from test_run import SMALL

    simu = run_here([*SMALL, "method=simu"], tmp_path / "simu", runs_cache)
    activation = run_here([*SMALL, "method=simu", "attribution=activation"], tmp_path / "activation", runs_cache)
    own = run_here(
        [*SMALL, "method=simu", "attribution=activation", "attribution.match_counts=false"],
        tmp_path / "own",
        runs_cache,
    )
    fo = run_here([*SMALL, "method=fo"], tmp_path / "fo", runs_cache)
    assert activation["critical_neurons"] == simu["critical_neurons"]
    assert activation["trained_parameters"] == simu["trained_parameters"]
    scores = torch.load(tmp_path / "own" / "attribution" / "scores.pt")  # the activation scores
    assert own["critical_neurons"] == {name: int((s >= 0.1 * s.max()).sum()) for name, s in scores.items()}
    assert own["critical_neurons"] != simu["critical_neurons"]  # (the budget the old default trained)
    chosen = torch.load(tmp_path / "activation" / "attribution" / "critical_neurons.pt")
    for name, s in scores.items():  # the activation arm's neurons: its own top ones
        assert s[chosen[name]].min() >= s[~chosen[name]].max()
    weights = load_file(f"{simu['target']}/model.safetensors")
    hidden = next(w for n, w in weights.items() if n.endswith("mlp.down_proj.weight")).shape[0]
    for results in (simu, activation, own):
        down = hidden * sum(results["critical_neurons"].values())
        attention = sum(w.numel() for n, w in weights.items() if "self_attn" in n)
        assert results["trained_parameters"] == {"total": attention + down, "attention": attention, "down_proj": down}
    assert fo["trained_parameters"]["total"] == sum(w.numel() for w in weights.values())
