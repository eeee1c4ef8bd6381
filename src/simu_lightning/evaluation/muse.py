"""The MUSE suite (Shi et al. 2024), as MUSE and open-unlearning define its criteria, split by split:

- `verbmem` (prompt, gt): verbatim memorisation: the greedy continuation of the forget text's prompt
  (max_new_tokens, MUSE's 128) against the true continuation, ROUGE-L F1 (rouge-score, stemmer on);
- `knowmem_forget`, `knowmem_retain` (question, answer): knowledge memorisation: each question after the
  split's in-context examples (`<split>_icl`, "Question: ...\\nAnswer: ...\\n\\n"), the answer cut at
  the first blank line or "Question", ROUGE-L F1 against the answer; on the retain QA this is MUSE's
  utility preservation;
- documents (text; the relearning attack's views of the forget corpus): the mean NLL of each window.
Scores: `verbmem_f`, `knowmem_f`, `knowmem_r` (the split means), and the min-k% (k = 0.4) membership
AUC of the privleak documents (`mia_min_k_auc`, forget documents labelled 0). PrivLeak compares that AUC
with the retain model's, so it is the attack stage's (`robustness=standard`: mia, privleak), where the
retain model is at hand.
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer

from simu_lightning.data.formatting import document_windows, encode_prompt
from simu_lightning.evaluation.generation import answer_log_likelihoods, greedy_generations
from simu_lightning.evaluation.membership import min_k_score, token_stats
from simu_lightning.evaluation.metrics import mia_auc
from simu_lightning.evaluation.splits import evaluate_splits
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation, mean

KNOWMEM_NEW_TOKENS = 32  # MUSE's (and open-unlearning's) answer length
STOPS = ("\n\n", "\nQuestion", "Question:")
MIN_K = 0.4


@lru_cache(maxsize=1)
def _rouge():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(generation: str, reference: str) -> float:
    return float(_rouge().score(reference, generation)["rougeL"].fmeasure)


def cut_at_stops(text: str) -> str:
    for stop in STOPS:
        text = text.split(stop)[0]
    return text.strip()


def icl_prompt(examples, question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in zip(examples["question"], examples["answer"]))
    return f"{shots}Question: {question}\nAnswer:"


def verbmem_rows(model, tokenizer, split, settings: EvaluationSettings) -> list[dict]:
    prompts = [tokenizer(p)["input_ids"] for p in split["prompt"]]
    generations = greedy_generations(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
    return [
        {"question": p, "answer": gt, "generation": g.strip(), "rougeL_f1": rouge_l_f1(g, gt)}
        for p, gt, g in zip(split["prompt"], split["gt"], generations)
    ]


def knowmem_rows(model, tokenizer, fmt, split, examples, settings: EvaluationSettings) -> list[dict]:
    questions = [icl_prompt(examples, q) if examples is not None else q for q in split["question"]]
    prompts = [encode_prompt(tokenizer, fmt, q) for q in questions]
    generations = greedy_generations(model, tokenizer, prompts, KNOWMEM_NEW_TOKENS, settings.batch_size)
    return [
        {"question": q, "answer": a, "generation": cut_at_stops(g), "rougeL_f1": rouge_l_f1(cut_at_stops(g), a)}
        for q, a, g in zip(split["question"], split["answer"], generations)
    ]


def document_rows(model, tokenizer, split, settings: EvaluationSettings) -> list[dict]:
    windows = [
        (i, w) for i, text in enumerate(split["text"]) for w in document_windows(tokenizer, text, settings.max_length)
    ]
    scored = answer_log_likelihoods(model, [w for _, w in windows], tokenizer.pad_token_id, settings.batch_size)
    return [{"document": i, "nll": -total / max(count, 1)} for (i, _), (total, count, *_) in zip(windows, scored)]


def split_rows(model, tokenizer, fmt, benchmark, name: str, split, settings: EvaluationSettings) -> list[dict]:
    columns = split.column_names
    if "gt" in columns:
        return verbmem_rows(model, tokenizer, split, settings)
    if "question" in columns:
        icl = benchmark.splits.get(f"{name}_icl")
        return knowmem_rows(model, tokenizer, fmt, split, icl, settings)
    return document_rows(model, tokenizer, split, settings)


def summarise(rows: list[dict]) -> dict[str, float]:
    return {name: mean([r[name] for r in rows]) for name in ("rougeL_f1", "nll") if rows and name in rows[0]}


def min_k_auc(model, tokenizer, benchmark, settings: EvaluationSettings) -> float:
    """The min-k% membership AUC of the privleak documents (open-unlearning's PrivLeak input)."""

    def scores(documents):
        encoded = [
            {"input_ids": ids, "labels": ids}
            for ids in (tokenizer(d)["input_ids"][: settings.max_length] for d in documents)
        ]
        stats = token_stats(model, encoded, tokenizer.pad_token_id, settings.batch_size, tokenizer.eos_token_id)
        return [min_k_score(s, MIN_K) for s in stats]

    return mia_auc(scores(benchmark["mia_member"]["document"]), scores(benchmark["mia_nonmember"]["document"]))


def evaluate(
    model, tokenizer, fmt, benchmark, stage: str, settings: EvaluationSettings, retain_ratios=None
) -> Evaluation:
    result = evaluate_splits(
        benchmark,
        stage,
        settings,
        lambda name, split: split_rows(model, tokenizer, fmt, benchmark, name, split, settings),
        lambda name, rows: summarise(rows),
    )
    for score, split in (("verbmem_f", "verbmem"), ("knowmem_f", "knowmem_forget"), ("knowmem_r", "knowmem_retain")):
        if split in result.summary:
            result.scores[score] = result.summary[split].get("rougeL_f1")
    if "mia_member" in benchmark.splits:
        result.scores["mia_min_k_auc"] = min_k_auc(model, tokenizer, benchmark, settings)
    return result
