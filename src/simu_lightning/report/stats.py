"""Means and 95% confidence intervals over seeds (Student's t, scipy), and the difference between two groups:
paired by seed where they share seeds, Welch's otherwise, with a TOST equivalence test at a margin."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy import stats

ALPHA = 0.05  # of the equivalence test (each one-sided test); the intervals are 1 - ALPHA
# the words a difference gets: equivalent within the margin, an interval that holds 0, or one that does not
LEVEL, NO_DIFFERENCE, AHEAD, BEHIND, TOO_FEW = "level", "no difference detected", "ahead", "behind", "too few runs"


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high); the interval is NaN with fewer than two values, and collapses when they agree."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    sem = stats.sem(values)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """A group minus another in one figure: its mean, 95% interval and two-sided p-value (difference 0);
    paired: over the seeds both share (`pairs` of them, `ahead` / `behind`: how many seeds point each way);
    Welch: the two groups' means (`pairs` 0). `tost_p`: the equivalence test's p-value at `margin` (the
    larger of the two one-sided tests), None without a margin."""

    pairing: str  # "paired" or "Welch"
    n_first: int
    n_second: int
    pairs: int
    mean: float
    low: float
    high: float
    p: float
    ahead: int | None
    behind: int | None
    margin: float | None
    tost_p: float | None

    @property
    def verdict(self) -> str:
        """ "level" where the equivalence test at the margin holds; else "no difference detected" where the
        interval holds 0, "ahead" / "behind" (the first group) where it does not."""
        if math.isnan(self.low):
            return TOO_FEW
        if self.tost_p is not None and self.tost_p < ALPHA:
            return LEVEL
        if self.low <= 0 <= self.high:
            return NO_DIFFERENCE
        return AHEAD if self.mean > 0 else BEHIND

    @property
    def seeds(self) -> str:
        """How many seeds point each way ("3 of 3 behind", "2 of 3 ahead, 1 behind"); "" unpaired."""
        if self.ahead is None:
            return ""
        ways = [(self.behind, "behind"), (self.ahead, "ahead"), (self.pairs - self.ahead - self.behind, "tied")]
        ways = sorted((w for w in ways if w[0]), key=lambda w: -w[0])
        (count, way), rest = ways[0], ways[1:]
        return ", ".join([f"{count} of {self.pairs} {way}", *(f"{c} {w}" for c, w in rest)])

    @property
    def described(self) -> str:
        """How the interval was made: "paired, 3 seeds", "paired on 2 shared seeds (3 and 2 runs)" or
        "Welch, 3 and 2 runs"."""
        if self.pairing == "paired":
            if self.pairs == self.n_first == self.n_second:
                return f"paired, {self.pairs} seeds"
            return f"paired on {self.pairs} shared seeds ({self.n_first} and {self.n_second} runs)"
        return f"Welch, {self.n_first} and {self.n_second} runs"


def _one_sample(values: list[float], popmean: float, alternative: str) -> float:
    """The p-value of a one-sample t test; values that all agree decide it outright."""
    if len(set(values)) == 1:
        mean = values[0]
        holds = {"two-sided": mean != popmean, "greater": mean > popmean, "less": mean < popmean}[alternative]
        return 0.0 if holds else 1.0
    return float(stats.ttest_1samp(values, popmean, alternative=alternative).pvalue)


def paired(first: list[float], second: list[float], margin: float | None = None) -> Difference:
    """`first` minus `second`, pair by pair (the same seed): the mean of the differences, a Student-t 95%
    interval on it (n - 1 degrees of freedom), and at a margin the TOST: two one-sided t tests of the
    differences against -margin and +margin."""
    diffs = [a - b for a, b in zip(first, second, strict=True)]
    n = len(diffs)
    mean, low, high = mean_ci(diffs, 1 - ALPHA)
    p = _one_sample(diffs, 0.0, "two-sided") if n > 1 else math.nan
    tost = None
    if margin is not None and n > 1:
        tost = max(_one_sample(diffs, -margin, "greater"), _one_sample(diffs, margin, "less"))
    return Difference(
        "paired",
        n,
        n,
        n,
        mean,
        low,
        high,
        p,
        sum(d > 0 for d in diffs),
        sum(d < 0 for d in diffs),
        margin,
        tost,
    )


def _welch_p(first: list[float], second: list[float], shift: float, alternative: str) -> float:
    """p-value of Welch's test that mean(first) - mean(second) differs from `shift` in `alternative`."""
    shifted = [b + shift for b in second]
    if len(set(first)) == 1 and len(set(shifted)) == 1:  # no spread anywhere: the means decide
        return _one_sample([first[0] - shifted[0]], 0.0, alternative)
    return float(stats.ttest_ind(first, shifted, equal_var=False, alternative=alternative).pvalue)


def welch(first: list[float], second: list[float], margin: float | None = None) -> Difference:
    """mean(first) - mean(second) of two groups that share no seeds: Welch's t interval (Welch-Satterthwaite
    degrees of freedom), and at a margin the TOST with Welch's one-sided tests."""
    n1, n2 = len(first), len(second)
    mean = (sum(first) / n1 if n1 else math.nan) - (sum(second) / n2 if n2 else math.nan)
    if n1 < 2 or n2 < 2:
        return Difference("Welch", n1, n2, 0, mean, math.nan, math.nan, math.nan, None, None, margin, None)
    v1, v2 = stats.tvar(first) / n1, stats.tvar(second) / n2
    if v1 + v2 == 0:
        low = high = mean
    else:
        dof = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
        half = float(stats.t.ppf(1 - ALPHA / 2, dof)) * math.sqrt(v1 + v2)
        low, high = mean - half, mean + half
    p = _welch_p(first, second, 0.0, "two-sided")
    tost = None
    if margin is not None:
        tost = max(_welch_p(first, second, -margin, "greater"), _welch_p(first, second, margin, "less"))
    return Difference("Welch", n1, n2, 0, mean, low, high, p, None, None, margin, tost)


def difference(first: dict, second: dict, margin: float | None = None) -> Difference:
    """`first` minus `second`, each {seed: value}: paired on the seeds both hold where there are at least
    two of them (the rest left out), else Welch's on all the values."""
    shared = sorted((s for s in first if s is not None and s in second), key=str)
    if len(shared) >= 2:
        found = paired([first[s] for s in shared], [second[s] for s in shared], margin)
        return replace(found, n_first=len(first), n_second=len(second))
    return welch(list(first.values()), list(second.values()), margin)
