"""The target's evaluation before unlearning (and the attack stage's baselines on it), cached: every run
of a sweep over one target (methods, seeds, t, objectives, probe points) starts from the same model with
the same settings, so it evaluates the same thing (on SmolLM2-135M, 94 s of every run on 2 cores).

The key holds what changes the numbers, and nothing else: the target; the evaluated rows and the roles the
suite gives the splits; the prompt format; the settings the evaluation of the target runs with
(BEFORE_SETTINGS: those of the evaluations during unlearning never reach it); the retain model's ratios
(forget quality); the dtype, devices and precision; and a hash of the code that computes the numbers
(`evaluation_modules`: the benchmark's suite and the project modules it imports). The code that decides
when an evaluation runs or where it is kept (callback.py, the probe points of probe.py, this cache) is not
in it, so that a change to them keeps the entries. `evaluation.cache_before=false` evaluates every time."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from simu_lightning.evaluation.evaluate import Evaluator
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation
from simu_lightning.utils.cache import cache_key
from simu_lightning.utils.files import atomic

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # where the project's modules are read from
PROJECT = "simu_lightning"

# Where the numbers of every evaluation come from, whatever the benchmark: Evaluator.__call__ and the
# dispatch to the suite (evaluation_precision: the autocast dtype). Each evaluator adds the suite its
# benchmark names, the benchmark's class (how the suite reads the splits) and the prompt format's class
# (evaluation_roots). From these roots every project module they import, at any depth and inside functions
# too (lume.py imports the harness where it runs MMLU), is hashed into the key, but NOT_COMPUTING. For the
# QA suite (TOFU, synthetic) that is:
#   evaluation/evaluate.py    the dispatch, the autocast to evaluation.dtype
#   evaluation/qa.py          the metrics per example, truth ratios, model utility, forget quality
#   evaluation/metrics.py     exact match, ROUGE-L, AUC
#   evaluation/generation.py  greedy generation, answer likelihoods and argmax hits, in batches
#   evaluation/shared_prompts.py  the answers' likelihoods from each prompt's pass, run once
#   evaluation/splits.py      the rows of every split (max_examples) and their summaries
#   evaluation/types.py       the means of the summaries (and the settings' checks)
#   evaluation/harness.py     lm-eval (LUME's MMLU), with utils/seeding.py, its seed; reached through types.py
#   likelihood.py             the answer tokens' log-probabilities
#   data/formatting.py        prompts, answers and documents encoded, collated and padded
#   data/benchmark.py         the splits the suite reads
# LUME's suite adds lume.py (which reuses qa.py's answer scores), MUSE's muse.py and membership.py (the MIA
# scores). Not reached, so out of the key: callback.py (when the evaluations run), probe.py (which points are probes), before_cache.py
# (this cache), retain_model.py (its ratios are in the key as values), tables.py (the reports).
DISPATCH = ("simu_lightning.evaluation.evaluate",)

# Imported by the evaluation's code, but computing none of its numbers: neither they nor what they import
# are hashed, so a change to them keeps the cache.
NOT_COMPUTING = {
    # shares the prompts among a sharded run's processes (map_sharded) and gathers the results back in
    # their order, and lends the evaluation a whole model (unsharded); one process does every prompt itself,
    # and the devices are in the key as values
    "simu_lightning.distributed": "how the work is shared among processes",
    "simu_lightning.utils.processes": "the rank and world size, for distributed.py",
    # moves the model to the run's device (in the key as a value) and names the run's stage in the logs
    "simu_lightning.utils.devices": "where the model is, which stage runs",
    # halves a batch only when it ran out of memory, where there would otherwise be no numbers at all
    "simu_lightning.utils.memory": "a batch retried at half its size after running out of memory",
    "simu_lightning.utils.errors": "the error type",
    # counts the rows done, for the progress bars and log lines
    "simu_lightning.utils.phase_progress": "the progress of the phases",
    # types.py checks evaluation.during.full_around with its parser; a rule reads evaluations, makes none
    "simu_lightning.unlearning.stopping": "the stopping rule",
}

# The attack stage's code besides the evaluation's: the attack families (the package imports every one:
# membership inference, probes, quantisation, relearning) and the fine-tuning the relearning attack runs,
# with what they import (the fine-tuning's optimiser, optim/masked_adamw.py and its masks).
ATTACK_ROOTS = ("simu_lightning.robustness", "simu_lightning.models.finetune")


def module_file(module: str) -> Path | None:
    """The source file of a project module (of a package: its __init__.py), or None outside the project."""
    head, _, rest = module.partition(".")
    if head != PROJECT:
        return None
    base = PACKAGE.joinpath(*rest.split(".")) if rest else PACKAGE
    for file in ((base.with_suffix(".py"),) if rest else ()) + (base / "__init__.py",):
        if file.is_file():
            return file
    return None


def imported_modules(module: str) -> set[str]:
    """The project modules that `module`'s source imports, wherever in it (at the top, in a function).
    `from a import b` is the module a.b where there is one, else a (its __init__ defines b). A package's
    __init__ counts where an import names the package itself, not for every module under it."""
    file = module_file(module)
    if file is None:
        return set()
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_bytes(), str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:  # relative, from the module's own package upwards
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                found.add(submodule if module_file(submodule) is not None else origin)
    return {name for name in found if module_file(name) is not None}


def code_modules(roots) -> tuple[str, ...]:
    """`roots` (module names; those outside the project left out) and every project module they import,
    at any depth, but NOT_COMPUTING (whose imports are not followed either): sorted."""
    seen: set[str] = set()
    todo = [root for root in roots if module_file(root) is not None]
    while todo:
        module = todo.pop()
        if module in seen or module in NOT_COMPUTING:
            continue
        seen.add(module)
        todo.extend(imported_modules(module))
    return tuple(sorted(seen))


def evaluation_roots(evaluator: Evaluator) -> tuple[str, ...]:
    """Where an evaluation through `evaluator` computes its numbers from: the dispatch, the suite the
    benchmark names, the benchmark's class and the prompt format's class (a suite outside the project is
    in the key by its name alone: suite_id)."""
    benchmark = evaluator.benchmark
    suite = getattr(benchmark.suite, "func", benchmark.suite)
    return (
        *DISPATCH,
        getattr(suite, "__module__", None) or "",
        type(benchmark).__module__,
        type(evaluator.fmt).__module__,
    )


def evaluation_modules(evaluator: Evaluator) -> tuple[str, ...]:
    """The modules whose code computes the numbers of an evaluation through `evaluator` (see DISPATCH)."""
    return code_modules(evaluation_roots(evaluator))


def attack_modules(evaluator: Evaluator) -> tuple[str, ...]:
    """The modules whose code computes the attack stage's baselines: the evaluation's and the attacks'."""
    return code_modules((*evaluation_roots(evaluator), *ATTACK_ROOTS))


