"""Attention heads: their integrated gradients against the plain per-sample definition on every registered
architecture, their q/k/v/o masks under masked Sophia and AdamW (grouped-query attention and fused
projections included), and method.trainable=attention_heads_and_down_proj from the command line to
results.json."""

import dataclasses
import json
import shutil
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from conftest import run_here
from simu_lightning.attribution.integrated_gradients import quadrature
from simu_lightning.attribution.scores import attribute_heads
from simu_lightning.models.architecture import (
    ARCHITECTURES,
    Architecture,
    architecture_of,
    decoder_layers,
    output_projections,
)
from simu_lightning.models.heads import head_masks, head_shape
from simu_lightning.optim import MaskedAdamW, Sophia
from simu_lightning.unlearning.methods import Method
from simu_lightning.utils.errors import SimuError
from test_architectures import CONFIGS
from test_run import SMALL

HEADS = "attention_heads_and_down_proj"


def plain_head_attribution(model, o_projs, heads, input_ids, target, alphas, weights):
    """The definition, one unpadded sample, whole sequence, no cache: each listed layer's heads' outputs at the
    last position (o_proj's input there, beta) are replaced by s_h * beta_h, a gate s_h per head, every head of
    the listed layers on the path s = alpha; Att_h = sum_j w_j d log p(target) / d s_h at s = alpha_j, each node
    its own forward and backward."""
    ids = torch.tensor([input_ids])
    betas = {}

    def capture(i):
        def hook(_module, args):
            betas[i] = args[0][0, -1].detach().clone().view(heads, -1)

        return hook

    handles = [proj.register_forward_pre_hook(capture(i)) for i, proj in enumerate(o_projs)]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    totals = [torch.zeros(heads, dtype=torch.float64) for _ in o_projs]
    for alpha, weight in zip(alphas.tolist(), weights.tolist()):
        gates = [torch.full((heads,), alpha, dtype=torch.float64, requires_grad=True) for _ in o_projs]

        def gated(gate, beta):
            def hook(_module, args):
                last = (gate[:, None] * beta).view(1, 1, -1)
                return (torch.cat([args[0][:, :-1], last], dim=1),)

            return hook

        handles = [proj.register_forward_pre_hook(gated(gates[i], betas[i])) for i, proj in enumerate(o_projs)]
        log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)[target]
        for handle in handles:
            handle.remove()
        for total, grad in zip(totals, torch.autograd.grad(log_p, gates)):
            total += weight * grad
    return totals


@pytest.mark.parametrize("mode, layout", [("layerwise", "positions"), ("layerwise", "rows"), ("joint", "positions")])
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_head_attribution_equals_its_plain_per_sample_definition(model_type, mode, layout):
    """Samples of two QA pairs, left-padded into one batch on the shared prefix cache, the copies laid out as
    positions or rows, against each sample's gates computed on its own: each layer's heads scaled alone
    (layer-wise) and all layers' together (joint), in float64 to 1e-6 (grouped-query attention in the
    Llama-like configs, fused q/k/v in GPT-NeoX and GPT-2)."""
    torch.manual_seed(0)
    config = CONFIGS[model_type]
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).double().eval()
    arch = architecture_of(model)
    o_projs = output_projections(model, arch)
    heads = head_shape(model, arch).count
    pairs = [torch.randint(2, 96, (n,)).tolist() for n in (9, 12)]
    samples = [{"input_ids": ids[:t], "target": ids[t], "example": e} for e, ids in enumerate(pairs) for t in (4, 6, 8)]
    scores = attribute_heads(
        model, o_projs, samples, 3, 0, 64, "gauss_legendre", mode, heads=heads, copies=layout
    )  # m=3, pad 0, max_batch 64
    nodes = quadrature("gauss_legendre", 3)
    groups = [list(o_projs.values())] if mode == "joint" else [[proj] for proj in o_projs.values()]
    expected = []
    for group in groups:
        per_sample = [plain_head_attribution(model, group, heads, s["input_ids"], s["target"], *nodes) for s in samples]
        expected += [sum(layer) for layer in zip(*per_sample)]  # each layer of the group, summed over samples
    got = torch.stack(list(scores.values()))
    assert got.shape == (len(o_projs), heads) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.cat(expected).view(len(o_projs), heads), rtol=1e-6, atol=1e-9)
    assert got.abs().min() > 0  # every head takes part: the comparison is not between zeros


