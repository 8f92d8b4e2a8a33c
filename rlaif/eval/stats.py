"""Confidence intervals for the rates rlaif reports (agreement, win rates, shares of answers).

A rate from 8 held-out prompts or 200 gold pairs means little without its uncertainty, so each
one is reported with a 95% interval:

- ``wilson``: for a plain proportion (k successes of n independent trials). Unlike the normal
  approximation it stays inside [0, 1] and behaves at 0/n and n/n. Half-successes (a tie counted
  as 0.5) enter as they are.
- ``bootstrap_mean``: for a mean of per-prompt values that are not 0/1 (a win probability),
  resampling prompts with replacement; seeded, so the same data gives the same interval.
- ``paired_bootstrap_diff``: for a before/after difference on the same prompts, resampling the
  prompts together so their pairing is kept. An interval that contains 0 is "no measurable
  change".
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / n``; None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentiles(stats: list[float], level: float) -> tuple[float, float]:
    stats.sort()
    tail = (1 - level) / 2
    lo = stats[math.floor(tail * (len(stats) - 1))]
    hi = stats[math.ceil((1 - tail) * (len(stats) - 1))]
    return lo, hi


def bootstrap_mean(
    values: Sequence[float], seed: int = 0, rounds: int = 2000, level: float = 0.95
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    n = len(values)
    if n == 0:
        return None
    rng = random.Random(seed)
    means = [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds)]
    return _percentiles(means, level)


def paired_bootstrap_diff(
    after: Sequence[float],
    before: Sequence[float],
    seed: int = 0,
    rounds: int = 2000,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """A bootstrap interval of ``mean(after) - mean(before)``, resampling the pairs together."""
    if len(after) != len(before):
        raise ValueError("paired values must have the same length")
    return bootstrap_mean([a - b for a, b in zip(after, before, strict=True)], seed, rounds, level)


def no_measurable_change(interval: tuple[float, float] | None) -> bool:
    """True when a difference's interval contains 0 (or there is none to speak of)."""
    return interval is None or interval[0] <= 0.0 <= interval[1]


NO_CHANGE = "no measurable change"


def change(interval: tuple[float, float] | None, centre: float = 0.0) -> str | None:
    """``no measurable change`` when the interval holds ``centre``; else which side it lies on
    (``higher``/``lower``); None where there is no interval."""
    if interval is None:
        return None
    lo, hi = interval
    return NO_CHANGE if lo <= centre <= hi else "higher" if lo > centre else "lower"


def fmt_interval(interval: tuple[float, float] | None, percent: bool = True) -> str:
    if interval is None:
        return "n/a"
    lo, hi = interval
    return f"{100 * lo:.1f}-{100 * hi:.1f}%" if percent else f"{lo:.3f} to {hi:.3f}"
