"""The benchmark suite at a tiny size: every benchmark runs and reports what the README's table needs.
No timing is asserted here (speed targets live in the suite's own output, not in tests)."""

import argparse
import json
import math
import sys

import pytest
import torch

from perf.run import main


# perf.common.SIZES["tiny"] by hand: hidden 32, 2 layers, d_ff 64, vocabulary 256; OLMo's layer norms carry no
# weights, and its output head is not tied to the input embeddings
HIDDEN, LAYERS, D_FF, VOCAB = 32, 2, 64, 256
ATTENTION, MLP, DOWN = 4 * HIDDEN * HIDDEN, 3 * HIDDEN * D_FF, HIDDEN * D_FF  # q, k, v, o; gate, up, down
TINY_PARAMETERS = 2 * VOCAB * HIDDEN + LAYERS * (ATTENTION + MLP)  # 36864
TINY_TENSORS = 2 + LAYERS * 7


def quotient_of_rounded(ratio, numerator, denominator, places) -> bool:
    """Whether `ratio` is numerator / denominator, each figure as reported: rounded to its number of decimal
    places (`places`: the numerator's, the denominator's, the ratio's; None: exact). The ratio must lie
    between the least and the largest quotient the unrounded figures allow."""
    half = [0.0 if p is None else 0.5 * 10.0**-p for p in places]
    low = max(numerator - half[0], 0.0) / (denominator + half[1])
    high = (numerator + half[0]) / (denominator - half[1]) if denominator > half[1] else math.inf
    return low - half[2] - 1e-12 <= ratio <= high + half[2] + 1e-12


