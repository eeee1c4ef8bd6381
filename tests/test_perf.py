"""The benchmark suite at a tiny size: every benchmark runs and reports what the README's table needs.
No timing is asserted here (speed targets live in the suite's own output, not in tests)."""

import json

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
