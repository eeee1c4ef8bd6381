"""The benchmark suite at a tiny size: every benchmark runs and reports what the README's table needs.
No timing is asserted here (speed targets live in the suite's own output, not in tests)."""

import argparse
import json
import sys

import pytest
import torch

from perf.run import main


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_figures(tmp_path):
    out = tmp_path / "results.json"
    main(["--profile", "smoke", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["machine"]["device"] in ("cpu", "cuda")
    assert results["optimizer"]["ratio_sophia_to_adamw_fused"] > 0
    assert results["optimizer"]["ratio_simu_masked_to_sophia_all"] > 0
    rows = results["attribution"]["rows"]
    assert rows[0]["reference"] and rows[0]["jaccard_t0.1"] == 1.0 and rows[0]["spearman"] == 1.0
    assert {r["mode"] for r in rows} == {"layerwise", "joint", "first_order"}
    assert all(0 <= r["jaccard_t0.4"] <= 1 and r["completeness_error"] >= 0 for r in rows)
    (layouts,) = results["attribution"]["layouts"]  # copies as positions against rows, side by side
    assert layouts["speedup"] > 0 and layouts["max_relative_difference"] < 1e-4 and layouts["jaccard_t0.1"] == 1.0
    assert results["overhead"]["ratio_lightning_to_plain"] > 0
    assert set(results["memory"]["per_method"]) == {"fo", "so", "simu", "simu_full_state"}
    utilisation = results["utilisation"]
    assert [r["method"] for r in utilisation["step"]] == ["fo", "so", "simu"]
    assert all(r["tokens_per_s"] > 0 for r in utilisation["step"])
    assert utilisation["attribution"]["answer_tokens"] == 2 * 32  # two rows of 32 answer tokens
    memory = results["memory"]["per_method"]  # the compact state holds a fraction of the full-size one
    assert 0 < memory["simu"]["down_proj_state_mb"] < 0.5 * memory["simu_full_state"]["down_proj_state_mb"]
    assert results["scaling"]["rows"] and all(r["attribution_s"] > 0 for r in results["scaling"]["rows"])
    evaluation = results["evaluation"]  # 4 authors: 1 forget and 3 retain of 8 questions each, 32 world facts
    assert evaluation["prompts"] == 8 + 3 * 8 + 32
    assert evaluation["ratio_sorted_to_plain"] > 0 and evaluation["ratio_evaluation_to_step_tokens_per_s"] > 0


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
