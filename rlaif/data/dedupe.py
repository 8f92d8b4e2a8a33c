"""Exact and near-duplicate text detection: normalised keys, word shingles, MinHash LSH.

Generated prompts repeat: a model shown the same seeds writes the same request twice, or a seed
with two words changed. Exact duplicates are caught by a normalised key (case-folded, punctuation
dropped, whitespace collapsed), so "How do I X?" and "how do i x" are one text. Near-duplicates
are pairs whose sets of word shingles (runs of ``shingle_words`` consecutive words) have a Jaccard
similarity of at least ``threshold``. Short prompts are a dozen words, so shingles are short too
(2 words by default): one changed word then costs two shingles out of ten, not all of them.

Comparing every new text with every earlier one is quadratic, and the Constitutional AI paper's
set held ~180K prompts, so candidates come from ``datasketch``'s MinHash LSH index (banded
MinHash signatures, tuned to ``threshold``) and each candidate is then checked with the exact
Jaccard of the two shingle sets. A pair reported is therefore always at or above the threshold;
LSH may miss a pair just above it (a false negative), which is the price of sub-quadratic work.

``nearest`` reports, for each text, the most similar text of a reference set (the novelty of a
generated prompt against its seeds). Small sets are compared exhaustively; large ones through a
MinHash LSH Forest (top candidates by signature, then exact Jaccard), so the value is a lower
bound there; ``nearest_method`` says which one ran.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NUM_PERM = 128  # MinHash permutations: the signature length (precision against cost)
EXHAUSTIVE_PAIRS = 2_000_000  # ``nearest`` compares every pair up to this many pairs
FOREST_CANDIDATES = 20

_WORD = re.compile(r"\w+")
_APOSTROPHE = re.compile(r"(?<=\w)['\u2019](?=\w)")  # isn't -> isnt, one word


def normalise(text: str) -> str:
    """The key of exact duplicates: words only, case-folded, one space apart."""
    return " ".join(_WORD.findall(_APOSTROPHE.sub("", text.casefold())))


def shingles(text: str, words: int = 2) -> frozenset[str]:
    """The set of runs of ``words`` consecutive words (a shorter text is one shingle)."""
    tokens = normalise(text).split()
    if len(tokens) <= words:
        return frozenset([" ".join(tokens)]) if tokens else frozenset()
    return frozenset(" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _minhash(shingle_set: frozenset[str]) -> Any:
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode("utf-8") for s in sorted(shingle_set)])
    return m


@dataclass
class Match:
    key: str
    similarity: float  # exact Jaccard of the shingle sets (1.0 for an exact duplicate)
    exact: bool


@dataclass
class DuplicateIndex:
    """Texts added so far, queried for an exact or near duplicate of a new text."""

    threshold: float = 0.5
    shingle_words: int = 2
    _exact: dict[str, str] = field(default_factory=dict, init=False)
    _sets: dict[str, frozenset[str]] = field(default_factory=dict, init=False)
    _order: dict[str, int] = field(default_factory=dict, init=False)
    _lsh: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)

    def add(self, key: str, text: str) -> None:
        self._exact.setdefault(normalise(text), key)
        s = shingles(text, self.shingle_words)
        self._sets[key] = s
        self._order[key] = len(self._order)
        if s:
            self._lsh.insert(key, _minhash(s))

    def find(self, text: str) -> Match | None:
        """The exact duplicate of ``text`` if there is one, else its most similar near
        duplicate (ties: the earliest added), else None."""
        found = self._exact.get(normalise(text))
        if found is not None:
            return Match(found, 1.0, exact=True)
        s = shingles(text, self.shingle_words)
        if not s:
            return None
        best: Match | None = None
        for key in sorted(self._lsh.query(_minhash(s)), key=self._order.__getitem__):
            sim = jaccard(s, self._sets[key])
            if sim >= self.threshold and (best is None or sim > best.similarity):
                best = Match(key, sim, exact=False)
        return best


def nearest_method(queries: int, references: int) -> str:
    return "exhaustive" if queries * references <= EXHAUSTIVE_PAIRS else "lsh-forest"


def nearest(
    queries: Sequence[str], references: dict[str, str], shingle_words: int = 2
) -> list[Match | None]:
    """For each query, the most similar reference text (key and Jaccard); None when no
    reference shares a shingle with it (or none was found among the forest's candidates)."""
    ref_sets = {k: shingles(t, shingle_words) for k, t in references.items()}
    query_sets = [shingles(q, shingle_words) for q in queries]
    if nearest_method(len(queries), len(references)) == "exhaustive":
        candidates: list[Sequence[str]] = [list(ref_sets)] * len(queries)
    else:
        from datasketch import MinHashLSHForest

        forest = MinHashLSHForest(num_perm=NUM_PERM)
        for key, s in ref_sets.items():
            if s:
                forest.add(key, _minhash(s))
        forest.index()
        candidates = [forest.query(_minhash(s), FOREST_CANDIDATES) if s else [] for s in query_sets]
    out: list[Match | None] = []
    for s, keys in zip(query_sets, candidates, strict=True):
        best: Match | None = None
        for key in keys:
            sim = jaccard(s, ref_sets[key])
            if sim > 0 and (best is None or sim > best.similarity):
                best = Match(key, sim, exact=sim == 1.0)
        out.append(best)
    return out
