"""Gaps between methods over seeds: Welch's t interval, and the verdict it allows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gap:
    """mean(a) - mean(b) over seeds (x100 where the inputs are), its 95% Welch interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    n_a: int
    n_b: int

    @property
    def verdict(self) -> str:
        """`ahead` or `behind` only where the interval excludes zero; `level` where it holds it; `?` undefined."""
        if math.isnan(self.low) or math.isnan(self.high):
            return "?"
        return "ahead" if self.low > 0 else "behind" if self.high < 0 else "level"

    def text(self) -> str:
        if math.isnan(self.diff):
            return "nan"
        if math.isnan(self.low):
            return f"{self.diff:+.2f}"
        return f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def welch(a: list[float], b: list[float], level: float = 0.95) -> Gap:
    """Welch's unequal-variance t interval for mean(a) - mean(b); nan bounds for fewer than two values a side, or
    a nan value (a run that predicted a constant): such a gap is never called ahead or behind."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2 or np.isnan(x).any() or np.isnan(y).any():
        return Gap(diff, math.nan, math.nan, math.nan, len(x), len(y))
    if x.var(ddof=1) == 0 and y.var(ddof=1) == 0:
        return Gap(diff, diff, diff, 0.0 if diff else 1.0, len(x), len(y))
    test = stats.ttest_ind(x, y, equal_var=False)
    ci = test.confidence_interval(level)
    return Gap(diff, float(ci.low), float(ci.high), float(test.pvalue), len(x), len(y))


def holm(pvalues: list[float], family: int | None = None, alpha: float = 0.05) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected with the family-wise error kept at `alpha`. `family` is the
    number of hypotheses the family was declared with (default: these); those not tested yet count as p = 1, and a
    nan p-value (an undefined gap) is never rejected. The i-th smallest p is compared with alpha / (family - i)
    (i from 0), stopping at the first that fails."""
    family = len(pvalues) if family is None else family
    if family < len(pvalues):
        raise ValueError(f"family of {family} hypotheses, but {len(pvalues)} p-values")
    order = sorted(range(len(pvalues)), key=lambda i: (math.isnan(pvalues[i]), pvalues[i]))
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if math.isnan(pvalues[i]) or pvalues[i] > alpha / (family - rank):
            break
        rejected[i] = True
    return rejected


def family_wise(gaps: list[Gap], family: int | None = None, alpha: float = 0.05) -> list[str]:
    """The gaps read as one family of `family` comparisons (Holm's step-down on their Welch p-values): `stands`
    where an ahead / behind verdict survives it, `not family-wise` where it does not, "" for a level or undecided
    gap."""
    rejected = holm([g.p for g in gaps], family, alpha)
    return [
        ("stands" if r else "not family-wise") if g.verdict in ("ahead", "behind") else ""
        for g, r in zip(gaps, rejected, strict=True)
    ]
