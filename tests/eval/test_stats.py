"""Intervals: known values of the Wilson interval, seeded bootstraps, paired differences."""

from __future__ import annotations

import math

import pytest

from rlaif.eval.stats import (
    Z95,
    bootstrap_mean,
    fmt_interval,
    no_measurable_change,
    paired_bootstrap_diff,
    wilson,
)


def test_wilson_matches_known_values():
    # the endpoints are the proportions p0 whose score test just accepts 52/100:
    # |0.52 - p0| = z * sqrt(p0 (1 - p0) / 100)
    lo, hi = wilson(52, 100)
    for p0 in (lo, hi):
        assert abs(0.52 - p0) == pytest.approx(Z95 * math.sqrt(p0 * (1 - p0) / 100), abs=1e-12)
    assert 0.42 < lo < 0.43 and 0.61 < hi < 0.62
    # at the edges it stays inside [0, 1]: 0/n gives [0, z^2 / (n + z^2)], n/n its mirror
    lo, hi = wilson(0, 8)
    assert lo == 0.0 and hi == pytest.approx(Z95**2 / (8 + Z95**2))
    lo, hi = wilson(8, 8)
    assert hi == 1.0 and lo == pytest.approx(8 / (8 + Z95**2))
    assert wilson(0, 0) is None


def test_bootstrap_is_seeded_and_covers_the_mean():
    values = [0.2, 0.9, 0.4, 0.7, 0.5, 0.6, 0.3, 0.8]
    a = bootstrap_mean(values, seed=3)
    assert a == bootstrap_mean(values, seed=3)  # the same data, the same interval
    lo, hi = a
    assert lo < sum(values) / len(values) < hi and lo >= 0.2 and hi <= 0.9
    assert bootstrap_mean([0.5] * 10) == (0.5, 0.5)
    assert bootstrap_mean([]) is None


def test_paired_difference_of_identical_policies_is_no_change():
    same = [0.1, 0.9, 0.5, 0.4, 0.7]
    diff = paired_bootstrap_diff(same, same)
    assert diff == (0.0, 0.0) and no_measurable_change(diff)
    better = paired_bootstrap_diff([x + 0.2 for x in same], same)
    assert better == pytest.approx((0.2, 0.2)) and not no_measurable_change(better)
    noisy = paired_bootstrap_diff([0.6, 0.4, 0.5, 0.55, 0.45], [0.5] * 5)
    assert no_measurable_change(noisy)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_diff([1.0], [1.0, 2.0])


def test_format():
    assert fmt_interval((0.4232, 0.6154)) == "42.3-61.5%"
    assert fmt_interval(None) == "n/a"