# head masks: four query heads in two key/value groups where the architecture allows it
MASK_SIZE = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
MASK_CONFIGS = {
    "llama": LlamaConfig(**MASK_SIZE, num_key_value_heads=2),
    "qwen2": Qwen2Config(**MASK_SIZE, num_key_value_heads=2),  # q/k/v biases
    "gpt_neox": GPTNeoXConfig(**MASK_SIZE),  # one fused query_key_value, per head; biases, o_proj's too
    "gpt2": GPT2Config(vocab_size=64, n_embd=16, n_inner=24, n_layer=2, n_head=4),  # fused c_attn (Conv1D), stacked
}
# layer 0: head 1 alone (key/value group 0 trains, group 1 does not); layer 1: heads 0 and 3 (both groups)
CRITICAL = ([False, True, False, False], [True, False, False, True])


def belonging_to(model, arch, layer: int, critical: torch.Tensor) -> dict[str, torch.Tensor]:
    """The entries of layer `layer`'s q/k/v/o that belong to its critical heads, found without the masks:
    the q/k/v weight entries through which the critical heads' outputs (their slices of o_proj's input)
    depend on them, and the bias entries of those entries' output features (a key's bias moves no attention
    weight, so its own gradient is zero); the o_proj entries that carry those outputs into the residual
    stream. Nonzero gradients, on random tokens."""
    block = decoder_layers(model, arch)[layer]
    prefix = f"{arch.layers}.{layer}."
    o_proj = block.get_submodule(arch.o_proj)
    width = next(iter(output_projections(model, arch).values())).weight.numel() // model.config.hidden_size
    features = critical.repeat_interleave(width // len(critical))  # head h: the slice h*d:(h+1)*d
    captured = {}

    def capture(_module, args):
        captured["x"] = args[0]

    handle = o_proj.register_forward_pre_hook(capture)
    model.zero_grad()
    model(input_ids=torch.randint(0, 64, (2, 6)))
    handle.remove()
    (captured["x"][..., features] * torch.randn_like(captured["x"][..., features])).sum().backward()
    entries = {}
    for name in arch.attention[:-1]:
        module = block.get_submodule(name)
        entries[f"{prefix}{name}.weight"] = used = module.weight.grad != 0
        if getattr(module, "bias", None) is not None:  # nn.Linear is out x in, GPT-2's Conv1D in x out
            entries[f"{prefix}{name}.bias"] = used.any(1) if isinstance(module, torch.nn.Linear) else used.any(0)
    model.zero_grad()
    heads_only = torch.randn_like(captured["x"].detach()) * features  # an input from the critical heads alone
    o_proj(heads_only).sum().backward()
    entries[f"{prefix}{arch.o_proj}.weight"] = o_proj.weight.grad != 0
    model.zero_grad()
    return entries


@pytest.mark.parametrize("compact_state", [True, False], ids=["compact", "full"])
@pytest.mark.parametrize("optimizer", ["sophia", "adamw"])
@pytest.mark.parametrize("model_type", sorted(MASK_CONFIGS))
def test_outside_the_critical_heads_q_k_v_o_stay_bit_identical_through_masked_steps(
    model_type, optimizer, compact_state
):
    """Method simu (Sophia) and simu_adamw (MaskedAdamW) with the heads trainable, four real steps with
    weight decay: every q/k/v/o entry outside the critical heads keeps its bits, every one inside moves,
    and o_proj's bias (no head's own) stays frozen. Which entries are inside is found from the model's
    gradients (`belonging_to`), not from the masks' layout."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MASK_CONFIGS[model_type]).eval()
    arch = architecture_of(model)
    heads = {name: torch.tensor(c) for name, c in zip(output_projections(model, arch), CRITICAL)}
    inside = {k: v for layer, c in enumerate(heads.values()) for k, v in belonging_to(model, arch, layer, c).items()}
    optim = partial(Sophia, rho=0.04) if optimizer == "sophia" else MaskedAdamW
    method = Method(optimizer, optim, trainable=HEADS, critical_neuron_mask=True)
    trainable = method.trainable_parameter_names(model, arch)
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    opt = method.optimizer(
        [p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1, compact_state=compact_state
    )
    opt.set_masks({params[name]: mask for name, mask in head_masks(model, arch, heads).items()})
    before = {name: p.detach().clone() for name, p in params.items()}
    tokens = torch.randint(0, 64, (4, 8))
    for _ in range(4):
        opt.zero_grad()
        model(input_ids=tokens, labels=tokens).loss.backward()
        if optimizer == "sophia":
            opt.update_hessian()
            opt.step(bs=32)
        else:
            opt.step()
    attention = {f"{arch.layers}.{i}.{name}" for i in range(2) for name in arch.attention}
    held_entries = 0
    for name, p in params.items():
        if name.rsplit(".", 1)[0] not in attention:
            continue
        if name not in inside:  # o_proj's bias belongs to no head
            assert name.endswith(f"{arch.o_proj}.bias") and name not in trainable and torch.equal(p, before[name])
            continue
        assert name in trainable
        held = ~inside[name]
        assert (~held).any(), name  # (and held entries where a layer's key/value heads are not all trained)
        held_entries += int(held.sum())
        assert torch.equal(p.detach()[held].view(torch.int32), before[name][held].view(torch.int32)), name
        if name.endswith("weight"):  # (a key's bias gets no gradient, and starts at zero)
            assert (p.detach()[~held] != before[name][~held]).all(), f"{name}: an entry of a critical head stayed"
    assert held_entries > 0
    if model_type in ("llama", "qwen2"):  # grouped-query: layer 0's second key/value head is not read by head 1
        assert not inside["model.layers.0.self_attn.k_proj.weight"].all()
    if compact_state:  # the head masks are single rows or columns: compact wherever the layout allows
        assert opt.columns


def test_the_heads_cache_key_is_its_own_and_leaves_the_neurons_key_as_it_was():
    from simu_lightning.attribution.callback import NeuronAttribution
    from simu_lightning.attribution.settings import AttributionSettings

    forget = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    llama = SimpleNamespace(architecture=ARCHITECTURES["llama"], compute_dtype=None)
    callback = NeuronAttribution(AttributionSettings(t=0.1, m=4), target_id="x")
    neurons, heads = callback.cache_key(llama, forget), callback.cache_key(llama, forget, "heads")
    assert heads != neurons
    # the q/k/v layout (added with the heads) moves no score: earlier neuron keys stay valid
    stacked = SimpleNamespace(
        architecture=dataclasses.replace(ARCHITECTURES["llama"], qkv="stacked"), compute_dtype=None
    )
    assert callback.cache_key(stacked, forget) == neurons


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_the_override_masks_q_k_v_o_to_the_critical_heads_end_to_end(cache_dir, tmp_path):
    """`method.trainable=attention_heads_and_down_proj` on the embedded default (small): the heads are
    attributed, written to results.json and attribution/, and the unlearned model differs from the target
    in q/k/v/o only within them (t = 1: each layer's best head, so the other one is there to stay)."""
    run_here([*SMALL, f"method.trainable={HEADS}", "attribution.t=1.0"], tmp_path, cache_dir)
    results = json.loads((tmp_path / "results.json").read_text())
    summary = json.loads((tmp_path / "attribution" / "critical_heads.json").read_text())
    masks = torch.load(tmp_path / "attribution" / "critical_heads.pt")
    scores = torch.load(tmp_path / "attribution" / "head_scores.pt")
    assert results["critical_heads"] == {name: mask.nonzero().flatten().tolist() for name, mask in masks.items()}
    assert {name: layer["critical"] for name, layer in summary["layers"].items()} == results["critical_heads"]
    assert results["critical_neurons"]  # the neurons are selected as before
    for name, score in scores.items():  # t = 1: the layer's best head, if it raises the answers at all
        assert name.endswith("self_attn.o_proj") and score.shape == (2,)
        assert masks[name].tolist() == ((score >= score.max()) & (score > 0)).tolist()
    assert_only_the_heads_moved(tmp_path, results["target"], masks)


def assert_only_the_heads_moved(run_dir, target_dir, heads):
    """The unlearned model's q/k/v/o against the target's: equal outside the heads' masks, moved inside."""
    model, target = (AutoModelForCausalLM.from_pretrained(d) for d in (run_dir / "unlearned_model", target_dir))
    after, before = model.state_dict(), target.state_dict()
    moved = 0
    for name, mask in head_masks(model, architecture_of(model), heads).items():
        inside = mask.expand_as(after[name])
        assert torch.equal(after[name][~inside], before[name][~inside]), f"{name}: an entry outside the heads moved"
        moved += not torch.equal(after[name][inside], before[name][inside])
    assert moved > 0


def test_a_resumed_run_takes_its_heads_from_the_checkpoint_not_a_new_attribution(tmp_path, caplog):
    """With masked AdamW (method=simu_adamw): the resumed run masks q/k/v/o to the heads it saved."""
    cache = tmp_path / "cache"
    args = [
        *SMALL,
        "method=simu_adamw",
        "method.optimizer.lr=1e-3",
        f"method.trainable={HEADS}",
        "attribution.t=1.0",
        "trainer.max_epochs=2",
    ]
    run_here(args, tmp_path / "run", cache)
    heads = torch.load(tmp_path / "run" / "attribution" / "critical_heads.pt")
    shutil.rmtree(cache / "attribution")  # the scores are gone: the masks can only come from the checkpoint
    with caplog.at_level("INFO"):
        run_here([*args, "rerun=true"], tmp_path / "run", cache)
    assert "reusing the critical heads saved in the checkpoint" in caplog.text
    assert not (cache / "attribution").exists()  # nothing was attributed on the half-unlearned weights
    resumed = torch.load(tmp_path / "run" / "attribution" / "critical_heads.pt")
    assert resumed.keys() == heads.keys() and all(torch.equal(resumed[k], heads[k]) for k in heads)
    assert_only_the_heads_moved(
        tmp_path / "run", json.loads((tmp_path / "run" / "results.json").read_text())["target"], heads
    )


def test_heads_follow_the_neurons_rules_exclusion_then_random_heads_in_the_same_counts():
    """Constructed head scores per split, through the callback: t = 0.5 keeps forget heads {0, 2, 3} and
    retain {2} in layer 0, forget {1} and retain {0} in layer 1; head 2 is dropped, and `random` then draws
    2 heads and 1 head (the counts left), differently for another seed."""
    from simu_lightning.attribution.callback import NeuronAttribution
    from simu_lightning.attribution.settings import AttributionSettings

    scores = {
        "forget": {"l0": torch.tensor([1.0, 0.2, 0.6, 0.9]), "l1": torch.tensor([0.1, 1.0, -0.5, 0.3])},
        "retain": {"l0": torch.tensor([0.0, 0.1, 1.0, 0.2]), "l1": torch.tensor([1.0, 0.0, 0.0, 0.0])},
    }
    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))

    def chosen(selection, seed=0):
        callback = NeuronAttribution(AttributionSettings(t=0.5, selection=selection, exclude_retain=True), seed=seed)
        callback.compute = lambda trainer, pl_module, examples, split, unit: {"heads": scores[split]}[unit]
        returned, heads, ranking = callback.select_heads(trainer, None)
        assert returned is scores["forget"] and callback.heads_dropped == {"l0": 1, "l1": 0}
        return heads

    assert {n: m.tolist() for n, m in chosen("integrated_gradients").items()} == {
        "l0": [True, False, False, True],
        "l1": [False, True, False, False],
    }
    draws = [chosen("random", seed) for seed in range(4)]
    assert all({n: int(m.sum()) for n, m in drawn.items()} == {"l0": 2, "l1": 1} for drawn in draws)
    assert len({tuple(d["l0"].tolist()) for d in draws}) > 1  # positions drawn, not copied


