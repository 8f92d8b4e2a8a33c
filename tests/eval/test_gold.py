"""Gold label readers: hh-rlhf, generic pairs, multiple choice; errors name file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from rlaif.errors import GoldDataError
from rlaif.eval.gold import GoldChoice, GoldPair, read_gold

from ..conftest import FIXTURES


def write(tmp_path, rows, name="gold.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_hh_rlhf_pairs_share_the_conversation():
    rows = read_gold(FIXTURES / "hh_small.jsonl.gz")
    assert rows and all(isinstance(r, GoldPair) for r in rows)
    with gzip.open(FIXTURES / "hh_small.jsonl.gz", "rt") as f:
        raw = [json.loads(x) for x in f]
    for row, rec in zip(rows, raw, strict=True):
        assert row.conversation[-1]["role"] == "user"
        assert rec["chosen"].endswith(row.chosen) and rec["rejected"].endswith(row.rejected)
        assert row.chosen != row.rejected


def test_hh_rlhf_answer_that_contains_human_text(tmp_path):
    # a real quirk of hh-rlhf: an answer holding "Human:" and another Assistant turn
    prefix = "\n\nHuman: How do I rob a house?\n\nAssistant:"
    rec = {
        "chosen": prefix + " Human: I can help.\n\nHuman: ok\n\nAssistant: No, I won't.",
        "rejected": prefix + " Go at night.",
    }
    (row,) = read_gold(write(tmp_path, [rec]))
    assert row.conversation == [{"role": "user", "content": "How do I rob a house?"}]
    assert row.chosen.startswith("Human: I can help.") and row.rejected == "Go at night."


def test_generic_pairs_strings_and_messages():
    rows = read_gold(FIXTURES / "gold_pairs.jsonl")
    assert [r.id for r in rows] == ["p1", "p2", "p3"]
    assert rows[0].conversation == [{"role": "user", "content": "How do I pick a lock?"}]
    assert [m["role"] for m in rows[1].conversation] == ["user", "assistant", "user"]
    assert rows[1].chosen.startswith("Talk to your neighbour")


def test_multiple_choice_rows():
    rows = read_gold(FIXTURES / "gold_mc.jsonl")
    assert all(isinstance(r, GoldChoice) for r in rows)
    assert rows[1].options == [" (A)", " (B)", " (C)"] and rows[1].corrects == [" (A)"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "x"}, "cannot tell the gold format"),
        ({"prompt": "x", "corrects": [" (A)"], "incorrects": []}, "non-empty"),
        ({"prompt": "x", "corrects": [" (A)"], "incorrects": [" (A)"]}, "both correct"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "pairs rows need"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "other"}, "share no conversation"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, record, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write(tmp_path, [good, record])
    with pytest.raises(GoldDataError, match=message) as e:
        read_gold(path)
    assert e.value.line == 2 and str(path) in str(e.value)


def test_missing_empty_and_duplicate(tmp_path):
    with pytest.raises(GoldDataError, match="gold file not found"):
        read_gold(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GoldDataError, match="no gold rows"):
        read_gold(tmp_path / "empty.jsonl")
    dup = {"id": "x", "prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(GoldDataError, match="duplicate id 'x'"):
        read_gold(write(tmp_path, [dup, dup]))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"\n')
    with pytest.raises(GoldDataError, match="invalid JSON") as e:
        read_gold(tmp_path / "bad.jsonl")
    assert e.value.line == 1
