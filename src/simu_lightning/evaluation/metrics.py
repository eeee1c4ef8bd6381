"""Metric formulas, each on one example (or one list of them), in plain Python / PyTorch.

Callers keep the per-example values and report their mean as the aggregate, so every figure can be
recomputed from `generations.jsonl`.
"""

from __future__ import annotations

import math
import string
from functools import lru_cache

from rouge_score import rouge_scorer
from scipy.stats import hmean, rankdata


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


def rank_auc(negatives: list[float], positives: list[float]) -> float:
    """The chance that a positive scores above a negative, ties counting one half: the Mann-Whitney U
    of the positives over n_negatives * n_positives, from average ranks (scipy's rankdata). Exact on
    any real scores (a classifier AUC that first squashes scores outside [0, 1] through a sigmoid, as
    torchmetrics' binary_auroc does, ties every score above ~37 in float64). NaN when a side is empty."""
    if not negatives or not positives:
        return math.nan
    ranks = rankdata([*negatives, *positives], method="average")
    u = float(ranks[len(negatives) :].sum()) - len(positives) * (len(positives) + 1) / 2
    return u / (len(negatives) * len(positives))


def mia_auc(member_scores: list[float], nonmember_scores: list[float]) -> float:
    """AUC of a membership attack whose score is higher for non-members (a loss): the chance that a
    non-member scores above a member (`rank_auc`). LUME's official attack (members positive, score
    -NLL) and open-unlearning's (forget rows labelled 0, score the loss) are both this number."""
    return rank_auc(member_scores, nonmember_scores)


def mia_score(auc: float) -> float:
    """LUME's membership-inference score: 1 - 2|AUC - 0.5| (1 when members and non-members are
    indistinguishable by their loss)."""
    return 1 - 2 * abs(auc - 0.5)
