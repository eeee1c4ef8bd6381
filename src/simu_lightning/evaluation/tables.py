"""One run's tables: the before/after results, the attacks, the localisation; printed, and for wandb."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def result_rows(results: dict, stages: tuple[str, ...] = ("before", "after")) -> list[list]:
    """[split, metric, value per stage] for every split metric, then the aggregate and the benchmark
    scores (split ""; a score missing at every stage is left out): the rows of every results table."""
    rows = [
        [split, metric, *(results[stage].get(split, {}).get(metric) for stage in stages)]
        for split, by_metric in results[stages[0]].items()
        for metric in by_metric
    ]
    rows.append(["", "aggregate", *(results["aggregate"][stage] for stage in stages)])
    scores = results.get("scores", {})
    for name in scores.get(stages[0], {}):
        values = [scores[stage].get(name) for stage in stages]
        if any(value is not None for value in values):
            rows.append(["", name, *values])
    return rows


def _table(title: str, results: dict, stages: tuple[str, ...]) -> Table:
    table = Table(title=title)
    table.add_column("split")
    table.add_column("metric")
    for stage in stages:
        table.add_column(stage, justify="right")
    for split, metric, *values in result_rows(results, stages):
        table.add_row(split, metric, *map(_fmt, values), style="bold" if not split else None)
    return table


def results_table(results: dict) -> Table:
    return _table(f"{results['method']} on {results['benchmark']} ({results['model']})", results, ("before", "after"))


def print_evaluation(results: dict, stage: str = "evaluated") -> None:
    """The table of an evaluation-only run: one column of values."""
    console = Console()
    console.print(
        _table(f"{results['source']} on {results['benchmark']} ({results['model']} config)", results, (stage,))
    )
    for table in robustness_tables(results, stage):
        console.print(table)


def stopping_sentence(stopped: dict | None) -> str:
    """Where unlearning stopped, in words."""
    if not stopped:
        return ""
    where = f"step {stopped['step']} (epoch {stopped['epoch']})"
    if stopped["reason"] == "condition met" and "met_at" in stopped:
        return (
            f"Stopped at {where}: {stopped['rule']} held at step {stopped['met_at']['step']}, and the optimiser "
            "finished its zeroth-order round; the model there is the 'after' model."
        )
    if stopped["reason"] == "condition met":
        return f"Stopped at {where}: {stopped['rule']} holds; the model there is the 'after' model."
    rule = f" without meeting {stopped['rule']}" if stopped.get("rule") else ""
    return f"Ran the whole budget ({stopped.get('max_epochs')} epochs, to {where}){rule}."


ATTACK_METRICS = {
    "exact_match": "EM",
    "rougeL_recall": "ROUGE-L",
    "exact_memorization": "memorised",
    "extraction_strength": "extraction",
    "answer_prob": "P(answer)",
}


def robustness_rows(results: dict, stage: str = "after") -> list[list]:
    """[attack, split, value per metric of ATTACK_METRICS]: the unattacked model's splits first (the
    `stage` column), then every attack's splits; membership inference has its own table."""
    attacks = {stage: results[stage], **results.get("robustness", {})}
    return [
        [attack, split, *(by_metric.get(m) for m in ATTACK_METRICS)]
        for attack, by_split in attacks.items()
        for split, by_metric in by_split.items()
        if split != "scores" and any(m in by_metric for m in ATTACK_METRICS)
    ]


def mia_rows(results: dict) -> list[list]:
    """[model, AUC per attack] for each membership-inference result."""
    return [
        [attack, *by_split["forget_vs_holdout"].values()]
        for attack, by_split in results.get("robustness", {}).items()
        if "forget_vs_holdout" in by_split
    ]


def robustness_tables(results: dict, stage: str = "after") -> list[Table]:
    if not results.get("robustness"):
        return []
    attacks = Table(title="Robustness: the metrics after each attack (forget: lower is more forgotten)")
    # on a narrow console the names fold, the figures and their headers stay whole
    attacks.add_column("attack", overflow="fold")
    attacks.add_column("split", overflow="fold")
    for header in ATTACK_METRICS.values():
        attacks.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for attack, split, *values in robustness_rows(results, stage):
        attacks.add_row(attack, split, *map(_fmt, values), style="bold" if attack == stage else None)
    tables = [attacks]
    if rows := mia_rows(results):
        mia = Table(title="Membership inference AUC, forget vs held-out rows (1: still memorised)")
        mia.add_column("model", no_wrap=True)
        names = next(v["forget_vs_holdout"] for v in results["robustness"].values() if "forget_vs_holdout" in v)
        for name in names:
            mia.add_column(name.removesuffix("_auc"), justify="right")
        for model, *values in rows:
            mia.add_row(model, *map(_fmt, values))
        tables.append(mia)
    return tables


LOCALISATION = {
    "precision": "precision",
    "recall": "recall",
    "jaccard": "Jaccard",
    "precision_at_p": "P@|P|",
    "auroc": "AUROC",
}


def short_layer(name: str) -> str:
    """ "layer 3" for model.layers.3.mlp.down_proj (the first number in a module name)."""
    return next((f"layer {part}" for part in name.split(".") if part.isdigit()), name)


def localisation_rows(results: dict) -> list[list]:
    """[layer, planted, selected, figure per LOCALISATION] per layer, then "overall"."""
    found = results.get("localisation")
    if not found:
        return []
    planted, selected = results["planted"]["neurons"], results.get("critical_neurons", {})
    rows = [
        [short_layer(layer), planted.get(layer), selected.get(layer), *(figures[k] for k in LOCALISATION)]
        for layer, figures in found["layers"].items()
    ]
    overall = found["overall"]
    return rows + [["overall", sum(planted.values()), sum(selected.values()), *(overall[k] for k in LOCALISATION)]]


def localisation_table(results: dict) -> Table | None:
    rows = localisation_rows(results)
    if not rows:
        return None
    table = Table(title=f"Localisation: the {results.get('selection', 'selected')} neurons against the planted ones")
    table.add_column("layer", overflow="fold")
    for header in ("planted", "selected", *LOCALISATION.values()):
        table.add_column(header, justify="right", no_wrap=True)
    for layer, planted, selected, *values in rows:
        table.add_row(
            layer, str(planted), str(selected), *map(_fmt, values), style="bold" if layer == "overall" else None
        )
    return table


def print_localisation(results: dict) -> None:
    if (table := localisation_table(results)) is not None:
        Console().print(table)


def print_results(results: dict) -> None:
    console = Console()
    console.print(results_table(results))
    if sentence := stopping_sentence(results.get("stopped")):
        console.print(sentence)
    for table in robustness_tables(results):
        console.print(table)
    print_localisation(results)


def print_examples(rows: list[dict], split: str, count: int = 3) -> None:
    """A few questions of `split` with the answers generated before and after unlearning."""
    by_stage = {
        stage: [r for r in rows if r["split"] == split and r["stage"] == stage] for stage in ("before", "after")
    }
    table = Table(title=f"{split}: what the model answers", show_lines=True)
    for column in ("question", "answer", "before", "after"):
        table.add_column(column, overflow="fold")
    for before, after in list(zip(by_stage["before"], by_stage["after"]))[:count]:
        table.add_row(before["question"], before["answer"], before["generation"], after["generation"])
    Console().print(table)