def test_head_selection_random_draws_the_heads_and_keeps_the_attributed_neurons():
    """attribution.head_selection=random: the control for the heads alone. The neurons are the attributed
    ones (the scores' threshold), the heads random in the attributed per-layer counts."""
    from simu_lightning.attribution.callback import NeuronAttribution
    from simu_lightning.attribution.settings import AttributionSettings

    scores = {
        "neurons": {"l0": torch.tensor([1.0, 0.1, 0.8, 0.0, 0.2, 0.9])},
        "heads": {"l0": torch.tensor([0.1, 1.0, 0.2, 0.05, 0.0, 0.3, 0.02, 0.01])},
    }
    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))
    settings = AttributionSettings(t=0.5, head_selection="random")
    callback = NeuronAttribution(settings, seed=3)
    callback.compute = lambda trainer, pl_module, examples, split, unit: scores[unit]
    _, neurons, _ = callback.select(trainer, None)
    assert neurons["l0"].tolist() == [True, False, True, False, False, True]  # >= 0.5 x the largest
    draws = []
    for seed in range(4):
        callback.seed = seed
        _, heads, _ = callback.select_heads(trainer, None)
        draws.append(tuple(heads["l0"].tolist()))
    assert all(sum(d) == 1 for d in draws) and len(set(draws)) > 1  # one head, as attributed; drawn
    assert settings.selection_of("neurons") == "integrated_gradients" and settings.selection_of("heads") == "random"
    with pytest.raises(SimuError, match="attribution.head_selection must be null or one of"):
        AttributionSettings(head_selection="planted")


