"""What a hyperparameter search maximises: a utility metric at a matched forgetting level, read off
the run's trajectory as the report reads it (`report/matched.py`), so that a search cannot win by not
forgetting: a run whose trajectory never reaches the level scores `unreached`.

Configured as `objective: {at: "forget.exact_match<=0.2", metric: retain_heldout.rougeL_recall,
unreached: 0.0, seeds: [10, 11]}` (conf/hparams_search/optuna.yaml); without it, a run returns its "after"
aggregate as before. `seeds`: the tuning seeds, each trial run at every one of them (pipeline/launch.py).
"""

from __future__ import annotations

from simu_lightning.utils.errors import SimuError
from simu_lightning.report.matched import at_forget_level
from simu_lightning.unlearning.stopping import StoppingRule


def check_metric(benchmark, metric: str) -> None:
    """Refuse, before any work, an objective on a split the benchmark does not evaluate."""
    split = metric.rpartition(".")[0]
    if split and split not in benchmark.eval_splits:
        raise SimuError(
            f"objective.metric={metric}: benchmark {benchmark.name!r} evaluates no split {split!r} (it evaluates "
            f"{', '.join(benchmark.eval_splits)}); a held-out retain split needs the benchmark's held-out setting"
        )


def matched_utility(
    curve: list[dict], at: str, metric: str, unreached: float = 0.0, seeds: list[int] | None = None
) -> dict:
    """`metric` where the trajectory first meets `at` (`seeds`, the tuning seeds, are launch.py's business)."""
    rule = StoppingRule.parse(at, setting="objective.at")
    if rule is None or len(rule.conditions) != 1:
        raise SimuError(f"objective.at={at!r} must be one condition on a forget metric, e.g. 'forget.exact_match<=0.2'")
    here = at_forget_level(curve, rule.conditions[0], [metric])
    value = here.get(metric) if here else None
    return {
        "at": at,
        "metric": metric,
        "value": unreached if value is None else float(value),
        "reached": here is not None,
        "step": here["step"] if here else None,
    }
