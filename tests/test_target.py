"""Target preparation's contract with the loader and the cache: pinned revisions reach the loader, and
every input of a fine-tuned target is part of its cache key."""

from pathlib import Path

import pytest

from simu_lightning.data.formatting import PromptFormat
from simu_lightning.models import target as target_module
from simu_lightning.models.settings import ModelSettings
from simu_lightning.utils.errors import SimuError
from simu_lightning.models.target import Target, finetune_key, load_base, load_target, prepare_target

MODEL = {
    "name": "base",
    "source": "org/base",
    "revision": "abc123",
    "tokenizer": None,
    "dtype": "float32",
    "max_length": 64,
    "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 2, "seed": 0},
    "targets": {},
}


@pytest.fixture()
def loads(monkeypatch):
    calls = []
    monkeypatch.setattr(
        target_module,
        "load_pretrained",
        lambda source, dtype="float32", revision=None, tokenizer_source=None, trust_remote_code=False, **_: (
            calls.append((source, revision, trust_remote_code))
        ),
    )
    return calls


def test_a_ready_made_target_loads_at_its_pinned_revision(small_benchmark, loads, tmp_path):
    cfg = ModelSettings.of({**MODEL, "targets": {"synthetic": {"source": "org/target", "revision": "v1.2"}}})
    target = prepare_target(cfg, small_benchmark, PromptFormat(), tmp_path, make_trainer=None)
    load_target(target, "float32")
    assert loads == [("org/target", "v1.2", False)]


def test_a_hub_model_used_without_fine_tuning_loads_at_model_revision(small_benchmark, loads, tmp_path):
    cfg = ModelSettings.of({**MODEL, "finetune": None})
    load_target(prepare_target(cfg, small_benchmark, PromptFormat(), tmp_path, make_trainer=None), "float32")
    assert loads == [("org/base", "abc123", False)]


def test_the_base_model_loads_at_its_revision(loads):
    load_base(Target("folder", None, "id", base="org/base", base_revision="abc123"), "float32")
    assert loads == [("org/base", "abc123", False)]


@pytest.mark.parametrize(
    "change",
    [
        {"tokenizer": "org/other-tokenizer"},
        {"dtype": "bfloat16"},
        {"revision": "def456"},
        {"max_length": 128},
        {"finetune": {**MODEL["finetune"], "lr": 2e-3}},
    ],
)
def test_every_model_setting_a_target_depends_on_changes_its_key(small_benchmark, change):
    fmt = PromptFormat()
    base_key = finetune_key("org/base", small_benchmark, ("full",), ModelSettings.of(MODEL), fmt)
    assert finetune_key("org/base", small_benchmark, ("full",), ModelSettings.of({**MODEL, **change}), fmt) != base_key


@pytest.mark.parametrize(
    "numerics", [{"precision": "bf16-mixed"}, {"accumulate_grad_batches": 2}, {"gradient_clip_val": 1.0}]
)
def test_the_trainer_numerics_of_fine_tuning_change_the_key(small_benchmark, numerics):
    cfg, fmt = ModelSettings.of(MODEL), PromptFormat()
    plain = {"precision": "32-true", "accumulate_grad_batches": 1, "gradient_clip_val": None}
    assert finetune_key("b", small_benchmark, ("full",), cfg, fmt, plain) != finetune_key(
        "b", small_benchmark, ("full",), cfg, fmt, {**plain, **numerics}
    )


def test_the_code_version_is_part_of_the_key(small_benchmark, monkeypatch):
    cfg, fmt = ModelSettings.of(MODEL), PromptFormat()
    before = finetune_key("b", small_benchmark, ("full",), cfg, fmt)
    monkeypatch.setattr(target_module, "TARGET_FORMAT", target_module.TARGET_FORMAT + 1)
    assert finetune_key("b", small_benchmark, ("full",), cfg, fmt) != before


def test_code_shipped_with_a_hub_model_runs_only_when_the_config_says_so(small_benchmark, loads, tmp_path):
    for flag in (False, True):
        cfg = ModelSettings.of({**MODEL, "finetune": None, "trust_remote_code": flag})
        load_target(prepare_target(cfg, small_benchmark, PromptFormat(), tmp_path, make_trainer=None), "float32")
    assert [call[2] for call in loads] == [False, True]


def test_a_moved_cache_keeps_its_targets(small_benchmark, tmp_path, monkeypatch):
    """The fine-tuned target's key names the base by its place inside the cache, not by an absolute path:
    a cache copied to another machine (or another SIMU_CACHE_DIR) is reused, not rebuilt."""
    fine_tunes = []

    class NoTrainer:  # the fine-tuning's trainer: counts the fine-tunes, trains nothing
        def __init__(self, **_):
            fine_tunes.append("fit")

        def fit(self, module, loader):
            pass

        callback_metrics = {}

    cfg = ModelSettings.of(
        {
            **MODEL,
            "source": "tiny",
            "revision": None,
            "tiny": {"vocab_size": 300, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
        }
    )
    first = prepare_target(cfg, small_benchmark, PromptFormat(), tmp_path / "a", make_trainer=NoTrainer)
    built = len(fine_tunes)
    assert built == 2  # the retain model and the target
    (tmp_path / "a").rename(tmp_path / "b")
    moved = prepare_target(cfg, small_benchmark, PromptFormat(), tmp_path / "b", make_trainer=NoTrainer)
    assert len(fine_tunes) == built  # nothing fine-tuned again
    assert moved.target_id == first.target_id
    assert Path(moved.source).parent == tmp_path / "b" / "models"


def test_a_moved_cache_keeps_the_retain_models_truth_ratios(tiny_model_dir, small_benchmark, tmp_path, monkeypatch):
    """The retain model's forget truth ratios are keyed by its place inside the cache: a moved cache reads
    them instead of evaluating the retain model again."""
    import shutil

    from simu_lightning.evaluation import retain_model
    from simu_lightning.evaluation.types import EvaluationSettings

    shutil.copytree(tiny_model_dir, tmp_path / "a" / "models" / "retain")
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=8, max_examples=4)
    args = (small_benchmark, PromptFormat(), settings, "float32")
    first = retain_model.truth_ratio_rows(str(tmp_path / "a" / "models" / "retain"), *args, tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")

    def no_evaluation(*_, **__):
        raise AssertionError("the retain model was evaluated again")

    monkeypatch.setattr(retain_model, "load_pretrained", no_evaluation)
    moved = retain_model.truth_ratio_rows(str(tmp_path / "b" / "models" / "retain"), *args, tmp_path / "b")
    assert moved == first


def test_model_settings_name_the_setting_at_fault():
    with pytest.raises(SimuError, match=r"^model\.max_len is not a model setting \(known: "):
        ModelSettings.of({**MODEL, "max_len": 64})
    with pytest.raises(SimuError, match=r"^model\.max_length must be a positive integer, got 0$"):
        ModelSettings.of({**MODEL, "max_length": 0})
    assert ModelSettings.of({**MODEL, "prompt": {"chat": True}}).prompt == PromptFormat(chat=True)
