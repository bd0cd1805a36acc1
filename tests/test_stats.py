"""Welch's interval against its textbook formula, and the verdict it allows."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from qpeft.stats import holm, welch


def test_welch_interval_is_the_textbook_formula():
    a, b = [80.1, 81.3, 79.8, 82.0, 80.6], [82.2, 83.0, 81.9]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    gap = welch(a, b)
    diff = np.mean(a) - np.mean(b)
    assert (
        math.isclose(gap.diff, diff)
        and math.isclose(gap.low, diff - half)
        and math.isclose(gap.high, diff + half)
    )
    assert gap.verdict == ("behind" if diff + half < 0 else "level")


def test_verdicts():
    assert welch([90, 91, 92], [80, 81, 82]).verdict == "ahead"
    assert welch([80, 81, 82], [90, 91, 92]).verdict == "behind"
    assert welch([80, 85, 90], [82, 86, 88]).verdict == "level"
    assert welch([80], [82, 86]).verdict == "?"  # one seed: no interval
    assert welch([80, math.nan], [82, 86]).verdict == "?"  # a constant prediction's correlation
    assert welch([80, 80], [70, 70]).verdict == "ahead"  # no spread on either side: the gap is exact


def closed_bonferroni(pvalues, family, alpha=0.05):
    """Holm's procedure is the closed test of Bonferroni's local tests (Holm 1979): H_i is rejected iff every
    intersection of hypotheses that contains it is, i.e. min p over the subset <= alpha / |subset|. The untested
    rest of the family, and an undefined gap, is p = 1."""
    p = [1.0 if math.isnan(x) else x for x in pvalues] + [1.0] * (
        family - len(pvalues)
    )  # nan: never rejected
    out = []
    for i in range(len(pvalues)):
        others = [j for j in range(len(p)) if j != i]
        subsets = (s for size in range(len(others) + 1) for s in itertools.combinations(others, size))
        out.append(all(min(p[j] for j in (i, *s)) <= alpha / (len(s) + 1) for s in subsets))
    return out


def test_holm_is_the_closed_bonferroni_test():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 6))
        p = list(rng.uniform(0, 0.06, n) ** rng.uniform(0.5, 3))
        if rng.random() < 0.2:
            p[0] = math.nan
        family = n + int(rng.integers(0, 4))
        assert holm(p, family) == closed_bonferroni(p, family), (p, family)
    # the claim study's two tasks' LoRA gaps on 72 records, in a family of 10: r=8's stand, r=1's do not
    assert holm([0.0243, 0.0020, 0.0271, 0.0028], family=10) == [False, True, False, True]
    with pytest.raises(ValueError, match="family of 2"):
        holm([0.01, 0.02, 0.03], family=2)
