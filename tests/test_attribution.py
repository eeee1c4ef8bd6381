import pytest
import torch

from simu_lightning.attribution import critical_neurons, prediction_samples
from simu_lightning.attribution.integrated_gradients import (activations, attribute, batches,
                                                              integrated_gradients, log_prob_at_scale,
                                                              prefix_cache)
from simu_lightning.data.datamodule import encode_split
from simu_lightning.errors import SimuError
from simu_lightning.models.architecture import architecture_of, down_projections


@pytest.fixture()
def forget_samples(tiny_model, small_benchmark, prompt_format):
    _, tokenizer = tiny_model
    forget = encode_split(small_benchmark["forget"], tokenizer, prompt_format, max_length=64)
    return forget, prediction_samples(forget, tokenizer.eos_token_id)


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
        gap = log_prob_at_scale(model, proj, batch, beta, 1.0) - log_prob_at_scale(model, proj, batch, beta, 0.0)
        errors = {m: (integrated_gradients(model, proj, batch, beta, m).sum(-1) - gap).abs() for m in (2, 16, 256)}
        assert errors[2].max() > errors[16].max() > errors[256].max()
        assert bool(((errors[256] <= 0.05 * gap.abs()) | (errors[256] <= 1e-3)).all())


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


@pytest.mark.parametrize("t", [0, 1.5, -0.1, "high"])
def test_threshold_outside_unit_interval_is_refused(t):
    with pytest.raises(SimuError, match="attribution.t"):
        critical_neurons({"a": torch.ones(2)}, t)


def test_sharing_the_prefix_cache_gives_the_same_attributions(tiny_model, forget_samples):
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    projs = list(down_projections(model, architecture_of(model)).values())
    batch = next(batches(forget_samples[1][:6], 6, tokenizer.pad_token_id))
    prefix = prefix_cache(model, batch)
    for proj, beta, cached_beta in zip(projs, activations(model, projs, batch), activations(model, projs, batch, prefix)):
        torch.testing.assert_close(beta, cached_beta)
        torch.testing.assert_close(integrated_gradients(model, proj, batch, beta, 5, prefix),
                                   integrated_gradients(model, proj, batch, beta, 5), rtol=1e-4, atol=1e-6)


def test_the_attribution_cache_key_covers_dtype_architecture_and_code_version(monkeypatch):
    from types import SimpleNamespace

    from simu_lightning.attribution import callback
    from simu_lightning.models.architecture import ARCHITECTURES

    forget = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    llama, gpt2 = SimpleNamespace(architecture=ARCHITECTURES["llama"]), SimpleNamespace(architecture=ARCHITECTURES["gpt2"])
    key = callback.NeuronAttribution(t=0.1, m=4, target_id="x").cache_key(llama, forget)
    assert callback.NeuronAttribution(t=0.5, m=4, target_id="x").cache_key(llama, forget) == key  # t is applied after
    assert callback.NeuronAttribution(t=0.1, m=4, target_id="x", dtype="bfloat16").cache_key(llama, forget) != key
    assert callback.NeuronAttribution(t=0.1, m=4, target_id="x").cache_key(gpt2, forget) != key
    monkeypatch.setattr(callback, "ATTRIBUTION_FORMAT", callback.ATTRIBUTION_FORMAT + 1)
    assert callback.NeuronAttribution(t=0.1, m=4, target_id="x").cache_key(llama, forget) != key


def plain_integrated_gradients(model, proj, input_ids, target, m):
    """The definition, one unpadded sample at a time, whole sequence, no cache: beta_k times the mean over
    alpha = 1/m ... 1 of d log p(target) / d a_k at a = alpha * beta (the down projection's input at the
    last position), each alpha its own forward and backward."""
    ids = torch.tensor([input_ids])
    captured = {}
    handle = proj.register_forward_pre_hook(lambda _m, args: captured.setdefault("beta", args[0][0, -1].detach().clone()))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    beta, grads = captured["beta"], []
    for i in range(1, m + 1):
        a = (i / m * beta).requires_grad_(True)
        handle = proj.register_forward_pre_hook(lambda _m, args, a=a: (torch.cat([args[0][:, :-1], a.view(1, 1, -1)], 1),))
        log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[target]
        handle.remove()
        grads.append(torch.autograd.grad(log_p, a)[0])
    return beta * torch.stack(grads).mean(0), beta


def test_batched_padded_and_cached_attribution_equals_the_plain_definition(tiny_model, forget_samples):
    """Samples of different lengths, left-padded into one batch and run on a shared prefix cache, against
    the plain full-sequence computation of each sample on its own."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    samples = forget_samples[1][:5]
    assert len({len(s["input_ids"]) for s in samples}) > 1  # padding really happens
    name, proj = next(iter(down_projections(model, architecture_of(model)).items()))
    scores = attribute(model, {name: proj}, samples, m=4, pad_token_id=tokenizer.pad_token_id)[name]
    expected = sum(plain_integrated_gradients(model, proj, s["input_ids"], s["target"], 4)[0] for s in samples)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_the_riemann_sum_closes_on_the_plain_log_probability_gap(tiny_model, forget_samples):
    """Completeness against plain forwards: sum_k Att_k -> log p(beta) - log p(0) as m grows."""
    model, tokenizer = tiny_model
    model.eval().requires_grad_(False)
    sample = forget_samples[1][3]
    proj = next(iter(down_projections(model, architecture_of(model)).values()))
    _, beta = plain_integrated_gradients(model, proj, sample["input_ids"], sample["target"], 1)
    ids = torch.tensor([sample["input_ids"]])

    def log_p(scale):
        handle = proj.register_forward_pre_hook(
            lambda _m, args: (torch.cat([args[0][:, :-1], (scale * beta).view(1, 1, -1)], 1),))
        with torch.no_grad():
            value = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[sample["target"]]
        handle.remove()
        return value

    gap = log_p(1.0) - log_p(0.0)
    batch = next(batches([sample], 1, tokenizer.pad_token_id))
    errors = [(integrated_gradients(model, proj, batch, beta.view(1, -1), m, prefix_cache(model, batch)).sum() - gap).abs()
              for m in (2, 16, 256)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= max(0.05 * gap.abs(), 1e-3)
