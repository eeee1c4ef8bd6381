"""What a run leaves behind: results.json, generations.jsonl and the before/after table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def results_table(results: dict) -> Table:
    table = Table(title=f"{results['method']} on {results['benchmark']} ({results['model']})")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for split, by_metric in results["before"].items():
        for metric, before in by_metric.items():
            table.add_row(split, metric, _fmt(before), _fmt(results["after"].get(split, {}).get(metric)))
    table.add_row(
        "", "aggregate", _fmt(results["aggregate"]["before"]), _fmt(results["aggregate"]["after"]), style="bold"
    )
    scores = results.get("scores", {})
    for name, before in scores.get("before", {}).items():
        if before is not None or scores["after"].get(name) is not None:
            table.add_row("", name, _fmt(before), _fmt(scores["after"].get(name)), style="bold")
    return table


def print_evaluation(results: dict, stage: str = "evaluated") -> None:
    """The table of an evaluation-only run: one column of values."""
    table = Table(title=f"{results['source']} on {results['benchmark']} ({results['model']} config)")
    for column in ("split", "metric", stage):
        table.add_column(column, justify="right" if column == stage else "left")
    for split, by_metric in results[stage].items():
        for metric, value in by_metric.items():
            table.add_row(split, metric, _fmt(value))
    table.add_row("", "aggregate", _fmt(results["aggregate"][stage]), style="bold")
    for name, value in results["scores"][stage].items():
        if value is not None:
            table.add_row("", name, _fmt(value), style="bold")
    Console().print(table)


def stopping_sentence(stopped: dict | None) -> str:
    """Where unlearning stopped, in words."""
    if not stopped:
        return ""
    where = f"step {stopped['step']} (epoch {stopped['epoch']})"
    if stopped["reason"] == "condition met":
        return f"Stopped at {where}: {stopped['rule']} holds; the model there is the 'after' model."
    rule = f" without meeting {stopped['rule']}" if stopped.get("rule") else ""
    return f"Ran the whole budget ({stopped.get('max_epochs')} epochs, to {where}){rule}."


def print_results(results: dict) -> None:
    console = Console()
    console.print(results_table(results))
    if sentence := stopping_sentence(results.get("stopped")):
        console.print(sentence)


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
