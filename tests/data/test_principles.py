"""Per-principle numbers, checked against values worked out by hand, and the cards that show
them."""

from __future__ import annotations

import pytest

from rlaif.data.cards import write_prefs_card, write_sl_cai_card
from rlaif.data.principles import (
    edit_distance,
    markdown_table,
    prefs_principles,
    prompt_text,
    sl_cai_principles,
    sl_cai_rounds,
)
from rlaif.engine.scheduler import EngineStats


def sl_row(id_, response, rounds):
    return {
        "id": id_,
        "prompt": [{"role": "user", "content": f"prompt {id_}"}],
        "response": response,
        "rounds": [
            {"principle_id": p, "critique": "c", "revision": text, "flags": flags}
            for p, text, flags in rounds
        ],
        "revision": rounds[-1][1],
        "flags": sorted({f for _, _, fl in rounds for f in fl}),
        "tokens": 5,
    }


# harm: 3 rounds over 2 rows; edits 1 ("three" -> "four"), 2 (two words added), 3 (three
# removed); all changed; one `truncated`. privacy: 1 round, unchanged, flagged `unchanged`.
SL_ROWS = [
    sl_row("r1", "one two three", [("harm", "one two four", []),
                                   ("privacy", "one two four ", ["unchanged"])]),
    sl_row("r2", "alpha beta", [("harm", "alpha beta gamma delta", []),
                                ("harm", "alpha", ["truncated"])]),
]  # fmt: skip


def test_edit_distance_counts_words():
    assert edit_distance("one two three", "one two four") == 1
    assert edit_distance("a b", "a b c d") == 2
    assert edit_distance("same  words\n", "same words") == 0  # whitespace is not a word
    assert edit_distance("", "x y") == 2


def test_rounds_compare_each_revision_with_the_text_it_revised():
    rounds = sl_cai_rounds(SL_ROWS[1])
    assert [(r["changed"], r["edit"]) for r in rounds] == [(True, 2), (True, 3)]
    assert sl_cai_rounds(SL_ROWS[0])[1] == {
        "principle_id": "privacy", "changed": False, "edit": 0, "flags": ["unchanged"],
    }  # fmt: skip


def test_sl_cai_per_principle_by_hand():
    harm, privacy = sl_cai_principles(SL_ROWS)
    assert harm == {
        "principle_id": "harm", "rounds": 3, "rows": 2, "changed": 3, "changed_share": 1.0,
        "mean_edit_words": 2.0, "flags": {"truncated": 1},
    }  # fmt: skip
    assert privacy == {
        "principle_id": "privacy", "rounds": 1, "rows": 1, "changed": 0, "changed_share": 0.0,
        "mean_edit_words": 0.0, "flags": {"unchanged": 1},
    }  # fmt: skip


def judgement(pid, order, prob_a):
    return {"principle_id": pid, "order": order, "prob_a": prob_a}


# pair 1 chose A (prob_a 0.6): harm says 0.8 / 0.6 (orders agree), privacy 0.3 / 0.7 (a flip).
# pair 2 chose B (prob_a 0.3): harm 0.2 / 0.4 (agree), privacy 0.5 in one order only.
# pair 3 chose B: harm 0.5 / 0.1 (a tie in one order: neither agreement nor flip).
PREF_ROWS = [
    {"id": "p1/0-1", "prob_a": 0.6, "judgements": [
        judgement("harm", "ab", 0.8), judgement("harm", "ba", 0.6),
        judgement("privacy", "ab", 0.3), judgement("privacy", "ba", 0.7)]},
    {"id": "p2/0-1", "prob_a": 0.3, "judgements": [
        judgement("harm", "ab", 0.2), judgement("harm", "ba", 0.4),
        judgement("privacy", "ab", 0.5), judgement("privacy", "ba", None)]},
    {"id": "p3/0-1", "prob_a": 0.3, "judgements": [
        judgement("harm", "ab", 0.5), judgement("harm", "ba", 0.1),
        judgement("calm", "ab", None)]},
]  # fmt: skip


