"""The QA suite (the synthetic benchmark and TOFU), with open-unlearning's definitions of TOFU's metrics.

Per example, on every evaluation split:
- `exact_match`, `rougeL_recall`, `contains_answer` of the greedy generation against `answer`;
- `answer_prob` = exp(mean answer-token log-probability of `answer`);
- `extraction_strength` (Carlini et al. 2021, as open-unlearning scores it): 1 - k / n, k the fewest of
  the answer's n tokens (the EOS left out) after which the teacher-forced argmax predicts all the rest
  (1: the whole answer extracted from the question alone; 0: not even its last token). Where no suffix is
  predicted k is n here; open-unlearning's loop leaves it at n - 1 (1 / n), which scores "no token" as
  "the last token";
- `exact_memorization` (open-unlearning's "exact memorisation"): the share of `answer`'s tokens whose
  teacher-forced argmax prediction equals the token, the EOS left out as open-unlearning leaves it out
  (`answer_prob` keeps it, as open-unlearning's probability does). `exact_match` is a different, stricter score:
  the whole greedy generation equals the answer after normalisation;
- where the split has `perturbed_answer`: `truth_ratio` = P(perturbed) / P(correct), each P the
  length-normalised probability exp(-mean NLL) (perturbed: of the mean NLL over the wrong answers;
  correct: `paraphrased_answer` where the split has one, else `answer`), and `normalised_prob` =
  P(answer) / (P(answer) + sum of P(perturbed)).
Split aggregates are means, except the truth ratio: on the forget split mean(min(TR, 1/TR)), on
the others mean(max(0, 1 - TR)).
Scores: model utility = harmonic mean over the utility splits of (probability, ROUGE-L, truth ratio),
the probability being `answer_prob` on `retain` and `normalised_prob` elsewhere; forget quality = the
KS-test p-value between the model's and the retain model's forget truth ratios.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from datasets import Dataset
from scipy.stats import ks_2samp

from simu_lightning.data.formatting import encode_example, encode_prompt
from simu_lightning.evaluation import metrics
from simu_lightning.evaluation.splits import evaluate_splits, limited
from simu_lightning.evaluation.types import EvaluationSettings, Evaluation, mean
from simu_lightning.evaluation.generation import answer_log_likelihoods, generations_by_split
from simu_lightning.utils.phase_progress import phase

log = logging.getLogger(__name__)

EPS = 1e-10  # open-unlearning's guard in the truth ratio


@dataclass(frozen=True)
class AnswerScore:
    mean_log_prob: float  # over every answer token, the EOS included
    memorised: float | None  # exact memorisation: the share of answer tokens the argmax predicts (EOS left out)
    extraction: float | None  # extraction strength: 1 - (the prefix after which the argmax predicts the rest) / n


def answer_scores(
    model, tokenizer, fmt, questions: list[str], answers: list[str], settings: EvaluationSettings
) -> list[AnswerScore]:
    """Per (question, answer) pair: the mean answer-token log-probability, the exact memorisation and the
    extraction strength (both None for an answer of the EOS alone, as open-unlearning leaves it out)."""
    encoded = [encode_example(tokenizer, fmt, q, a, settings.max_length) for q, a in zip(questions, answers)]
    return [
        AnswerScore(
            total / max(count, 1), hits / counted if counted else None, 1 - prefix / counted if counted else None
        )
        for total, count, hits, counted, prefix in answer_log_likelihoods(
            model, encoded, tokenizer.pad_token_id, settings.batch_size
        )
    ]


def mean_log_probs(
    model, tokenizer, fmt, questions: list[str], answers: list[str], settings: EvaluationSettings
) -> list[float]:
    """Mean answer-token log-probability of each (question, answer) pair."""
    return [score.mean_log_prob for score in answer_scores(model, tokenizer, fmt, questions, answers, settings)]


def truth_ratios_from(
    correct_logp: list[float], perturbed: list[list[str]], wrong_logp: list[float]
) -> tuple[list[float], list[float]]:
    """Per example: the truth ratio, and the summed probability of the perturbed answers, from the mean
    log-probabilities of the correct answers and of the perturbed ones (flattened, in order)."""
    per_example, position = [], 0
    for wrongs in perturbed:
        per_example.append(wrong_logp[position : position + len(wrongs)])
        position += len(wrongs)
    ratios = [math.exp(mean(w)) / (math.exp(c) + EPS) for w, c in zip(per_example, correct_logp)]
    wrong_mass = [sum(math.exp(x) for x in w) for w in per_example]
    return ratios, wrong_mass


def truth_ratio_values(
    model, tokenizer, fmt, split: Dataset, settings: EvaluationSettings
) -> tuple[list[float], list[float]]:
    """Per example: the truth ratio, and the summed probability of the perturbed answers."""
    questions = split["question"]
    correct = split["paraphrased_answer"] if "paraphrased_answer" in split.column_names else split["answer"]
    perturbed = list(split["perturbed_answer"])
    flat = [(q, wrong) for q, wrongs in zip(questions, perturbed) for wrong in wrongs]
    logp = mean_log_probs(
        model, tokenizer, fmt, [*questions, *(q for q, _ in flat)], [*correct, *(w for _, w in flat)], settings
    )
    return truth_ratios_from(logp[: len(questions)], perturbed, logp[len(questions) :])


def with_likelihoods(settings: EvaluationSettings, name: str) -> bool:
    """Whether this evaluation scores the split's answer likelihoods (`likelihood_splits`: None, all)."""
    return settings.likelihood_splits is None or name in settings.likelihood_splits


