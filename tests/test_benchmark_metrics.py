"""TOFU's and LUME's formulas against values worked out by hand."""

import math

import pytest
import torch

from simu_lightning.evaluation import lume, metrics, qa


def test_truth_ratio_aggregators():
    ratios = [0.5, 2.0, 1.0]
    # forget: mean(min(tr, 1/tr)) = (0.5 + 0.5 + 1) / 3
    assert qa.truth_ratio_score(ratios, forget=True) == pytest.approx(2 / 3, rel=1e-6)
    # others: mean(max(0, 1 - tr)) = (0.5 + 0 + 0) / 3
    assert qa.truth_ratio_score(ratios, forget=False) == pytest.approx(1 / 6, rel=1e-6)


def test_model_utility_is_the_harmonic_mean_of_nine_values():
    summary = {
        "retain": {"answer_prob": 0.5, "normalised_prob": 0.9, "rougeL_recall": 1.0, "truth_ratio": 0.5},
        "real_authors": {"answer_prob": 0.9, "normalised_prob": 0.25, "rougeL_recall": 0.5, "truth_ratio": 1.0},
        "world_facts": {"answer_prob": 0.9, "normalised_prob": 1.0, "rougeL_recall": 1.0, "truth_ratio": 0.5},
    }
    # retain uses answer_prob, the others the normalised probability:
    # 9 / (2 + 1 + 2 + 4 + 2 + 1 + 1 + 1 + 2) = 9 / 16
    assert qa.model_utility(summary, ("retain", "real_authors", "world_facts")) == pytest.approx(9 / 16)
    assert qa.model_utility({"retain": {"answer_prob": 1.0}}, ("retain",)) is None  # no truth ratio, no utility


def test_forget_quality_is_the_two_sample_ks_p_value():
    # identical samples: D = 0, p = 1; fully separated samples of 3 and 3: D = 1, exact p = 2 / C(6, 3) = 0.1
    assert qa.forget_quality([0.5, 1.0, 2.0], [0.5, 1.0, 2.0]) == pytest.approx(1.0)
    assert qa.forget_quality([0.1, 0.2, 0.3], [5.0, 6.0, 7.0]) == pytest.approx(0.1)
    assert qa.forget_quality([0.1], None) is None


def test_contains_answer():
    assert metrics.contains_answer("She was born in Paris, France.", "paris") == 1.0
    assert metrics.contains_answer("Lyon", "Paris") == 0.0


def test_lume_exact_match_is_strip_lower_equality():
    assert metrics.lume_exact_match("  2013 ", "2013") == 1.0
    assert metrics.lume_exact_match("Paris.", "paris") == 0.0  # punctuation counts, as in the official script


def test_mia_auc_and_score():
    # members' losses [1, 2], non-members' [3, 1.5]; a member beats a non-member in 3 of 4 pairs
    auc = lume.mia_auc([1.0, 2.0], [3.0, 1.5])
    assert auc == pytest.approx(0.75)
    assert metrics.mia_score(auc) == pytest.approx(0.5)
    assert metrics.mia_score(0.5) == 1.0


@pytest.mark.parametrize(
    "members, nonmembers, expected",
    [
        ([40, 41, 42], [45, 46, 47], 1.0),  # scores above ~37: a sigmoid first would tie them all (0.5)
        ([30, 35, 38], [39, 45, 60], 1.0),  # straddling it (0.833 through a sigmoid)
        ([300.0, 200.0], [250.0, 400.0], 3 / 4),  # pairs (m, n) with n > m: (300, 400) (200, 250) (200, 400)
        ([1.0, 2.0, 2.0], [2.0, 3.0], (1 + 1 + 0.5 + 1 + 0.5 + 1) / 6),  # member 1 loses both; each 2 ties one
        ([-5.0, -1.0], [-3.0, -0.5], 3 / 4),  # negative scores: (-5, -3) (-5, -0.5) (-1, -0.5)
        ([7.0, 7.0], [7.0], 0.5),
    ],
)
def test_mia_auc_is_the_share_of_member_nonmember_pairs_the_nonmember_wins(members, nonmembers, expected):
    assert metrics.mia_auc(members, nonmembers) == pytest.approx(expected)


def test_mia_auc_equals_scipys_mann_whitney_u_on_large_tied_and_negative_scores():
    from scipy.stats import mannwhitneyu

    generator = torch.Generator().manual_seed(0)
    # above the sigmoid's saturation, in the hundreds, negative (rounded: many ties), inside [0, 1]
    for scale, offset, decimals in ((10.0, 40.0, 1), (100.0, 0.0, 0), (5.0, -50.0, 0), (1e-3, 0.5, 4)):
        members = (torch.randn(23, generator=generator) * scale + offset).round(decimals=decimals).tolist()
        nonmembers = (torch.randn(31, generator=generator) * scale + offset + scale / 2).round(decimals=decimals)
        nonmembers = nonmembers.tolist()
        u = mannwhitneyu(nonmembers, members, alternative="two-sided").statistic
        assert metrics.mia_auc(members, nonmembers) == pytest.approx(u / (23 * 31), abs=1e-12)


