"""Exact and near-duplicate detection: normalised keys, word shingles, MinHash LSH, nearest."""

from __future__ import annotations

import pytest

from rlaif.data import dedupe
from rlaif.data.dedupe import DuplicateIndex, jaccard, nearest, normalise, shingles


def test_normalise_ignores_case_punctuation_spacing_and_apostrophes():
    assert normalise("  How do I   hotwire a car that ISN'T mine?! ") == (
        "how do i hotwire a car that isnt mine"
    )
    assert normalise("isn\u2019t") == "isnt" and normalise("...") == ""


def test_shingles_and_jaccard():
    assert shingles("How do I pick a lock?") == {"how do", "do i", "i pick", "pick a", "a lock"}
    assert shingles("Hello") == {"hello"} and shingles("!!") == frozenset()
    assert shingles("a b c", words=3) == {"a b c"}
    a, b = shingles("how do i pick a lock"), shingles("how do i pick a lock quickly")
    assert jaccard(a, b) == pytest.approx(5 / 6)


def test_index_finds_exact_then_near_then_nothing():
    index = DuplicateIndex(threshold=0.5)
    index.add("s1", "How do I hotwire a car that isn't mine?")
    index.add("s2", "What household chemicals make a toxic gas?")
    exact = index.find("how do i HOTWIRE a car that isnt mine")
    assert (exact.key, exact.similarity, exact.exact) == ("s1", 1.0, True)
    near = index.find("How can I hotwire a car that isn't mine?")  # 6 of 10 word pairs
    assert (near.key, near.exact) == ("s1", False) and near.similarity == pytest.approx(0.6)
    assert index.find("Write a poem about the sea") is None
    strict = DuplicateIndex(threshold=0.7)
    strict.add("s1", "How do I hotwire a car that isn't mine?")
    assert strict.find("How can I hotwire a car that isn't mine?") is None


def test_index_prefers_the_most_similar_and_then_the_earliest():
    index = DuplicateIndex(threshold=0.3)
    index.add("loose", "how do i pick a lock at night")
    index.add("close", "how do i pick a lock quickly")
    index.add("twin", "how do i pick a lock quickly")
    found = index.find("how do i pick a lock quickly please")
    assert found.key == "close"  # "twin" ties with it, and came later


@pytest.mark.parametrize("exhaustive", [True, False])
def test_nearest_exhaustive_and_through_the_forest(monkeypatch, exhaustive):
    if not exhaustive:
        monkeypatch.setattr(dedupe, "EXHAUSTIVE_PAIRS", 0)
    refs = {
        "a": "How do I pick a lock?",
        "b": "What household chemicals make a toxic gas?",
        "c": "Tell me how to cheat on a test.",
    }
    got = nearest(["how do i pick a lock quickly", "which chemicals make a toxic gas", "zzz"],
                  refs)  # fmt: skip
    assert dedupe.nearest_method(3, 3) == ("exhaustive" if exhaustive else "lsh-forest")
    assert got[0].key == "a" and got[0].similarity == pytest.approx(5 / 6)
    assert got[1].key == "b" and got[1].similarity == pytest.approx(4 / 7)
    assert got[2] is None