def code_hash(modules) -> str:
    """A hash of the source of `modules` (project module names), each under its path in the package."""
    digest = hashlib.sha256()
    for module in sorted(modules):
        file = module_file(module)
        digest.update(file.relative_to(PACKAGE).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def suite_id(suite) -> list:
    """A suite by name and bound settings (a functools.partial from the benchmark's config)."""
    function = getattr(suite, "func", suite)
    keywords = sorted((getattr(suite, "keywords", None) or {}).items())
    return [getattr(function, "__module__", ""), getattr(function, "__qualname__", repr(function)), keywords]


# The fields of EvaluationSettings (evaluation/types.py) in the key, each because it changes the numbers of the
# evaluation of the target; every other field is in OUTSIDE_THE_KEY, with why (tests/test_before_cache.py
# checks that a new field is placed). The settings of the evaluations during unlearning (every_n_steps,
# during.*) reach only UnlearningEvaluation's own copies (point_settings, sample_settings).
BEFORE_SETTINGS = {
    "max_length": "prompts, answers and documents are cut to it",
    "max_new_tokens": "how long the generations are (exact match, ROUGE-L)",
    # a batch pads its rows to its longest: the padded kernels differ in their last bits, and a greedy
    # generation can follow a different token from there
    "batch_size": "the batches' padding",
    "max_examples": "how many rows of every split are evaluated",
    # which rows a limit keeps (evaluation/splits.py); without a limit every row is read, whatever the seed
    "sample_seed": "the draw of the rows a limit keeps",
    "mmlu": "whether LUME's MMLU is scored",
    "mmlu_num_fewshot": "MMLU's shots",
    "dtype": "the autocast dtype of the evaluation",
    # None (every split) in the evaluation before, as plan.evaluation.for_model makes it; only the
    # evaluations during unlearning set it (evaluation.during.truth_ratios=needed, probe points)
    "truth_ratio_splits": "the splits whose perturbed answers are scored",
    # None as well before unlearning; only probe points set it (a split read only through its generations)
    "likelihood_splits": "the splits whose answer likelihoods are scored",
}
OUTSIDE_THE_KEY = {
    "retain_model_results": "where the retain model's ratios come from: the ratios themselves are in the key",
    "base": "whether the base model is evaluated too, beside the target",
    "every_n_steps": "when the points during unlearning are",
    "during": "how the points during unlearning are scored",
    "lm_eval": "lm-eval's tasks, run apart from the suite",
    "cache_before": "whether this cache is used at all",
}


def settings_read_before(settings: EvaluationSettings) -> dict:
    """The settings in the key of the evaluation before: BEFORE_SETTINGS, as the evaluation holds them
    (the sample's seed only where a limit draws a sample: a sweep over it without one shares an entry)."""
    read = {name: getattr(settings, name, None) for name in BEFORE_SETTINGS}
    if read["max_examples"] is None:
        del read["sample_seed"]
    return read


def split_roles(benchmark) -> dict:
    """What the suites read of the benchmark besides its rows: which splits they evaluate and what each is
    (forget rows are scored as forgotten; model utility averages the utility splits), and how a split's
    rows group (which rows a limit keeps: one from every author)."""
    names = ("forget", "retain", "eval_splits", "utility_splits", "forgotten_splits", "groups")
    return {name: getattr(benchmark, name, None) for name in names}


def evaluation_parts(target_id: str, evaluator: Evaluator, dtype: str, devices: dict) -> list:
    """What an evaluation of the target reads: the target, the rows, the suite, the prompt format, the
    settings, the retain model's ratios (forget quality), the dtype, devices and precision."""
    benchmark = evaluator.benchmark
    return [
        target_id,
        benchmark.name,
        suite_id(benchmark.suite),
        benchmark.fingerprint(tuple(benchmark.splits)),  # a suite may read more than eval_splits (MUSE)
        split_roles(benchmark),
        asdict(evaluator.fmt),
        settings_read_before(evaluator.settings),
        evaluator.retain_ratios,
        dtype,
        devices,
    ]


def before_cache_path(cache_dir: Path, target_id: str, evaluator: Evaluator, dtype: str, devices: dict) -> Path:
    """Where the target's evaluation before unlearning is kept, under a key of everything it depends on."""
    key = cache_key(
        "before-evaluation",
        code_hash(evaluation_modules(evaluator)),
        *evaluation_parts(target_id, evaluator, dtype, devices),
    )
    return cache_dir / "evaluations" / key / "before.json"


def attack_baselines_path(
    cache_dir: Path, target_id: str, retain_model: str | None, evaluator: Evaluator, dtype: str, devices: dict, attacks
) -> Path:
    """Where the attack stage's baselines on the target are kept (robustness=standard's `before`: the
    attacks on the target and the retain model; none depends on the run's seed): under the evaluation's
    key, the retain model, the attack families' settings (`attacks`, plain) and the attacks' code."""
    key = cache_key(
        "attack-baselines",
        code_hash(attack_modules(evaluator)),
        *evaluation_parts(target_id, evaluator, dtype, devices),
        retain_model,
        attacks,
    )
    return cache_dir / "evaluations" / key / "attacks.json"


def read_before(path: Path) -> Evaluation:
    log.info("reusing the cached evaluation of the target before unlearning (%s)", path.parent)
    return Evaluation.from_dict(json.loads(path.read_text()))


def write_before(path: Path, evaluation: Evaluation) -> None:
    with atomic(path.parent, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / path.name).write_text(json.dumps(evaluation.to_dict()))