def test_head_t_thresholds_the_heads_apart_from_the_neurons():
    """attribution.head_t: neurons at t = 0.1 keep 3 of 4; heads at head_t = 0.5 keep the two scoring at least
    half of the layer's best (at t = 0.1 all four heads would be kept); head_t=auto applies auto.rule to the
    heads; head_t null leaves the heads at t; a bad head_t names the setting."""
    from simu_lightning.attribution.callback import NeuronAttribution
    from simu_lightning.attribution.settings import AttributionSettings

    scores = {
        "neurons": {"l0": torch.tensor([1.0, 0.05, 0.2, 0.15])},
        "heads": {"l0": torch.tensor([0.3, 1.0, 0.6, 0.4])},
    }
    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))

    def chosen(**settings):
        callback = NeuronAttribution(AttributionSettings(**settings), seed=0)
        callback.compute = lambda trainer, pl_module, examples, split, unit: scores[unit]
        return callback.select(trainer, None)[1]["l0"].tolist(), callback.select_heads(trainer, None)[1]["l0"].tolist()

    assert chosen(t=0.1) == ([True, False, True, True], [True, True, True, True])
    assert chosen(t=0.1, head_t=0.5) == ([True, False, True, True], [False, True, True, False])
    # mass 0.5 of the heads' positive scores (2.3): the fewest from the top carrying 1.15 are heads 1 and 2
    assert chosen(t=0.1, head_t="auto", auto={"rule": "mass", "mass": 0.5})[1] == [False, True, True, False]
    with pytest.raises(SimuError, match=r"attribution.head_t must be in \(0, 1\] or auto, got 2"):
        AttributionSettings(head_t=2)


