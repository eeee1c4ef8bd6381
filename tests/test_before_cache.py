"""The key of the cached evaluation before unlearning changes with the evaluation's own code."""

from simu_lightning.evaluation import before_cache


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
