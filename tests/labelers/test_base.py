"""Helpers of the labeler protocol shared by every backend."""

from __future__ import annotations

import pytest

from rlaif.labelers.base import first_option


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(A)", 0),
        (" (B) is better", 1),
        ("I pick (B), not (A).", 1),  # the earliest parenthesised label wins
        ("B", 1),
        ("Answer: A", 0),
        ("A better answer is B", None),  # "A" is an article here: ambiguous, not a vote
        ("neither", None),
        ("", None),
        ("ABBA", None),  # labels only count as whole words
    ],
)
def test_first_option(text, expected):
    assert first_option(text, [" (A)", " (B)"]) == expected


def test_first_option_with_more_options():
    assert first_option("The answer is (C).", [" (A)", " (B)", " (C)"]) == 2
