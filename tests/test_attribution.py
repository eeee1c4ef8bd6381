import pytest
import torch

from simu_lightning.attribution import critical_neurons
from simu_lightning.attribution.integrated_gradients import (
    SharedPrefix,
    activations,
    batches,
    integrated_gradients,
    log_prob_at_scale,
    quadrature,
)
from simu_lightning.attribution.scores import attribute
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import architecture_of, down_projections


def ig(model, proj, batch, beta, m, prefix=None, rule="riemann"):
    """One layer's attribution at m nodes of the given rule."""
    return integrated_gradients(model, [proj], batch, [beta], *quadrature(rule, m), prefix)[0]


def gap(model, projs, batch, betas, prefix=None):
    """log p(betas) - log p(0) with the listed layers scaled together: what completeness closes on."""
    return log_prob_at_scale(model, projs, batch, betas, 1.0, prefix) - log_prob_at_scale(
        model, projs, batch, betas, 0.0, prefix
    )


def test_one_sample_per_answer_token_without_eos(tiny_model, forget_samples):
    _, tokenizer = tiny_model
    forget, samples = forget_samples
    answer_tokens = sum(sum(1 for label in e["labels"] if label >= 0) - 1 for e in forget)  # minus EOS
    assert len(samples) == answer_tokens
    first = forget[0]
    start = next(i for i, label in enumerate(first["labels"]) if label >= 0)
    assert samples[0]["input_ids"] == first["input_ids"][:start] and samples[0]["target"] == first["input_ids"][start]