def test_mia_auc_of_an_empty_set_is_nan():
    assert math.isnan(metrics.mia_auc([], [1.0]))


def test_lume_summary_task_aggregate_and_final_score():
    rows = [
        {"task": "Task1", "kind": "sc", "rougeL_recall": 0.5, "exact_match": None, "answer_prob": 0.2},
        {"task": "Task1", "kind": "qa", "rougeL_recall": None, "exact_match": 1.0, "answer_prob": 0.4},
        {"task": "Task2", "kind": "sc", "rougeL_recall": 1.0, "exact_match": None, "answer_prob": 0.6},
        {"task": "Task2", "kind": "qa", "rougeL_recall": None, "exact_match": 0.0, "answer_prob": 0.8},
    ]
    summary = lume.summarise(rows)
    assert summary["rougeL_recall"] == pytest.approx(0.75) and summary["exact_match"] == pytest.approx(0.5)
    assert summary["Task1/regurgitation"] == 0.5 and summary["Task2/knowledge"] == 0.0
    forget = {"Task1/regurgitation": 0.5, "Task1/knowledge": 0.75, "Task2/regurgitation": 0.0, "Task2/knowledge": 0.5}
    retain = {"Task1/regurgitation": 1.0, "Task1/knowledge": 0.5, "Task2/regurgitation": 0.25, "Task2/knowledge": 1.0}
    # forget as 1 - v: 0.5, 0.25, 1, 0.5; retain: 1, 0.5, 0.25, 1 -> 8 / (2+4+1+2+1+2+4+1)
    aggregate = lume.task_aggregate({"forget": {**forget, "rougeL_recall": 0.9}, "retain": retain})
    assert aggregate == pytest.approx(8 / 17)
    assert lume.final_score({"task_aggregate": 0.3, "mmlu": 0.6, "mia_score": 0.9}) == pytest.approx(0.6)
    assert lume.final_score({"task_aggregate": 0.3, "mia_score": 0.9}) is None


def test_mmlu_without_lm_eval_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    from simu_lightning.utils.errors import SimuError

    with pytest.raises(SimuError, match=r"evaluation.mmlu=true needs lm-eval: pip install -e '.\[mmlu\]'"):
        lume.mmlu_accuracy(model=None, tokenizer=None, batch_size=1)


def test_mmlu_runs_the_official_five_shot_protocol_and_warns_below_the_eligibility_threshold(monkeypatch, caplog):
    """lm-eval stood in for by a module that records its call (the real one downloads MMLU)."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = lambda **kwargs: calls.append(kwargs) or {"results": {"mmlu": {"acc,none": accuracy}}}
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = lambda **kwargs: kwargs
    tasks = types.ModuleType("lm_eval.tasks")
    tasks.TaskManager = lambda include_path=None: include_path
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.models", models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", huggingface)
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", tasks)
    accuracy = 0.37
    with caplog.at_level("WARNING"):
        assert lume.mmlu_accuracy(model=None, tokenizer=None, batch_size=1) == 0.37
    assert calls[-1]["num_fewshot"] == 5 and calls[-1]["tasks"] == ["mmlu"]
    assert "below LUME's eligibility threshold 0.371" in caplog.text
    caplog.clear()
    accuracy = 0.371
    with caplog.at_level("WARNING"):
        lume.mmlu_accuracy(model=None, tokenizer=None, batch_size=1, num_fewshot=0)
    assert calls[-1]["num_fewshot"] == 0 and "threshold" not in caplog.text


def test_evaluation_dtype_autocasts_the_matmuls_and_leaves_the_weights_alone():
    import torch

    from simu_lightning.evaluation.evaluate import evaluation_precision

    layer = torch.nn.Linear(3, 2)
    x = torch.tensor([[1.0, 1 / 3, 0.1]])
    with evaluation_precision(layer, "bfloat16"):
        low = layer(x)
    assert low.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    expected = (x.bfloat16().float() @ layer.weight.bfloat16().float().T + layer.bias.bfloat16().float()).bfloat16()
    torch.testing.assert_close(low, expected, rtol=1e-2, atol=1e-2)
    with evaluation_precision(layer, "float32"):  # already the model's dtype: nothing changes
        assert layer(x).dtype == torch.float32
    with pytest.raises(ValueError, match="evaluation.dtype='bf16' is not a torch dtype"):
        evaluation_precision(layer, "bf16")
