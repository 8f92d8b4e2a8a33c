"""What the page lists and shows: filters, the word diff, a reproducible sample, the AI hidden."""

from __future__ import annotations

from rlaif.review.rows import Filters, details, sample, word_diff


def ids(folder, **kw):
    return [it.id for it in folder.items if Filters(**kw).match(it)]


def test_filters(folder):
    assert ids(folder, principle="crime-illegal") == ["p1", "q1/0-1", "q6/0-1", "q9/0-1"]
    assert ids(folder, flags=["truncated"]) == ["p4"]
    assert ids(folder, flags=["unchanged"]) == ["p1", "p3"]
    assert ids(folder, flags=["refused"]) == ["p2"]
    assert ids(folder, flips=True) == ["q4/0-1", "q6/0-1"]
    assert ids(folder, failed=True) == ["p6", "q8/0-1"]
    assert ids(folder, soft_min=0.85) == ["q5/0-1", "q9/0-1"]
    assert ids(folder, soft_min=0.5, soft_max=0.56) == ["q4/0-1", "q6/0-1"]
    assert ids(folder, q="LOCKSMITH") == ["q1/0-1", "red_team-0"]  # responses, answers too
    assert ids(folder, q="crisis line") == ["p2"]  # and the revisions
    assert ids(folder, kind="policy_eval") == ["red_team-0", "benign-0"]
    assert ids(folder, dataset="red_team") == ["gen-0", "gen-1"]


def test_word_diff_marks_words_and_keeps_spacing():
    ops = word_diff("the cat sat on the mat", "the dog sat on the mat")
    assert ops == [["=", "the "], ["-", "cat "], ["+", "dog "], ["=", "sat on the mat"]]
    before, after = "one two three four five", "one six seven three eight nine ten"
    ops = word_diff(before, after)
    assert "".join(t for op, t in ops if op != "+") == before
    assert "".join(t for op, t in ops if op != "-") == after
    # "three" alone between two longer rewrites joins them: one change, not three
    assert [op for op, _ in ops] == ["=", "-", "+"]


def test_sample_is_reproducible_and_only_labelable(folder):
    first = [it.key for it in sample(folder.items, 5, seed=3)]
    assert first == [it.key for it in sample(folder.items, 5, seed=3)]
    assert first != [it.key for it in sample(folder.items, 5, seed=4)]
    assert len(first) == 5 and all(folder.by_key[k].labelable for k in first)
    # 5 SL-CAI rows and 8 pairs; not the failed row nor the pair of two identical responses
    assert len(sample(folder.items, 100, seed=0)) == 13
    assert sample(folder.items, None, 0) == folder.items


def test_the_ai_label_is_left_out_until_revealed(folder):
    pair = folder.by_key[("prefs", "q6/0-1")]
    hidden = details(pair, reveal=False)
    assert hidden["ai"] is None and hidden["questions"] == ["pair"]
    assert hidden["response_a"].startswith("I can't help") and "prob_a" not in hidden
    assert "chosen" not in str(hidden) and "0.66" not in str(hidden)
    shown = details(pair, reveal=True)["ai"]
    assert shown["label"] == "a" and shown["position_consistent"] is False
    assert shown["principles"][1] == {"principle_id": "crime-illegal", "ab": 0.66, "ba": 0.44}
    sl = details(folder.by_key[("sl_cai", "p4")], reveal=False)
    assert [r["principle_id"] for r in sl["rounds"]] == ["dangerous-advice"]
    assert sl["questions"] == ["revision_better", "critique_real"]
    assert ["-", "like vinegar: these make toxic gases. Also avoid mixing"] in sl["diff"]


def test_pair_flags_share_the_names_of_sl_cai_flags(tmp_path):
    import json

    from rlaif.data.outputs import find_datasets
    from rlaif.review.rows import load_items

    from ..conftest import FIXTURES

    rows = [json.loads(x) for x in (FIXTURES / "compare" / "a" / "preferences.jsonl").open()]
    rows[0] |= {"flags": ["response_b_refused"], "finish_reasons": ["length", "refusal"]}
    (tmp_path / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_items(find_datasets(tmp_path))
    assert first.flags == ["response_b_refused", "refused", "truncated"] and second.flags == []
    assert Filters(flags=["refused"]).match(first) and not Filters(flags=["refused"]).match(second)