def test_the_quotient_of_rounded_figures_allows_their_rounding_and_no_more():
    assert quotient_of_rounded(2.0, 1.0, 0.5, (None, None, None))
    assert not quotient_of_rounded(2.001, 1.0, 0.5, (None, None, None))
    # 0.12 and 1.04 stand for [0.115, 0.125] and [1.035, 1.045]: the quotient lies in [8.28, 9.087]
    assert quotient_of_rounded(8.851, 1.04, 0.12, (2, 2, 3)) and quotient_of_rounded(9.087, 1.04, 0.12, (2, 2, 3))
    assert not quotient_of_rounded(9.1, 1.04, 0.12, (2, 2, 3)) and not quotient_of_rounded(8.2, 1.04, 0.12, (2, 2, 3))
    assert not quotient_of_rounded(1 / 8.851, 1.04, 0.12, (2, 2, 3))  # the ratio the wrong way round


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_figures(tmp_path):
    """Every figure that follows from others or from the smoke profile's sizes, checked against them: counts
    by hand, byte counts of the optimiser state, and every ratio against the quotient of the figures it is
    reported beside (to their rounding). Never a time itself."""
    out = tmp_path / "results.json"
    main(["--profile", "smoke", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["machine"]["device"] in ("cpu", "cuda")
    on_cpu = results["machine"]["device"] == "cpu"

    optimizer = results["optimizer"]
    assert optimizer["model"] == f"tiny ({TINY_PARAMETERS / 1e6:.1f}M parameters, {TINY_TENSORS} tensors)"
    # SIMU trains the attention and the down projections
    assert optimizer["simu_trainable_fraction"] == round(LAYERS * (ATTENTION + DOWN) / TINY_PARAMETERS, 4)
    ms = optimizer["median_ms"]
    for ratio, numerator, denominator in (
        ("ratio_sophia_to_adamw_fused", "sophia_compiled", "adamw_fused"),
        ("ratio_eager_sophia_to_adamw_fused", "sophia_eager", "adamw_fused"),
        ("ratio_simu_masked_to_sophia_all", "simu_masked_compiled", "sophia_compiled"),
    ):
        assert quotient_of_rounded(optimizer[ratio], ms[numerator], ms[denominator], (2, 2, 3)), ratio

    attribution = results["attribution"]
    # 3 rows of 12 random tokens whose last 3 are the answer, no EOS: one prediction sample per answer token
    assert (attribution["forget_rows"], attribution["prediction_samples"], attribution["layers"]) == (3, 9, LAYERS)
    rows = attribution["rows"]
    assert rows[0]["reference"] and rows[0]["jaccard_t0.1"] == 1.0 and rows[0]["spearman"] == 1.0
    assert {r["mode"] for r in rows} == {"layerwise", "joint", "first_order"}
    assert all(0 <= r["jaccard_t0.4"] <= 1 and r["completeness_error"] >= 0 for r in rows)
    for r in rows:
        # layer-wise scales one layer at a time (m passes each), joint every layer at once, first order not at all
        assert r["passes_per_batch"] == {"layerwise": LAYERS * r["m"], "joint": r["m"], "first_order": 1}[r["mode"]]
        # cost: the configuration's seconds in units of one forward+backward over the forget set
        assert quotient_of_rounded(r["cost"], r["seconds"], attribution["forward_backward_s"], (2, 3, 1)), r
    # the fastest configuration whose masks agree with the reference's (Jaccard >= 0.95 at every t), or none
    agreeing = [r for r in rows[1:] if min(r[f"jaccard_t{t}"] for t in (0.1, 0.2, 0.4)) >= 0.95]
    named = {f"{r['mode']}/{r['quadrature']}/{r['m']}": r for r in agreeing}
    fastest = attribution["fastest_with_jaccard_0.95"]
    if agreeing:
        assert fastest in named and all(named[fastest]["seconds"] <= r["seconds"] for r in agreeing)
    else:
        assert fastest is None
    (layouts,) = results["attribution"]["layouts"]  # copies as positions against rows, side by side
    assert layouts["max_relative_difference"] < 1e-4 and layouts["jaccard_t0.1"] == 1.0
    assert (layouts["forget_rows"], layouts["prediction_samples"]) == (3, 9)
    assert quotient_of_rounded(layouts["speedup"], layouts["rows_s"], layouts["positions_s"], (2, 2, 2))

    overhead = results["overhead"]
    assert overhead["tokens_per_step"] == 2 * 8 * 64  # a forget and a retain batch of 8 rows of 64 tokens
    # the two loops' time ratio is the ratio of their throughputs over the same tokens
    ratio, lightning, plain = (
        overhead[k] for k in ("ratio_lightning_to_plain", "lightning_tokens_per_s", "plain_tokens_per_s")
    )
    assert quotient_of_rounded(ratio, lightning, plain, (1, 1, 3))

    memory = results["memory"]
    per_method = memory["per_method"]
    assert set(per_method) == {"fo", "so", "simu", "simu_full_state"}
    for method, figures in per_method.items():  # the step's own memory: the peak above what was in use before
        assert figures["step_mb"] == pytest.approx(figures["peak_mb"] - figures["model_mb"], abs=0.15), method
    assert per_method[memory["lowest"]]["step_mb"] == min(m["step_mb"] for m in per_method.values())
    for key, numerator, denominator in (
        ("simu_step_mb_vs_so", "simu", "so"),
        ("simu_step_mb_vs_fo", "simu", "fo"),
    ):
        a, b = per_method[numerator]["step_mb"], per_method[denominator]["step_mb"]
        assert memory[key] is None if b <= 0 else quotient_of_rounded(memory[key], a, b, (1, 1, 3)), key
    compact, full = (per_method[m]["down_proj_state_mb"] for m in ("simu", "simu_full_state"))
    assert 0 < compact < 0.5 * full  # the compact state holds a fraction of the full-size one
    assert quotient_of_rounded(memory["simu_down_proj_state_compact_vs_full"], compact, full, (4, 4, 3))
    if on_cpu:  # fp32 weights (perf.common.dtype), and so fp32 optimiser state: 4 bytes an entry
        # the optimiser state in bytes: AdamW's two moments, Sophia's m and h, an entry each per trained weight
        def mb(entries, places=2):
            return round(2 * entries * 4 / 2**20, places)

        # SIMU's masks in the benchmark (perf.loop.prepare): per down projection, a neuron is critical where
        # a uniform draw falls below 0.1, the draws from one generator seeded 0
        generator = torch.Generator().manual_seed(0)
        critical = sum(int((torch.rand(D_FF, generator=generator) < 0.1).sum()) for _ in range(LAYERS))
        assert 0 < critical < LAYERS * D_FF
        assert per_method["fo"]["optimizer_state_mb"] == per_method["so"]["optimizer_state_mb"] == mb(TINY_PARAMETERS)
        assert per_method["simu_full_state"]["optimizer_state_mb"] == mb(LAYERS * (ATTENTION + DOWN))
        # the compact state: the down projections' m and h for the critical neurons' columns alone
        assert per_method["simu"]["optimizer_state_mb"] == mb(LAYERS * ATTENTION + critical * HIDDEN)
        assert full == mb(LAYERS * DOWN, 4) and compact == mb(critical * HIDDEN, 4)

    evaluation = results["evaluation"]  # 4 authors: 1 forget and 3 retain of 8 questions each, 32 world facts
    assert evaluation["prompts"] == 8 + 3 * 8 + 32
    plain, sorted_pass = evaluation["generation_plain_loop_s"], evaluation["generation_sorted_s"]
    assert quotient_of_rounded(evaluation["ratio_sorted_to_plain"], plain, sorted_pass, (3, 3, 3))
    point, step = evaluation["evaluation_tokens_per_s"], evaluation["step_tokens_per_s"]
    assert quotient_of_rounded(evaluation["ratio_evaluation_to_step_tokens_per_s"], point, step, (1, 1, 3))

    (row,) = results["scaling"]["rows"]  # the smoke profile: the tiny model, 2 forget rows, m = 2
    assert (row["model"], row["layers"], row["forget_rows"]) == ("tiny", LAYERS, 2)
    assert row["parameters_m"] == round(TINY_PARAMETERS / 1e6, 2)
    assert row["step_tokens"] == 2 * 8 * 64  # perf.loop.synthetic_batches' default: 8 rows of 64 tokens, twice
    assert row["samples"] == 2 * 8  # a sample per answer token, 8 per row
    assert row["sample_passes"] == LAYERS * 2 * row["samples"]  # layer-wise at m = 2: layers x m per sample
    assert row["attribution_s"] > 0

    utilisation = results["utilisation"]
    assert [r["method"] for r in utilisation["step"]] == ["fo", "so", "simu"]
    assert not on_cpu or utilisation["peak_bf16_tflops"] is None  # no peak to compare with on a CPU
    per_token = 6 * LAYERS * (ATTENTION + MLP) + 12 * LAYERS * HIDDEN * 16  # PaLM's: 6 N + 12 L d T at T = 16
    for r in utilisation["step"]:
        tokens = 2 * 2 * 16  # a forget and a retain batch of 2 rows of 16 tokens
        assert quotient_of_rounded(r["tokens_per_s"], tokens, r["step_s"], (None, 4, 0)), r
        passes = 1 if r["method"] == "fo" else 2  # Sophia's Hessian estimate runs both batches again
        assert quotient_of_rounded(
            r["model_tflops_per_s"], passes * tokens * per_token / 1e12, r["step_s"], (None, 4, 2)
        )
        peak = utilisation["peak_bf16_tflops"]
        assert (
            r["mfu"] is None
            if peak is None
            else quotient_of_rounded(r["mfu"], r["model_tflops_per_s"], peak, (2, None, 3))
        )
    throughput = utilisation["attribution"]
    assert throughput["answer_tokens"] == 2 * 32  # two rows of 32 answer tokens
    assert quotient_of_rounded(
        throughput["answer_tokens_per_s"], throughput["answer_tokens"], throughput["seconds"], (None, 2, 2)
    )


def test_model_flops_per_token_by_hand():
    from perf.utilisation import flops_per_token

    # tiny: d = 32, L = 2, d_ff = 64: N = 2 (4 d^2 + 3 d d_ff) = 20480; 6 N + 12 L d T at T = 16
    assert flops_per_token("tiny", 16) == 6 * 20480 + 12 * 2 * 32 * 16


# --- `python -m perf` on CUDA, simulated on a CPU -------------------------------------------------------------
# The suite's device (perf.common.device) is made the meta device: a model the suite places there holds no
# data, and a spy on a model's forward records where its parameters and every input tensor are, then stops it
# before anything is computed. On a GPU node a batch left on the CPU beside a model on the GPU either crashes
# or (a model left on the CPU) measures the CPU: both show here as a device other than meta.

META = torch.device("meta")


class _Stopped(Exception):
    """The spy's stop at a model's first forward."""


@pytest.fixture()
def suite_on_meta(monkeypatch):
    """perf.common.device() and every `device` a perf module imported from it answer the meta device."""
    import perf.common

    original = perf.common.device
    for name, module in list(sys.modules.items()):
        if (name == "perf" or name.startswith("perf.")) and getattr(module, "device", None) is original:
            monkeypatch.setattr(module, "device", lambda: META)
    return META


def spy_on_forwards(model) -> list[tuple[set, set]]:
    """Records (parameter devices, input tensor devices) of the model's first forward, and stops it."""
    seen = []

    def hook(module, args, kwargs):
        inputs = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        seen.append(({p.device for p in module.parameters()}, {t.device for t in inputs}))
        raise _Stopped

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def random_forget_rows(vocab: int, rows: int = 3) -> list[dict]:
    from perf.loop import synthetic_batches

    batch = synthetic_batches(vocab, 1, rows=rows, length=12, answer=3)[0]["forget"]
    return [{"input_ids": i.tolist(), "labels": lab.tolist()} for i, lab in zip(batch["input_ids"], batch["labels"])]


@pytest.mark.parametrize("entry", ["forward_backward_seconds", "completeness_error", "run"])
def test_attribution_benchmark_runs_every_batch_on_the_suites_device(suite_on_meta, entry):
    from perf import attribution
    from perf.common import olmo
    from simu_lightning.attribution.integrated_gradients import prediction_samples
    from simu_lightning.models.architecture import architecture_of, down_projections

    model = olmo("tiny")  # placed on the suite's device, as on a GPU node
    assert {p.device for p in model.parameters()} == {META}
    tokenizer = argparse.Namespace(pad_token_id=0, eos_token_id=None)
    forget = random_forget_rows(model.config.vocab_size)
    seen = spy_on_forwards(model)
    calls = {
        "forward_backward_seconds": lambda: attribution.forward_backward_seconds(model, tokenizer, forget),
        "completeness_error": lambda: attribution.completeness_error(
            model,
            list(down_projections(model, architecture_of(model)).values()),
            prediction_samples(forget),
            0,
            "layerwise",
            "gauss_legendre",
            2,
        ),
        "run": lambda: attribution.run(model, tokenizer, forget, configs=[], reference=("layerwise", "riemann", 2)),
    }
    with pytest.raises(_Stopped):
        calls[entry]()
    ((parameters, inputs),) = seen
    assert parameters == {META} and inputs == {META}, f"model on {parameters}, its inputs on {inputs}"


def test_full_profile_target_is_on_the_suites_device(suite_on_meta, monkeypatch, tmp_path, tiny_model_dir):
    """perf/targets.py: the trained target the full profile's attribution benchmark measures is on the suite's
    device, in the precision it was loaded in, and the benchmark's batches meet it there. The target's
    preparation (training a tokenizer, fine-tuning) is replaced by a ready tiny model."""
    from perf import attribution, targets
    from simu_lightning.attribution.integrated_gradients import prediction_samples
    from simu_lightning.models.architecture import architecture_of, down_projections

    monkeypatch.setattr(targets, "cache_root", lambda configured: tmp_path)
    monkeypatch.setattr(targets, "base_model", lambda *args, **kwargs: tiny_model_dir)
    monkeypatch.setattr(targets, "finetuned", lambda *args, **kwargs: tiny_model_dir)
    model, tokenizer, forget = targets.trained_target("default")
    assert {p.device for p in model.parameters()} == {META}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # conf/model/tiny.yaml's dtype, kept
    assert forget
    # (not through attribution.run: its model.eval() has transformers kernelize the model for its device, and
    # the kernels package refuses the meta device)
    projs = list(down_projections(model, architecture_of(model)).values())
    seen = spy_on_forwards(model)
    with pytest.raises(_Stopped):
        attribution.completeness_error(
            model, projs, prediction_samples(forget), tokenizer.pad_token_id, "layerwise", "riemann", 2
        )
    ((parameters, inputs),) = seen
    assert parameters == {META} and inputs == {META}, f"model on {parameters}, its inputs on {inputs}"


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", None),  # no peak known: MFU is left out
    ],
)
def test_peak_bf16_is_the_most_specific_match_of_the_device_name(monkeypatch, name, peak):
    from perf import utilisation

    monkeypatch.setattr(utilisation, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert utilisation.peak_tflops() == peak


def test_no_peak_on_a_cpu(monkeypatch):
    from perf import utilisation

    monkeypatch.setattr(utilisation, "device", lambda: torch.device("cpu"))
    assert utilisation.peak_tflops() is None
