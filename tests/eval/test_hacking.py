"""Reward-hacking monitors: the statistics on known texts, and the warnings."""

from __future__ import annotations

import pytest

from rlaif.eval.hacking import Monitor, Thresholds, distinct_n, repeated_ngram_rate, spearman


def test_distinct_and_repetition():
    assert distinct_n(["a b c d"], 2) == 1.0
    assert distinct_n(["a b a b a b"], 2) == pytest.approx(2 / 5)
    assert distinct_n(["a"], 2) is None
    # 3-grams: (the cat sat) twice, (cat sat the), (sat the cat): 2 of 4 are repeats
    assert repeated_ngram_rate("the cat sat the cat sat") == pytest.approx(2 / 4)
    assert repeated_ngram_rate("one two three four") == 0.0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2], [1, 2]) is None


def test_monitor_warns_on_length_inflation_and_repetition():
    m = Monitor(Thresholds(length_ratio=1.5, distinct_2=0.5, kl=5.0), baseline_steps=1)
    m.check(1, ["a short answer here"], [10.0], kl=0.1)
    assert m.warnings == []
    stats = m.check(2, ["go go go go go go go go"], [40.0], kl=9.0)
    assert stats["monitor/length_ratio"] == pytest.approx(4.0)
    names = {w["monitor"] for w in m.warnings}
    assert names == {"length inflation", "repetition (distinct-2)",
                     "repetition (repeated 3-grams)", "KL to the SFT policy"}  # fmt: skip
    m.check(3, ["fine words"], [10.0], kl=0.0, extra={"monitor/sycophancy": 0.9})
    assert m.warnings[-1]["monitor"] == "sycophancy" and m.warnings[-1]["step"] == 3