def test_prefs_per_principle_by_hand():
    harm, privacy, calm = prefs_principles(PREF_ROWS)
    # P(chosen better) under harm: 0.7 (chose A), 1 - 0.3 (chose B), 1 - 0.3 -> mean 0.7
    assert harm["principle_id"] == "harm" and harm["pairs"] == 3 and harm["scored"] == 3
    assert harm["mean_soft_label"] == pytest.approx(0.7)
    assert (harm["both_orders"], harm["agree"], harm["flips"]) == (3, 2, 0)
    assert harm["agreement"] == pytest.approx(2 / 3) and harm["position_bias"] == 0.0
    # privacy: pair 1 -> 0.5 (chose A), pair 2 -> 1 - 0.5 = 0.5; one pair in both orders, a flip
    assert privacy["pairs"] == 2 and privacy["mean_soft_label"] == pytest.approx(0.5)
    assert (privacy["both_orders"], privacy["flips"], privacy["position_bias"]) == (1, 1, 1.0)
    # calm judged one pair and gave no probability
    assert calm == {
        "principle_id": "calm", "pairs": 1, "scored": 0, "mean_soft_label": None,
        "both_orders": 0, "agree": 0, "agreement": None, "position_bias": None, "flips": 0,
    }  # fmt: skip


def test_markdown_tables():
    sl = markdown_table("sl_cai", sl_cai_principles(SL_ROWS))
    assert sl[2] == "| `harm` | 3 | 2 | 3/3 (100%) | 2.0 | truncated 1 |"
    assert sl[3] == "| `privacy` | 1 | 1 | 0/1 (0%) | 0.0 | unchanged 1 |"
    prefs = markdown_table("prefs", prefs_principles(PREF_ROWS))
    assert prefs[2] == "| `harm` | 3 | 0.700 | 2/3 (67%) | 0/3 (0%) |"
    assert prefs[4] == "| `calm` | 1 (1 without a probability) | n/a | n/a | n/a |"


def test_prompt_text_takes_text_or_the_last_user_turn():
    assert prompt_text("plain") == "plain"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and now?"}]  # fmt: skip
    assert prompt_text(turns) == "and now?"


PROVENANCE = {
    "rlaif": "0.1.0", "rounds": 2, "cleanup": "fix", "few_shot": True,
    "constitution": {"name": "harmless", "version": 1, "sha256": "0" * 64},
    "params": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 8, "seed": 0, "n": 2},
    "source": {"file": "prompts.txt", "sha256": "1" * 64},
    "policy": {"backend": "fake", "model": "m"}, "critic": {"backend": "fake", "model": "m"},
    "labeler": {"backend": "fake", "model": "m"}, "templates": {},
    "feedback": {"mode": "logprobs", "both_orders": True, "principles": 2, "cot": False,
                 "clamp_low": 0.4, "clamp_high": 0.6, "votes": 8},
}  # fmt: skip


def test_cards_show_the_per_principle_tables(tmp_path):
    sl = tmp_path / "sl"
    sl.mkdir()
    card = write_sl_cai_card(sl, SL_ROWS, PROVENANCE, EngineStats(), 1.0, "cmd", 0).read_text()
    assert "### Principles used" in card and "mean edit distance (words)" in card
    assert (
        "| `harm` | 3 | 2 | 3/3 (100%) | 2.0 | truncated 1 | ██████████████████████████████ |"
        in card
    )
    rows = [{**r, "preference_prob": max(r["prob_a"], 1 - r["prob_a"]),
             "position_consistent": True, "principle_agreement": None,
             "prompt": [{"role": "user", "content": "q"}],
             "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "assistant", "content": "y"}]} for r in PREF_ROWS]  # fmt: skip
    for r in rows:
        for j in r["judgements"]:
            j.setdefault("unparsed", 0)
    prefs = tmp_path / "prefs"
    prefs.mkdir()
    card, _ = write_prefs_card(prefs, rows, [], [], PROVENANCE, EngineStats(), 1.0, "cmd", 0)
    text = card.read_text()
    assert "both orders agree" in text and "position flips (bias)" in text
    assert "| `privacy` | 2 | 0.500 | 0/1 (0%) | 1/1 (100%) |" in text
