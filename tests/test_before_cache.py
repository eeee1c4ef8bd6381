"""The key of the cached evaluation before unlearning changes with what changes the numbers of that
evaluation (the code that computes them, the settings it runs with, the rows and their roles), and with
nothing else: a sweep over when and how the run evaluates during unlearning reuses one entry."""

import dataclasses
import functools
import shutil
from dataclasses import fields
from types import SimpleNamespace

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.evaluation import before_cache, qa
from simu_lightning.evaluation import muse as muse_suite
from simu_lightning.evaluation.evaluate import Evaluator
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.pipeline.baselines import evaluator_of
from simu_lightning.pipeline.building import TrainerSettings
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.unlearn import before_cache_file as production_before_cache
from simu_lightning.pipeline.unlearn import unlearning_evaluation as production_evaluation
from simu_lightning.unlearning.stopping import StoppingRule

DEVICES = {"accelerator": "cpu", "devices": "1", "num_nodes": "1", "precision": "32-true", "strategy": "auto"}


def tofu_like(**changes) -> Benchmark:
    """A small benchmark on the QA suite (TOFU's and the synthetic one's), as its config makes it."""

    def rows(split: str) -> Dataset:
        return Dataset.from_list(
            [
                {"question": f"{split} question {i}?", "answer": f"answer {i}", "perturbed_answer": [f"wrong {i}"]}
                for i in range(3)
            ]
        )

    benchmark = Benchmark(
        name="synthetic",
        splits={name: rows(name) for name in ("forget", "retain", "world")},
        eval_splits=("forget", "retain", "world"),
        utility_splits=("retain", "world"),
        suite=functools.partial(qa.evaluate),
        max_new_tokens=8,
    )
    return dataclasses.replace(benchmark, **changes)


def evaluator(benchmark: Benchmark | None = None, ratios=(0.5, 0.25), **settings) -> Evaluator:
    benchmark = benchmark or tofu_like()
    plain = EvaluationSettings(**settings).for_model(64, benchmark.max_new_tokens)
    return Evaluator(None, PromptFormat(), benchmark, plain, list(ratios))


def before_key(tmp_path, an_evaluator: Evaluator) -> str:
    return before_cache.before_cache_path(tmp_path, "target", an_evaluator, "float32", DEVICES).parent.name


