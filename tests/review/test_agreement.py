"""Human-AI agreement per principle with Wilson intervals, and Cohen's kappa between people."""

from __future__ import annotations

import pytest

from rlaif.eval.stats import wilson
from rlaif.review.agreement import between_people, cohen_kappa, human_ai


def test_cohen_kappa_known_values():
    # 3 of 4 agree; chance agreement 0.75 * 0.5 + 0.25 * 0.5 = 0.5
    assert cohen_kappa(["a", "a", "b", "a"], ["a", "b", "b", "a"]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # no variation to agree on
    assert cohen_kappa([], []) is None


def test_pairs_against_the_ai_overall_and_per_principle(folder):
    store = folder.store
    store.add("prefs", "q1/0-1", "pair", "a", "ann")  # AI: A (crime-illegal 0.86/0.74)
    store.add("prefs", "q3/0-1", "pair", "a", "ann")  # AI: B
    store.add("prefs", "q6/0-1", "pair", "b", "ann")  # AI: A overall; privacy B, crime A
    store.add("prefs", "q2/0-1", "pair", "tie", "ann")  # counted apart
    store.add("prefs", "q5/0-1", "pair", "skip", "ben")
    out = human_ai(folder.by_key, store.current())["pairs"]
    assert (out["k"], out["n"], out["ties"], out["skips"]) == (1, 3, 1, 1)
    assert out["ci95"] == pytest.approx(list(wilson(1, 3)))
    by = {p["principle_id"]: (p["k"], p["n"]) for p in out["by_principle"]}
    # q6 under privacy: mean 0.545 -> A; under crime-illegal: 0.55 -> A; person said B
    assert by == {"crime-illegal": (1, 2), "dangerous-advice": (0, 1), "privacy": (0, 1)}


def test_sl_cai_questions(folder):
    store = folder.store
    store.add("sl_cai", "p1", "revision_better", "b", "ann")  # changed: agrees
    store.add("sl_cai", "p5", "revision_better", "a", "ann")  # changed: disagrees
    store.add("sl_cai", "p3", "revision_better", "b", "ann")  # unchanged: no claim
    store.add("sl_cai", "p1", "critique_real", "yes", "ann")
    store.add("sl_cai", "p5", "critique_real", "no", "ann")
    out = human_ai(folder.by_key, store.current())
    rev, crit = out["revision_better"], out["critique_real"]
    assert (rev["k"], rev["n"], rev["unchanged"]) == (1, 2, 1)
    assert (crit["k"], crit["n"]) == (1, 2)
    by = {p["principle_id"]: (p["k"], p["n"]) for p in crit["by_principle"]}
    assert by["privacy"] == (1, 1) and by["preachy-evasive"] == (0, 1)


def test_between_people_only_on_shared_rows(folder):
    store = folder.store
    for rid, a, b in (("q1/0-1", "a", "a"), ("q2/0-1", "a", "b"), ("q3/0-1", "b", "b"),
                      ("q5/0-1", "a", "a")):  # fmt: skip
        store.add("prefs", rid, "pair", a, "ann")
        store.add("prefs", rid, "pair", b, "ben")
    store.add("prefs", "q7/0-1", "pair", "a", "ann")  # only ann: not shared
    store.add("prefs", "q9/0-1", "pair", "skip", "ben")
    (row,) = between_people(store.current())
    assert row["labelers"] == ["ann", "ben"] and (row["k"], row["n"]) == (3, 4)
    assert row["kappa"] == pytest.approx(0.5)
