"""The key of the cached evaluation before unlearning changes with the evaluation's own code."""

from dataclasses import fields

from simu_lightning.evaluation import before_cache
from simu_lightning.evaluation.types import EvaluationSettings


def test_the_evaluation_code_hash_changes_when_any_of_its_files_changes(tmp_path, monkeypatch):
    (tmp_path / "evaluation").mkdir()
    metric = tmp_path / "evaluation" / "metrics.py"
    metric.write_text("def rouge(): return 1\n")
    (tmp_path / "likelihood.py").write_text("IGNORE = -100\n")
    monkeypatch.setattr(before_cache, "PACKAGE", tmp_path)
    monkeypatch.setattr(before_cache, "EVALUATION_CODE", ("evaluation", "likelihood.py"))
    first = before_cache.evaluation_code_hash()
    assert before_cache.evaluation_code_hash() == first  # a function of the files alone
    metric.write_text("def rouge(): return 2\n")
    assert before_cache.evaluation_code_hash() != first
    metric.write_text("def rouge(): return 1\n")
    (tmp_path / "evaluation" / "muse.py").write_text("")  # a new file of the suite counts too
    assert before_cache.evaluation_code_hash() != first


def test_the_real_evaluation_code_is_all_hashed():
    """Every named part exists in the package: a renamed file would otherwise drop out of the key."""
    for part in (*before_cache.EVALUATION_CODE, *before_cache.ATTACK_CODE):
        assert (before_cache.PACKAGE / part).exists(), part


def test_settings_of_the_evaluations_during_unlearning_leave_the_key_alone():
    """A sweep over when and how the run evaluates during unlearning (probe points, every_n_steps) starts
    from the same target evaluation; a setting the evaluation reads (new tokens, rows) is a new key."""
    plain = EvaluationSettings(max_examples=20)
    during = EvaluationSettings(
        max_examples=20,
        every_n_steps=2,
        during={"truth_ratios": "needed", "full_around": "forget.rougeL_recall<=0.4"},
        cache_before=False,
    )
    assert before_cache.settings_read_before(during) == before_cache.settings_read_before(plain)
    for changed in (EvaluationSettings(max_examples=40), EvaluationSettings(max_examples=20, max_new_tokens=6)):
        assert before_cache.settings_read_before(changed) != before_cache.settings_read_before(plain)
    kept = set(before_cache.settings_read_before(plain))
    assert kept == {f.name for f in fields(EvaluationSettings)} - {"every_n_steps", "during", "cache_before"}