def attack_key(tmp_path, an_evaluator: Evaluator) -> str:
    path = before_cache.attack_baselines_path(
        tmp_path, "target", "retain-model", an_evaluator, "float32", DEVICES, {"families": {"mia": {}}}
    )
    return path.parent.name


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """The project's source, copied: the key is computed over the copy, whose files a test may change."""
    copy = tmp_path / "src" / "simu_lightning"
    shutil.copytree(before_cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(before_cache, "PACKAGE", copy)
    return copy


def keys_after_a_byte_changed(package, files, key) -> dict[str, bool]:
    """For each of `files` (paths in the package), whether one byte more in it (a comment's) changes
    `key()`; each put back as it was before the next, and the key found again then."""
    first, changed = key(), {}
    for name in files:
        original = (package / name).read_bytes()
        (package / name).write_bytes(original + b"#")
        changed[name] = key() != first
        (package / name).write_bytes(original)
        assert key() == first, name  # a function of the files' content
    return changed


# what decides when an evaluation runs or where it is kept, or computes another benchmark's numbers
NOT_THE_NUMBERS = [
    "evaluation/probe.py",  # which points during unlearning are probes
    "evaluation/callback.py",  # when the evaluations run
    "evaluation/before_cache.py",  # this cache
    "evaluation/retain_model.py",  # its ratios enter the key as values
    "evaluation/tables.py",  # the reports
    "evaluation/muse.py",  # another benchmark's suite
    "distributed.py",  # how the prompts are shared among processes
    "utils/phase_progress.py",  # the progress bars and log lines
]
# the QA suite's numbers
THE_NUMBERS = [
    "evaluation/qa.py",  # the suite the benchmark names
    "evaluation/metrics.py",  # its metrics
    "evaluation/generation.py",  # its generations and likelihoods
    "evaluation/shared_prompts.py",  # the likelihoods of answers that share a prompt
    "evaluation/splits.py",  # its rows per split and their summaries
    "evaluation/evaluate.py",  # the dispatch (the autocast to evaluation.dtype)
    "likelihood.py",  # the answer tokens' log-probabilities
    "data/formatting.py",  # the prompts' encoding
]


def test_the_key_changes_with_the_code_that_computes_the_numbers_and_with_no_other(tmp_path, package_copy):
    """A byte changed in the code that computes the evaluation's numbers is a new entry; one in the code
    that decides when an evaluation runs or where it is kept (probe points, the callback, this cache)
    finds the entry a run before the change wrote."""
    an_evaluator = evaluator()
    changed = keys_after_a_byte_changed(
        package_copy, NOT_THE_NUMBERS + THE_NUMBERS, lambda: before_key(tmp_path, an_evaluator)
    )
    assert changed == {**dict.fromkeys(NOT_THE_NUMBERS, False), **dict.fromkeys(THE_NUMBERS, True)}


def test_the_attack_baselines_key_changes_with_the_attacks_code_and_with_no_other(tmp_path, package_copy):
    """The attacks' code (the families, the relearning's fine-tuning and its optimiser, the MIA scores)
    is a new attack baselines entry, and leaves the evaluation's entry; the evaluation's code is a new
    entry of both; the probe points, the callback and this cache are a new entry of neither."""
    an_evaluator = evaluator()
    attacks = ["robustness/mia.py", "models/finetune.py", "optim/masked_adamw.py", "evaluation/membership.py"]
    neither = ["evaluation/probe.py", "evaluation/callback.py", "evaluation/before_cache.py"]
    files = [*attacks, "evaluation/qa.py", *neither]
    attack_changed = keys_after_a_byte_changed(package_copy, files, lambda: attack_key(tmp_path, an_evaluator))
    before_changed = keys_after_a_byte_changed(package_copy, files, lambda: before_key(tmp_path, an_evaluator))
    assert attack_changed == {**dict.fromkeys(attacks, True), "evaluation/qa.py": True, **dict.fromkeys(neither, False)}
    assert before_changed == {
        **dict.fromkeys(attacks, False),
        "evaluation/qa.py": True,
        **dict.fromkeys(neither, False),
    }


def test_the_modules_of_the_qa_suite():
    """The QA suite's numbers come from these modules (and what they import); the ones that decide when
    an evaluation runs or how the work is shared are not among them."""
    modules = set(before_cache.evaluation_modules(evaluator()))
    assert {
        "simu_lightning.evaluation.evaluate",
        "simu_lightning.evaluation.qa",
        "simu_lightning.evaluation.metrics",
        "simu_lightning.evaluation.generation",
        "simu_lightning.evaluation.splits",
        "simu_lightning.evaluation.types",
        "simu_lightning.likelihood",
        "simu_lightning.data.formatting",
        "simu_lightning.data.benchmark",
    } <= modules
    assert not modules & {
        "simu_lightning.evaluation.callback",
        "simu_lightning.evaluation.probe",
        "simu_lightning.evaluation.before_cache",
        "simu_lightning.evaluation.retain_model",
        "simu_lightning.evaluation.muse",
        "simu_lightning.distributed",
        "simu_lightning.unlearning.stopping",
    }
    for module in (*modules, *before_cache.DISPATCH, *before_cache.ATTACK_ROOTS, *before_cache.NOT_COMPUTING):
        assert before_cache.module_file(module) is not None, module  # a renamed module would drop out
    muse = functools.partial(muse_suite.evaluate)
    assert "simu_lightning.evaluation.muse" in before_cache.evaluation_modules(evaluator(tofu_like(suite=muse)))


def test_every_field_of_the_evaluation_settings_is_placed():
    """A new EvaluationSettings field is a decision: in the key of the evaluation before (it changes its
    numbers) or not, and why; BEFORE_SETTINGS and OUTSIDE_THE_KEY name every field between them."""
    inside, outside = set(before_cache.BEFORE_SETTINGS), set(before_cache.OUTSIDE_THE_KEY)
    assert not inside & outside
    assert inside | outside == {f.name for f in fields(EvaluationSettings)}


def test_what_changes_the_numbers_changes_the_key(tmp_path):
    """Each alone, from a limited evaluation (where the sample's seed counts): a setting of the evaluation,
    the roles the suite gives the splits (the same rows evaluated as other splits are other numbers), the
    retain model's ratios, the rows."""
    limited = {"max_examples": 3}
    first = before_key(tmp_path, evaluator(**limited))
    for setting in (
        {"max_examples": 2},
        {"max_new_tokens": 4},
        {"batch_size": 3},
        {"dtype": "bfloat16"},
        {"mmlu": True},
        {"mmlu_num_fewshot": 0},
    ):
        assert before_key(tmp_path, evaluator(**{**limited, **setting})) != first, setting
    for roles in (
        {"eval_splits": ("forget", "retain")},  # which splits are evaluated
        {"utility_splits": ("retain",)},  # which model utility averages
        {"forgotten_splits": ("world",)},  # which are scored as forgotten rows
        {"forget": "world", "retain": "forget"},  # which split is the forget set
    ):
        assert before_key(tmp_path, evaluator(tofu_like(**roles), **limited)) != first, roles
    assert before_key(tmp_path, evaluator(ratios=(0.5, 0.3), **limited)) != first
    rows = tofu_like()
    rows.splits["world"] = rows.splits["world"].select(range(2))
    assert before_key(tmp_path, evaluator(rows, **limited)) != first


def test_the_sample_of_a_limited_evaluation_changes_the_key(tmp_path):
    """evaluation.sample_seed and the benchmark's groups choose the rows a limit keeps; without a limit
    every row is evaluated, whatever the seed draws."""
    limited = {"max_examples": 3}
    first = before_key(tmp_path, evaluator(**limited))
    assert before_key(tmp_path, evaluator(sample_seed=1, **limited)) != first
    assert before_key(tmp_path, evaluator(tofu_like(groups={"forget": 1}), **limited)) != first
    assert before_key(tmp_path, evaluator(sample_seed=1)) == before_key(tmp_path, evaluator())


def run_plan(tmp_path, **evaluation):
    """What pipeline/unlearn.py reads of a run's plan to place the cache and build the callback (with the
    plan's own evaluation_for)."""
    plan = SimpleNamespace(
        evaluation=EvaluationSettings(**evaluation),
        model=SimpleNamespace(max_length=64, dtype="float32"),
        trainer=TrainerSettings.of(OmegaConf.create({"accelerator": "cpu"})),
        cache_dir=tmp_path,
        out=None,
        stop_when=StoppingRule.parse("forget.rougeL_recall<=0.4"),
    )
    plan.evaluation_for = functools.partial(RunPlan.evaluation_for, plan)
    return plan


def unlearning_evaluation(plan, benchmark: Benchmark):
    """The callback and the place of its cached evaluation before, built by pipeline/unlearn.py from the
    evaluator pipeline/baselines.py makes."""
    models = SimpleNamespace(tokenizer=None, fmt=PromptFormat(), target=SimpleNamespace(target_id="target"))
    baselines = SimpleNamespace(evaluator=evaluator_of(plan, benchmark, models, [{"truth_ratio": 0.5}]))
    return production_evaluation(plan, benchmark, models, baselines), production_before_cache(plan, models, baselines)


def test_settings_of_the_evaluations_during_unlearning_leave_the_key_alone(tmp_path):
    """A sweep over when and how the run evaluates during unlearning (every_n_steps, the rows and truth
    ratios of the points, probe points) starts from the same target evaluation, with the settings built
    as a run builds them; the settings the evaluation before runs with (rows, new tokens) are a new key."""
    benchmark = tofu_like()
    plain, cached = unlearning_evaluation(run_plan(tmp_path, max_examples=3), benchmark)
    assert plain.point_settings == plain.settings and plain.sample_settings is None  # as the evaluation before
    during = {
        "every_n_steps": 2,
        "during": {"max_examples": 2, "truth_ratios": "needed", "full_around": "forget.rougeL_recall<=0.6"},
    }
    swept, swept_cached = unlearning_evaluation(run_plan(tmp_path, max_examples=3, **during), benchmark)
    assert swept.point_settings != swept.settings  # the points during unlearning do run otherwise
    assert swept.point_settings.truth_ratio_splits == ("retain", "world")
    assert swept.sample_settings.max_examples == 2 and swept.point_settings.max_examples == 3
    assert swept.probe is not None and swept.every_n_steps == 2
    read = before_cache.settings_read_before  # what the key holds of the settings of the evaluation before
    assert read(swept.settings) == read(plain.settings) and swept_cached == cached is not None
    # the evaluation before is what the key holds: its settings, not those of the points during unlearning
    assert before_key(tmp_path, dataclasses.replace(swept.evaluator, settings=swept.sample_settings)) != (
        cached.parent.name
    )
    for changed in ({"max_examples": 2}, {"max_examples": 3, "max_new_tokens": 6}):
        other, other_cached = unlearning_evaluation(run_plan(tmp_path, **changed), benchmark)
        assert other_cached != cached, changed
