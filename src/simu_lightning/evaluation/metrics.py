"""Metric formulas, each on one example (or one list of them), in plain Python / PyTorch.

Callers keep the per-example values and report their mean as the aggregate, so every figure can be
recomputed from `generations.jsonl`.
"""

from __future__ import annotations

import math
import string
from functools import lru_cache

from rouge_score import rouge_scorer
import torch
from scipy.stats import hmean
from torchmetrics.functional.classification import binary_auroc


def normalise(text: str) -> str:
    """Case, surrounding whitespace and trailing punctuation do not count in an exact match."""
    return text.strip().lower().rstrip(string.punctuation + " \t\n")


def exact_match(generation: str, answer: str) -> float:
    return float(normalise(generation) == normalise(answer))


@lru_cache(maxsize=1)
def _rouge():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generation: str, answer: str) -> float:
    """ROUGE-L recall of the generation against the reference answer (rouge-score, Porter stemmer on):
    the longest common subsequence's share of the answer's tokens."""
    return float(_rouge().score(answer, generation)["rougeL"].recall)


def answer_probability(log_prob_sum: float, num_tokens: int) -> float:
    """exp(mean log-probability of the answer tokens): the per-token geometric mean probability
    (open-unlearning's / TOFU's "probability")."""
    return math.exp(log_prob_sum / max(num_tokens, 1))


def harmonic_mean(values: list[float]) -> float:
    """Harmonic mean; any value at or below zero makes it zero (a model that fails one criterion
    entirely scores zero)."""
    return 0.0 if not values or min(values) <= 0 else float(hmean(values))


def unlearning_aggregate(summary: dict[str, dict[str, float]]) -> float:
    """This project's single figure for a forget/retain trade-off: the harmonic mean of
    (1 - forget EM, 1 - forget ROUGE-L recall, retain EM, retain ROUGE-L recall)."""
    return harmonic_mean(
        [
            1 - summary["forget"]["exact_match"],
            1 - summary["forget"]["rougeL_recall"],
            summary["retain"]["exact_match"],
            summary["retain"]["rougeL_recall"],
        ]
    )


def contains_answer(generation: str, answer: str) -> float:
    """Whether the (normalised) answer appears anywhere in the (normalised) generation."""
    return float(normalise(answer) in normalise(generation))


def lume_exact_match(generation: str, answer: str) -> float:
    """LUME's knowledge score, as the official SemEval evaluation computes it: equality after
    `strip().lower()` (no punctuation is ignored)."""
    return float(str(answer).strip().lower() == str(generation).strip().lower())


def mia_auc(member_scores: list[float], nonmember_scores: list[float]) -> float:
    """AUC of a membership attack whose score is higher for non-members (a loss): the chance that a
    non-member scores above a member. LUME's official attack (members positive, score -NLL) and
    open-unlearning's (forget rows labelled 0, score the loss) are both this number."""
    values = torch.tensor(member_scores + nonmember_scores, dtype=torch.float64)
    labels = torch.tensor([0] * len(member_scores) + [1] * len(nonmember_scores))
    return float(binary_auroc(values, labels))


def mia_score(auc: float) -> float:
    """LUME's membership-inference score: 1 - 2|AUC - 0.5| (1 when members and non-members are
    indistinguishable by their loss)."""
    return 1 - 2 * abs(auc - 0.5)