def test_completeness_error_shrinks_with_m_and_closes_at_large_m(tiny_model, forget_samples):
    """sum_k Att_i(w_l^k) -> log p(beta) - log p(0) for every sample, as the Riemann sum refines."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    projs = list(down_projections(model, architecture_of(model)).values())
    batch = next(batches(forget_samples[1][:12], 12, tokenizer.pad_token_id))
    betas = activations(model, projs, batch)
    for proj, beta in zip(projs, betas):
        closed = gap(model, [proj], batch, [beta])
        errors = {m: (ig(model, proj, batch, beta, m).sum(-1) - closed).abs() for m in (2, 16, 256)}
        assert errors[2].max() > errors[16].max() > errors[256].max()
        assert bool(((errors[256] <= 0.05 * closed.abs()) | (errors[256] <= 1e-3)).all())


def test_a_neuron_whose_column_is_zero_gets_exactly_zero(tiny_model, forget_samples):
    model, tokenizer = tiny_model
    projs = down_projections(model, architecture_of(model))
    name, proj = next(iter(projs.items()))
    with torch.no_grad():
        proj.weight[:, 7] = 0.0  # neuron 7 no longer reaches the residual stream
    scores = attribute(model, projs, forget_samples[1][:10], m=4, pad_token_id=tokenizer.pad_token_id)
    assert scores[name][7].item() == 0.0
    assert scores[name].abs().sum() > 0
    assert set(scores) == set(projs) and scores[name].shape == (proj.weight.shape[1],)


def test_attribution_leaves_the_model_as_it_found_it(tiny_model, forget_samples):
    model, tokenizer = tiny_model
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    attribute(model, down_projections(model, architecture_of(model)), forget_samples[1][:4], 3, tokenizer.pad_token_id)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_threshold_keeps_neurons_above_t_times_the_layer_maximum():
    scores = {"a": torch.tensor([0.1, 0.5, 1.0, -2.0]), "b": torch.tensor([-1.0, -0.5])}
    masks = critical_neurons(scores, t=0.4)
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [False, False]  # nothing raises the forget likelihood here
    assert critical_neurons(scores, t=1.0)["a"].tolist() == [False, False, True, False]


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"t": 0}, r"attribution.t must be in \(0, 1\] or auto, got 0"),
        ({"t": 1.5}, r"attribution.t must be in \(0, 1\] or auto, got 1.5"),
        ({"t": "high"}, r"attribution.t must be in \(0, 1\] or auto, got high"),
        ({"m": 0}, r"attribution.m must be an integer >= 1, got 0"),
        ({"quadrature": "simpson"}, r"attribution.quadrature must be one of riemann, gauss_legendre, got 'simpson'"),
        ({"mode": "sideways"}, r"attribution.mode must be one of layerwise, joint, first_order, got 'sideways'"),
        ({"exclude_retain": "maybe"}, r"attribution.exclude_retain must be true or false, got 'maybe'"),
    ],
)
def test_bad_attribution_settings_are_refused_where_they_are_built(setting, message):
    from simu_lightning.attribution.settings import AttributionSettings

    with pytest.raises(SimuError, match=f"^{message}$"):
        AttributionSettings(**setting)


def test_sharing_the_prefix_cache_gives_the_same_attributions(tiny_model, forget_samples):
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    projs = list(down_projections(model, architecture_of(model)).values())
    batch = next(batches(forget_samples[1][:6], 6, tokenizer.pad_token_id))
    prefix = SharedPrefix(model, batch)
    for proj, beta, cached_beta in zip(
        projs, activations(model, projs, batch), activations(model, projs, batch, prefix)
    ):
        torch.testing.assert_close(beta, cached_beta)
        torch.testing.assert_close(
            ig(model, proj, batch, beta, 5, prefix), ig(model, proj, batch, beta, 5), rtol=1e-4, atol=1e-6
        )
    # every use left the shared cache as it was: the prefix alone, no graph attached
    for repeat in (1, 5):
        assert prefix.cache(repeat).get_seq_length() == prefix.length
        assert not any(layer.keys.requires_grad for layer in prefix.cache(repeat).layers)


def test_the_copies_are_laid_out_as_positions_where_the_attention_reads_a_4d_mask(tiny_model, forget_samples):
    """sdpa and eager take the 4-D mask of the positions layout; flash attention does not, so it gets the rows;
    both layouts give the whole forget set's scores alike, and an unknown layout is refused by name."""
    from simu_lightning.attribution.integrated_gradients import copy_layout

    model, tokenizer = tiny_model
    assert model.config._attn_implementation == "sdpa" and copy_layout(model) == "positions"
    model.config._attn_implementation = "flash_attention_2"
    assert copy_layout(model) == "rows" and copy_layout(model, "positions") == "positions"
    model.config._attn_implementation = "sdpa"
    projs = down_projections(model, architecture_of(model))
    scores = {
        layout: attribute(model, projs, forget_samples[1][:12], 3, tokenizer.pad_token_id, 8, copies=layout)
        for layout in ("positions", "rows")
    }
    for name in projs:
        torch.testing.assert_close(scores["positions"][name], scores["rows"][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown copy layout 'columns': choose one of positions, rows"):
        attribute(model, projs, forget_samples[1][:2], 3, tokenizer.pad_token_id, copies="columns")


def test_the_attribution_cache_key_covers_dtype_architecture_and_code_version(monkeypatch):
    from types import SimpleNamespace

    from simu_lightning.attribution import callback
    from simu_lightning.attribution.settings import AttributionSettings
    from simu_lightning.models.architecture import ARCHITECTURES

    forget = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    llama, gpt2 = (
        SimpleNamespace(architecture=ARCHITECTURES["llama"], compute_dtype="float32"),
        SimpleNamespace(architecture=ARCHITECTURES["gpt2"], compute_dtype="float32"),
    )
    key = callback.NeuronAttribution(AttributionSettings(t=0.1, m=4), target_id="x").cache_key(llama, forget)
    assert (
        callback.NeuronAttribution(AttributionSettings(t=0.5, m=4), target_id="x").cache_key(llama, forget) == key
    )  # t is applied after
    assert (
        callback.NeuronAttribution(
            AttributionSettings(t=0.1, m=4, quadrature="gauss_legendre"), target_id="x"
        ).cache_key(llama, forget)
        != key
    )
    assert (
        callback.NeuronAttribution(AttributionSettings(t=0.1, m=4, mode="joint"), target_id="x").cache_key(
            llama, forget
        )
        != key
    )
    assert callback.NeuronAttribution(AttributionSettings(t=0.1, m=4), target_id="x").cache_key(gpt2, forget) != key
    # bf16 compute (bf16-mixed, bf16-true, FSDP2's bf16 gathers) over float32 weights: not the float32 scores
    bf16_compute = SimpleNamespace(architecture=ARCHITECTURES["llama"], compute_dtype="bfloat16")
    bf16_key = callback.NeuronAttribution(AttributionSettings(t=0.1, m=4), target_id="x").cache_key(
        bf16_compute, forget
    )
    assert bf16_key != key
    monkeypatch.setattr(callback, "ATTRIBUTION_FORMAT", callback.ATTRIBUTION_FORMAT + 1)
    assert callback.NeuronAttribution(AttributionSettings(t=0.1, m=4), target_id="x").cache_key(llama, forget) != key


def test_the_module_reports_the_dtype_its_forward_passes_compute_in(tiny_model):
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from simu_lightning.unlearning.losses import GradDiff
    from simu_lightning.unlearning.methods import Method
    from simu_lightning.unlearning.module import UnlearningModule

    model, _ = tiny_model
    method = Method(name="fo", trainable="all", optimizer=torch.optim.AdamW)
    arch = architecture_of(model)
    plain = UnlearningModule(model, method, GradDiff(), arch, parallel={"mixed_precision": "bf16"})
    assert plain.compute_dtype == "float32"  # not sharded (trainer=default): FSDP's policy never applies
    plain._trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    assert plain.compute_dtype == "bfloat16"  # bf16-mixed's autocast, over float32 weights
    plain._trainer = None
    model.to(torch.bfloat16)  # bf16-true's conversion
    assert plain.compute_dtype == "bfloat16"
    model.to(torch.float32)
    for p in model.parameters():
        p.device_mesh = "mesh"  # as fully_shard leaves them: DTensors on the strategy's device mesh
    assert UnlearningModule(model, method, GradDiff(), arch, parallel={"mixed_precision": "bf16"}).compute_dtype == (
        "bfloat16"
    )
    assert UnlearningModule(model, method, GradDiff(), arch, parallel={"mixed_precision": None}).compute_dtype == (
        "float32"
    )


def plain_integrated_gradients(model, projs, input_ids, target, alphas, weights):
    """The definition, one unpadded sample at a time, whole sequence, no cache: for each listed layer,
    beta_k times sum_j w_j d log p(target) / d a_k at a = alpha_j * beta (the down projection's input at
    the last position), all listed layers scaled together, each node its own forward and backward."""
    ids = torch.tensor([input_ids])
    betas = {}

    def capture(i):
        def hook(_module, args):  # returns None: a pre-hook's return value would replace the input
            betas[i] = args[0][0, -1].detach().clone()

        return hook

    handles = [proj.register_forward_pre_hook(capture(i)) for i, proj in enumerate(projs)]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    total = [torch.zeros_like(betas[i]) for i in range(len(projs))]
    for alpha, weight in zip(alphas.tolist(), weights.tolist()):
        scaled = [(alpha * betas[i]).requires_grad_(True) for i in range(len(projs))]
        handles = [
            proj.register_forward_pre_hook(lambda _m, args, a=a: (torch.cat([args[0][:, :-1], a.view(1, 1, -1)], 1),))
            for proj, a in zip(projs, scaled)
        ]
        log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[target]
        for handle in handles:
            handle.remove()
        for i, grad in enumerate(torch.autograd.grad(log_p, scaled)):
            total[i] += weight * grad
    return [betas[i] * total[i] for i in range(len(projs))], [betas[i] for i in range(len(projs))]


def test_batched_padded_and_cached_attribution_equals_the_plain_definition(tiny_model, forget_samples):
    """Samples of different lengths, left-padded into one batch and run on a shared prefix cache, against
    the plain full-sequence computation of each sample on its own."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    samples = forget_samples[1][:5]
    assert len({len(s["input_ids"]) for s in samples}) > 1  # padding really happens
    name, proj = next(iter(down_projections(model, architecture_of(model)).items()))
    scores = attribute(model, {name: proj}, samples, m=4, pad_token_id=tokenizer.pad_token_id)[name]
    expected = sum(
        plain_integrated_gradients(model, [proj], s["input_ids"], s["target"], *quadrature("riemann", 4))[0][0]
        for s in samples
    )
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "mode,rule",
    [("layerwise", "gauss_legendre"), ("joint", "riemann"), ("joint", "gauss_legendre"), ("first_order", None)],
)
def test_every_fast_mode_equals_its_plain_definition(tiny_model, forget_samples, mode, rule):
    """Batched, padded, on the shared prefix: each mode against the plain per-sample computation (layer-wise:
    one layer scaled at a time; joint: every layer together; first order: each layer's gradient at alpha = 1)."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    samples = forget_samples[1][:5]
    projs = down_projections(model, architecture_of(model))
    scores = attribute(
        model, projs, samples, m=3, pad_token_id=tokenizer.pad_token_id, quadrature_rule=rule or "riemann", mode=mode
    )
    nodes = quadrature("riemann", 1) if mode == "first_order" else quadrature(rule, 3)  # first order: alpha = 1
    layers = [list(projs.values())] if mode == "joint" else [[p] for p in projs.values()]
    expected = [
        sum(
            torch.stack(plain_integrated_gradients(model, group, s["input_ids"], s["target"], *nodes)[0])
            for s in samples
        )
        for group in layers
    ]
    torch.testing.assert_close(
        torch.stack(list(scores.values())), torch.cat(expected).view(len(projs), -1), rtol=1e-4, atol=1e-5
    )


def test_quadrature_nodes_and_weights_match_hand_values():
    alphas, weights = quadrature("riemann", 4)
    assert alphas.tolist() == [0.25, 0.5, 0.75, 1.0] and weights.tolist() == [0.25] * 4
    alphas, weights = quadrature("gauss_legendre", 2)  # 1/2 -+ 1/(2 sqrt 3), weights 1/2
    torch.testing.assert_close(alphas, torch.tensor([0.5 - 0.5 / 3**0.5, 0.5 + 0.5 / 3**0.5], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # exact for a cubic: integral_0^1 (4 a^3 - 3 a^2 + 1) da = 1
    assert float((weights * (4 * alphas**3 - 3 * alphas**2 + 1)).sum()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown quadrature 'simpson'"):
        quadrature("simpson", 4)


@pytest.fixture()
def memorised_model(tiny_model, forget_samples):
    """The tiny model trained until it predicts its forget answers: a trained model's integrand is
    concentrated near alpha = 0, as on a real target, which is where the Riemann sum struggles."""
    model, tokenizer = tiny_model
    from simu_lightning.data.formatting import collate

    batch = collate(forget_samples[0], tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        optimizer.zero_grad()
        model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False), tokenizer


def test_gauss_legendre_reaches_completeness_with_far_fewer_nodes_than_the_riemann_sum(memorised_model, forget_samples):
    """Measured: the fewest nodes at which every (sample, layer) completeness error is within 1% of its gap."""
    model, tokenizer = memorised_model
    projs = list(down_projections(model, architecture_of(model)).values())
    batch = next(batches(forget_samples[1][:16], 16, tokenizer.pad_token_id))
    prefix = SharedPrefix(model, batch)
    betas = activations(model, projs, batch, prefix)
    gaps = [gap(model, [proj], batch, [beta], prefix) for proj, beta in zip(projs, betas)]

    def fewest_nodes(rule):
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            if all(
                ((ig(model, proj, batch, beta, m, prefix, rule).sum(-1) - g).abs() <= 0.01 * g.abs() + 1e-4).all()
                for proj, beta, g in zip(projs, betas, gaps)
            ):
                return m
        return 1024

    gauss, riemann = fewest_nodes("gauss_legendre"), fewest_nodes("riemann")
    assert gauss * 8 <= riemann, (gauss, riemann)


def test_joint_attribution_closes_on_the_gap_of_all_layers_scaled_together(memorised_model, forget_samples):
    model, tokenizer = memorised_model
    projs = list(down_projections(model, architecture_of(model)).values())
    batch = next(batches(forget_samples[1][:8], 8, tokenizer.pad_token_id))
    betas = activations(model, projs, batch)
    atts = integrated_gradients(model, projs, batch, betas, *quadrature("gauss_legendre", 32))
    closed = gap(model, projs, batch, betas)
    torch.testing.assert_close(sum(att.sum(-1) for att in atts), closed, rtol=1e-2, atol=1e-3)


def test_first_order_equals_the_one_node_layerwise_riemann_sum_but_not_the_joint_one(tiny_model, forget_samples):
    """At alpha = 1 the layer-wise integrand is the total derivative; the joint one holds the later layers'
    activations fixed, so its gradient misses the paths through their MLPs."""
    model, tokenizer = tiny_model
    projs = down_projections(model, architecture_of(model))
    samples = forget_samples[1][:6]
    first = attribute(model, projs, samples, 20, tokenizer.pad_token_id, mode="first_order")
    layerwise = attribute(model, projs, samples, 1, tokenizer.pad_token_id, mode="layerwise")
    joint = attribute(model, projs, samples, 1, tokenizer.pad_token_id, mode="joint")
    first_layer, last_layer = list(projs)[0], list(projs)[-1]
    for name in projs:
        torch.testing.assert_close(first[name], layerwise[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joint[last_layer], layerwise[last_layer], rtol=1e-5, atol=1e-6)  # nothing after it
    assert not torch.allclose(joint[first_layer], layerwise[first_layer], rtol=1e-3, atol=1e-5)


def test_an_unknown_mode_is_refused(tiny_model, forget_samples):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="unknown attribution mode 'fast'"):
        attribute(
            model,
            down_projections(model, architecture_of(model)),
            forget_samples[1][:2],
            2,
            tokenizer.pad_token_id,
            mode="fast",
        )


def test_the_riemann_sum_closes_on_the_plain_log_probability_gap(tiny_model, forget_samples):
    """Completeness against plain forwards: sum_k Att_k -> log p(beta) - log p(0) as m grows."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    sample = forget_samples[1][3]
    proj = next(iter(down_projections(model, architecture_of(model)).values()))
    _, (beta,) = plain_integrated_gradients(
        model, [proj], sample["input_ids"], sample["target"], *quadrature("riemann", 1)
    )
    ids = torch.tensor([sample["input_ids"]])

    def log_p(scale):
        handle = proj.register_forward_pre_hook(
            lambda _m, args: (torch.cat([args[0][:, :-1], (scale * beta).view(1, 1, -1)], 1),)
        )
        with torch.no_grad():
            value = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[sample["target"]]
        handle.remove()
        return value

    closed = log_p(1.0) - log_p(0.0)
    batch = next(batches([sample], 1, tokenizer.pad_token_id))
    errors = [
        (ig(model, proj, batch, beta.view(1, -1), m, SharedPrefix(model, batch)).sum() - closed).abs()
        for m in (2, 16, 256)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= max(0.05 * closed.abs(), 1e-3)