def with_truth_ratios(split: Dataset, settings: EvaluationSettings, name: str) -> bool:
    """Whether this evaluation scores the split's perturbed answers (`truth_ratio_splits`: None, all)."""
    wanted = settings.truth_ratio_splits is None or name in settings.truth_ratio_splits
    return wanted and with_likelihoods(settings, name) and "perturbed_answer" in split.column_names


def split_rows(
    model, tokenizer, fmt, split: Dataset, settings: EvaluationSettings, name: str, generations: list[str]
) -> list[dict]:
    """Every example's generation metrics (of `generations`, one per row) and likelihood metrics. The
    likelihoods of the answers, the paraphrased answers and the perturbed answers are one length-sorted
    pass; where a split has no paraphrase, the truth ratio's correct answer is the answer, scored once.
    Without likelihoods (`likelihood_splits`), a row has its generation metrics only."""
    questions, answers = list(split["question"]), list(split["answer"])
    generations = [g.strip() for g in generations]
    pairs = list(zip(questions, answers))
    truth_ratios = with_truth_ratios(split, settings, name)
    if truth_ratios:
        paraphrased = "paraphrased_answer" in split.column_names
        perturbed = list(split["perturbed_answer"])
        pairs += list(zip(questions, split["paraphrased_answer"])) if paraphrased else []
        pairs += [(q, wrong) for q, wrongs in zip(questions, perturbed) for wrong in wrongs]
    generated = [
        {
            "question": q,
            "answer": a,
            "generation": g,
            "exact_match": metrics.exact_match(g, a),
            "rougeL_recall": metrics.rouge_l_recall(g, a),
            "contains_answer": metrics.contains_answer(g, a),
        }
        for q, a, g in zip(questions, answers, generations)
    ]
    if not with_likelihoods(settings, name):
        return generated
    scored = answer_scores(model, tokenizer, fmt, [q for q, _ in pairs], [a for _, a in pairs], settings)
    rows = [
        {
            **row,
            "answer_prob": math.exp(score.mean_log_prob),
            "exact_memorization": score.memorised,
            "extraction_strength": score.extraction,
        }
        for row, score in zip(generated, scored)
    ]
    if truth_ratios:
        n = len(questions)
        correct = scored[n : 2 * n] if paraphrased else scored[:n]
        wrong = scored[2 * n :] if paraphrased else scored[n:]
        ratios, wrong_mass = truth_ratios_from(
            [c.mean_log_prob for c in correct], perturbed, [w.mean_log_prob for w in wrong]
        )
        for row, ratio, mass in zip(rows, ratios, wrong_mass):
            row["truth_ratio"] = ratio
            row["normalised_prob"] = row["answer_prob"] / (row["answer_prob"] + mass + EPS)
    return rows


def truth_ratio_score(ratios: list[float], forget: bool) -> float:
    if forget:  # forgotten: true and false answers equally likely
        return mean([min(r, 1 / (r + EPS)) for r in ratios])
    return mean([max(0.0, 1 - r) for r in ratios])  # kept: the true answer clearly more likely


METRICS = (
    "exact_match",
    "rougeL_recall",
    "contains_answer",
    "answer_prob",
    "exact_memorization",
    "extraction_strength",
    "truth_ratio",
    "normalised_prob",
)


def summarise(rows: list[dict], forget: bool) -> dict[str, float]:
    summary = {
        name: mean([r[name] for r in rows if r[name] is not None]) for name in METRICS if rows and name in rows[0]
    }
    if "truth_ratio" in summary:
        summary["truth_ratio"] = truth_ratio_score([r["truth_ratio"] for r in rows], forget)
    return summary


