"""The LUME suite, computed as the official SemEval-2025 Task 4 evaluation computes it.

- Greedy generation on the raw `input`.
- Regurgitation: ROUGE-L recall (rouge-score, stemmer on) on sentence-completion (`sc`) items;
  knowledge: `strip().lower()` equality on question (`qa`) items; per task and split.
- Task aggregate: the harmonic mean of the 12 values (3 tasks x 2 metrics x 2 splits), forget values
  taken as 1 - v.
- MIA (with member / non-member documents): AUC of the loss-based attack (score = -mean NLL of the
  document, members positive); MIA score = 1 - 2|AUC - 0.5|.
- MMLU through lm-eval when asked for (`evaluation.mmlu=true`; needs the network and the `mmlu` extra),
  5-shot as the official script runs it (`evaluation.mmlu_num_fewshot`); the official evaluation only
  ranks a model whose MMLU accuracy is at least 0.371, and a warning says when one falls below that.
- Final score = mean(task aggregate, MMLU, MIA score), when all three are there.
Per example, rows carry `id`, `task`, `kind` and the value that applies to them (`rougeL_recall` for
`sc`, `exact_match` for `qa`), so the split figures `rougeL_recall` / `exact_match` are the official
overall regurgitation / knowledge scores.
"""

from __future__ import annotations

import logging
import math


from simu_lightning.data.formatting import encode_document, encode_prompt
from simu_lightning.evaluation import metrics
from simu_lightning.evaluation.metrics import mia_auc
from simu_lightning.evaluation.splits import evaluate_splits
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation, mean
from simu_lightning.evaluation.generation import answer_log_likelihoods, greedy_generations
from simu_lightning.evaluation.qa import answer_scores

log = logging.getLogger(__name__)

TASKS = ("Task1", "Task2", "Task3")
MMLU_THRESHOLD = 0.371  # the official script's eligibility threshold on MMLU accuracy


def split_rows(model, tokenizer, fmt, split, settings: EvaluationSettings) -> list[dict]:
    prompts = [encode_prompt(tokenizer, fmt, q) for q in split["question"]]
    generations = greedy_generations(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
    scored = answer_scores(model, tokenizer, fmt, split["question"], split["answer"], settings)
    rows = []
    for row, generation, score in zip(split, generations, scored):
        sc = row["kind"] == "sc"
        rows.append(
            {
                "id": row["id"],
                "task": row["task"],
                "kind": row["kind"],
                "question": row["question"],
                "answer": row["answer"],
                "generation": generation.strip(),
                "rougeL_recall": metrics.rouge_l_recall(generation, row["answer"]) if sc else None,
                "exact_match": None if sc else metrics.lume_exact_match(generation, row["answer"]),
                "answer_prob": math.exp(score.mean_log_prob),
                "exact_memorization": score.memorised,
                "extraction_strength": score.extraction,
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    summary = {
        name: mean([r[name] for r in rows if r.get(name) is not None])
        for name in ("rougeL_recall", "exact_match", "answer_prob", "exact_memorization", "extraction_strength")
        if any(name in r for r in rows)
    }
    for task in sorted({r["task"] for r in rows}):
        summary[f"{task}/regurgitation"] = mean(
            [r["rougeL_recall"] for r in rows if r["task"] == task and r["kind"] == "sc"]
        )
        summary[f"{task}/knowledge"] = mean([r["exact_match"] for r in rows if r["task"] == task and r["kind"] == "qa"])
    return summary


def task_aggregate(summary: dict[str, dict[str, float]]) -> float | None:
    """Harmonic mean of per-task regurgitation and knowledge on both splits, forget ones as 1 - v
    (over the tasks present; NaN-free values only)."""
    values = []
    for split, invert in (("forget", True), ("retain", False)):
        for name, value in summary.get(split, {}).items():
            if "/" in name and not math.isnan(value):
                values.append(1 - value if invert else value)
    return metrics.harmonic_mean(values) if values else None


def document_nll(model, tokenizer, documents: list[str], settings: EvaluationSettings) -> list[float]:
    """Mean NLL of every document's tokens (the loss the official attack thresholds)."""
    encoded = [encode_document(tokenizer, text, settings.max_length) for text in documents]
    return [
        -total / max(count, 1)
        for total, count, *_ in answer_log_likelihoods(model, encoded, tokenizer.pad_token_id, settings.batch_size)
    ]


def mmlu_accuracy(model, tokenizer, batch_size: int, num_fewshot: int = 5) -> float:
    """MMLU through lm-eval (evaluation/harness.py), as the official script runs it."""
    from simu_lightning.evaluation.harness import HarnessSettings, harness_results

    settings = HarnessSettings(tasks=("mmlu",), num_fewshot=num_fewshot)
    results = harness_results(model, tokenizer, settings, batch_size, setting="evaluation.mmlu=true")
    accuracy = results["mmlu"]["acc,none"]
    if accuracy < MMLU_THRESHOLD:
        log.warning(
            "MMLU accuracy %.3f (%d-shot) is below LUME's eligibility threshold %.3f: the official "
            "evaluation would not rank this model",
            accuracy,
            num_fewshot,
            MMLU_THRESHOLD,
        )
    return accuracy


def final_score(scores: dict[str, float | None]) -> float | None:
    parts = [scores.get("task_aggregate"), scores.get("mmlu"), scores.get("mia_score")]
    return None if any(p is None for p in parts) else sum(parts) / 3


def evaluate(
    model, tokenizer, fmt, benchmark, stage: str, settings: EvaluationSettings, retain_ratios=None
) -> Evaluation:
    result = evaluate_splits(
        benchmark,
        stage,
        settings,
        lambda name, split: split_rows(model, tokenizer, fmt, split, settings),
        lambda name, rows: summarise(rows),
    )
    result.scores["task_aggregate"] = task_aggregate(result.summary)
    if "mia_member" in benchmark.splits:
        auc = mia_auc(
            document_nll(model, tokenizer, benchmark["mia_member"]["document"], settings),
            document_nll(model, tokenizer, benchmark["mia_nonmember"]["document"], settings),
        )
        result.scores["mia_auc"], result.scores["mia_score"] = auc, metrics.mia_score(auc)
    if settings.mmlu:
        result.scores["mmlu"] = mmlu_accuracy(model, tokenizer, settings.batch_size, settings.mmlu_num_fewshot)
    result.scores["final_score"] = final_score(result.scores)
    return result
