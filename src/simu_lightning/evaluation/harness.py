"""General utility through lm-eval-harness: any of its tasks (mmlu, gsm8k, wmdp_bio, ...) on the model
before and after unlearning (`evaluation.lm_eval.tasks`), and tasks of one's own from YAML files in
`evaluation.lm_eval.include_path` (lm-eval's include path: a task over a local JSON Lines file runs
offline). LUME's MMLU goes the same way. The optional extra `mmlu` installs lm-eval."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from simu_lightning.utils.errors import SimuError
from simu_lightning.utils.seeding import seeded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarnessSettings:
    tasks: tuple[str, ...] = ()
    num_fewshot: int | None = None
    limit: int | None = None  # at most this many examples per task (lm-eval's limit; null: all)
    include_path: str | None = None  # a folder of task YAMLs of one's own

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks or ()))
        if self.num_fewshot is not None and (not isinstance(self.num_fewshot, int) or self.num_fewshot < 0):
            raise SimuError(f"evaluation.lm_eval.num_fewshot must be null or an integer >= 0, got {self.num_fewshot!r}")


def harness_results(
    model, tokenizer, settings: HarnessSettings, batch_size: int, setting: str = "evaluation.lm_eval.tasks"
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of lm-eval's tasks on `model` (numeric metrics only, lm-eval's names,
    e.g. "acc,none"); `setting` is what asked for them, named when lm-eval is missing. lm-eval seeds
    the global generators: it runs inside `seeded`, which hands them back."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SimuError(f"{setting} needs lm-eval: pip install -e '.[mmlu]'") from None
    try:
        with seeded(0):
            results = lm_eval.simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                tasks=list(settings.tasks),
                num_fewshot=settings.num_fewshot,
                limit=settings.limit,
                task_manager=TaskManager(include_path=settings.include_path),
                log_samples=False,
            )
    except Exception as err:  # a hub task's download, mostly; an unknown task name
        raise SimuError(
            f"evaluation.lm_eval: lm-eval failed on {', '.join(settings.tasks)} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}; hub tasks download their data)"
        ) from None
    return {
        task: {
            metric: float(v) for metric, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for task, values in results["results"].items()
    }