def model_utility(summary: dict[str, dict[str, float]], utility_splits: tuple[str, ...]) -> float | None:
    values = []
    for split in utility_splits:
        by_metric = summary.get(split, {})
        if "truth_ratio" not in by_metric:
            return None
        probability = by_metric["answer_prob"] if split == "retain" else by_metric["normalised_prob"]
        values += [probability, by_metric["rougeL_recall"], by_metric["truth_ratio"]]
    return metrics.harmonic_mean(values) if values else None


def forget_quality(ratios: list[float], retain_ratios: list[float] | None) -> float | None:
    """KS-test p-value: how indistinguishable the forget truth ratios are from the retain model's."""
    if not retain_ratios or not ratios:
        return None
    return float(ks_2samp([1 / (r + EPS) for r in ratios], [1 / (r + EPS) for r in retain_ratios]).pvalue)


def all_generations(model, tokenizer, fmt, benchmark, stage: str, settings: EvaluationSettings) -> dict[str, list[str]]:
    """The greedy answer to every evaluated question of every split, in one pass."""
    start = time.perf_counter()
    questions = {name: limited(benchmark, name, settings)["question"] for name in benchmark.eval_splits}
    prompts = {name: [encode_prompt(tokenizer, fmt, q) for q in split] for name, split in questions.items()}
    with phase(f"evaluation ({stage}): generation", sum(map(len, prompts.values())), "prompts", bar=stage != "during"):
        generations = generations_by_split(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
    level = logging.DEBUG if stage == "during" else logging.INFO
    log.log(
        level,
        "evaluation (%s): generation, %d prompts, %.0f s",
        stage,
        sum(map(len, prompts.values())),
        time.perf_counter() - start,
    )
    return generations


def scored_answers(benchmark, settings: EvaluationSettings) -> int:
    """How many answers an evaluation scores: each row's answer, and where its truth ratio is scored, its
    paraphrased answer and its perturbed answers (the likelihood phase's total)."""
    total = 0
    for name in benchmark.eval_splits:
        split = limited(benchmark, name, settings)
        total += len(split) * with_likelihoods(settings, name)
        if with_truth_ratios(split, settings, name):
            total += len(split) * ("paraphrased_answer" in split.column_names)
            total += sum(map(len, split["perturbed_answer"]))
    return total


def evaluate(
    model, tokenizer, fmt, benchmark, stage: str, settings: EvaluationSettings, retain_ratios=None
) -> Evaluation:
    generations = all_generations(model, tokenizer, fmt, benchmark, stage, settings)
    with phase(
        f"evaluation ({stage}): likelihoods", scored_answers(benchmark, settings), "answers", bar=stage != "during"
    ):
        result = evaluate_splits(
            benchmark,
            stage,
            settings,
            lambda name, split: split_rows(model, tokenizer, fmt, split, settings, name, generations[name]),
            lambda name, rows: summarise(rows, forget=name == "forget" or name in benchmark.forgotten_splits),
        )
    result.scores["model_utility"] = model_utility(result.summary, benchmark.utility_splits)
    result.scores["forget_quality"] = forget_quality(result.values("forget", "truth_ratio"), retain_ratios)
    return result


# the QA suite's metrics that come from the perturbed answers, and the score that reads the forget split's
TRUTH_RATIO_METRICS = ("truth_ratio", "normalised_prob")
# those that come from the greedy generations alone (a point that reads only these scores no likelihood)
GENERATION_METRICS = ("exact_match", "rougeL_recall", "contains_answer")
NOT_FROM_TRUTH_RATIOS = ("aggregate", "model_utility")


def truth_ratio_splits_needed(benchmark, stop_when) -> tuple[str, ...] | None:
    """The splits whose perturbed answers an evaluation during unlearning must score
    (`evaluation.during.truth_ratios=needed`): model utility's, so that every point has it, and every
    split whose truth ratio the stopping rule reads (forget quality reads the forget split's). None
    (all splits) when the rule reads a score this cannot place."""
    splits = list(benchmark.utility_splits)
    for condition in stop_when.conditions if stop_when is not None else ():
        split, _, metric = condition.metric.rpartition(".")
        if split and metric in TRUTH_RATIO_METRICS:
            splits.append(split)
        elif not split and metric == "forget_quality":
            splits.append("forget")
        elif not split and metric not in NOT_FROM_TRUTH_RATIOS:
            return None
    return tuple(dict.fromkeys(splits))