def test_a_bad_trainable_names_the_setting_in_one_line():
    with pytest.raises(SimuError) as refused:
        Method("simu", optimizer=None, trainable="heads", critical_neuron_mask=True)
    assert str(refused.value) == (
        "method.trainable='heads' must be one of all, attention_and_down_proj, down_proj, attention, "
        "attention_heads_and_down_proj"
    )
    with pytest.raises(SimuError) as refused:
        Method("fo", optimizer=None, trainable=HEADS)
    assert str(refused.value) == (
        "method.trainable=attention_heads_and_down_proj masks the attention to its critical heads: it needs a "
        "masked method (method=simu or simu_adamw), not method=fo"
    )


def test_planted_selection_with_heads_is_refused_before_any_work(tmp_path):
    with pytest.raises(SimuError) as refused:
        run_here(["benchmark=planted", "attribution=planted", f"method.trainable={HEADS}"], tmp_path, tmp_path / "c")
    assert "\n" not in str(refused.value) and str(refused.value).startswith(
        "attribution.selection=planted selects no heads"
    )
    assert not (tmp_path / "c").exists()


def test_an_architecture_whose_attention_list_is_not_q_k_v_o_is_named():
    model = AutoModelForCausalLM.from_config(MASK_CONFIGS["llama"])
    arch = Architecture("model.layers", "mlp.down_proj", ("self_attn.q_proj", "self_attn.o_proj"))
    with pytest.raises(SimuError, match=r"^attention heads: model.architecture.attention=\[.*must list q, k, v and o"):
        head_masks(model, arch, {"model.layers.0.self_attn.o_proj": torch.ones(4, dtype=torch.bool)})
