"""Evaluate a model on a benchmark's evaluation splits: per-example values and split means."""
from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.formatting import PromptFormat, encode_example, encode_prompt
from simu_lightning.evaluation import metrics
from simu_lightning.evaluation.generation import answer_log_likelihoods, greedy_generations


@dataclass
class Evaluation:
    """`values[split][metric]` holds one value per example; `rows` one record per example."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        return {split: {name: sum(v) / len(v) if v else float("nan") for name, v in by_metric.items()}
                for split, by_metric in self.values.items()}


def evaluate_split(model, tokenizer, fmt: PromptFormat, split: Dataset, *, max_length: int,
                   max_new_tokens: int, batch_size: int) -> tuple[dict[str, list[float]], list[dict]]:
    questions, answers = split["question"], split["answer"]
    prompts = [encode_prompt(tokenizer, fmt, q) for q in questions]
    generations = greedy_generations(model, tokenizer, prompts, max_new_tokens, batch_size)
    encoded = [encode_example(tokenizer, fmt, q, a, max_length) for q, a in zip(questions, answers)]
    likelihoods = answer_log_likelihoods(model, encoded, tokenizer.pad_token_id, batch_size)
    values = {
        "exact_match": [metrics.exact_match(g, a) for g, a in zip(generations, answers)],
        "rougeL_recall": [metrics.rouge_l_recall(g, a) for g, a in zip(generations, answers)],
        "answer_prob": [metrics.answer_probability(total, count) for total, count in likelihoods],
    }
    rows = [{"question": q, "answer": a, "generation": g.strip(), **{name: v[i] for name, v in values.items()}}
            for i, (q, a, g) in enumerate(zip(questions, answers, generations))]
    return values, rows


def evaluate(model, tokenizer, fmt: PromptFormat, benchmark: Benchmark, stage: str, *, max_length: int,
             max_new_tokens: int, batch_size: int, max_examples: int | None = None) -> Evaluation:
    result = Evaluation()
    for name in benchmark.eval_splits:
        split = benchmark[name]
        if max_examples is not None and len(split) > max_examples:
            split = split.select(range(max_examples))
        values, rows = evaluate_split(model, tokenizer, fmt, split, max_length=max_length,
                                      max_new_tokens=max_new_tokens, batch_size=batch_size)
        result.values[name] = values
        result.rows += [{"split": name, "stage": stage, "index": i, **row} for i, row in enumerate(rows)]
    return result
