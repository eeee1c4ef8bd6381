"""The target's evaluation before unlearning (and the attack stage's baselines on it), cached: every run
of a sweep over one target (methods, seeds, t, objectives) starts from the same model with the same
settings, so it evaluates the same thing (on SmolLM2-135M, 94 s of every run on 2 cores). The key holds
what the evaluation reads: the target, the evaluated rows, the prompt format, the settings it reads (not
those of the evaluations during unlearning), the retain model's ratios (forget quality), the devices and
precision, and the evaluation code itself (a hash of its source files, so that a change to any metric
computes afresh). `evaluation.cache_before=false` evaluates every time."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from simu_lightning.evaluation.evaluate import Evaluator
from simu_lightning.evaluation.types import Evaluation
from simu_lightning.utils.cache import cache_key
from simu_lightning.utils.files import atomic

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]
# the code an evaluation runs: the suites and their metrics, the likelihoods, the prompts' encoding
EVALUATION_CODE = ("evaluation", "likelihood.py", "data/formatting.py", "data/benchmark.py")


def evaluation_code_hash(parts: tuple[str, ...] | None = None) -> str:
    """A hash of the source files of `parts` (the evaluation's code, EVALUATION_CODE, unless given)."""
    digest = hashlib.sha256()
    for part in EVALUATION_CODE if parts is None else parts:
        path = PACKAGE / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def suite_id(suite) -> list:
    """A suite by name and bound settings (a functools.partial from the benchmark's config)."""
    function = getattr(suite, "func", suite)
    keywords = sorted((getattr(suite, "keywords", None) or {}).items())
    return [getattr(function, "__module__", ""), getattr(function, "__qualname__", repr(function)), keywords]


# settings that change only the evaluations during unlearning (or whether this cache is read), not the
# evaluation of the target: a sweep over them reuses one entry
DURING_ONLY = ("every_n_steps", "during", "cache_before")


def settings_read_before(settings) -> dict:
    """The evaluation settings an evaluation of the target reads: all but DURING_ONLY."""
    return {name: value for name, value in asdict(settings).items() if name not in DURING_ONLY}


def evaluation_parts(target_id: str, evaluator: Evaluator, dtype: str, devices: dict) -> list:
    """What an evaluation of the target reads: the target, the rows, the suite, the prompt format, the
    settings, the retain model's ratios (forget quality), the dtype, devices and precision."""
    benchmark = evaluator.benchmark
    return [
        target_id,
        benchmark.name,
        suite_id(benchmark.suite),
        benchmark.fingerprint(tuple(benchmark.splits)),  # a suite may read more than eval_splits (MUSE)
        asdict(evaluator.fmt),
        settings_read_before(evaluator.settings),
        evaluator.retain_ratios,
        dtype,
        devices,
    ]


def before_cache_path(cache_dir: Path, target_id: str, evaluator: Evaluator, dtype: str, devices: dict) -> Path:
    """Where the target's evaluation before unlearning is kept, under a key of everything it depends on."""
    key = cache_key(
        "before-evaluation", evaluation_code_hash(), *evaluation_parts(target_id, evaluator, dtype, devices)
    )
    return cache_dir / "evaluations" / key / "before.json"


# the attack stage's code besides the evaluation's: the attacks, and the fine-tuning relearning runs
ATTACK_CODE = (*EVALUATION_CODE, "robustness", "models/finetune.py")


def attack_baselines_path(
    cache_dir: Path, target_id: str, retain_model: str | None, evaluator: Evaluator, dtype: str, devices: dict, attacks
) -> Path:
    """Where the attack stage's baselines on the target are kept (robustness=standard's `before`: the
    attacks on the target and the retain model; none depends on the run's seed): under the evaluation's
    key, the retain model, the attack families' settings (`attacks`, plain) and the attacks' code."""
    key = cache_key(
        "attack-baselines",
        evaluation_code_hash(ATTACK_CODE),
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
