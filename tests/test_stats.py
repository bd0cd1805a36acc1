"""Welch's interval against its textbook formula, and the verdict it allows."""

import math

import numpy as np
from scipy import stats

from qpeft.stats import welch


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
