"""Labels out: a gold file `rlaif eval labeler --gold` reads, human pairs the mix reads."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main
from rlaif.data.mix import MixEntry, read_entry
from rlaif.errors import ReviewError
from rlaif.eval.gold import GoldPair, read_gold
from rlaif.review.export import write_gold, write_prefs


def label(folder, *rows):
    for dataset, rid, answer, who in rows:
        folder.store.add(dataset, rid, "pair", answer, who, note=f"{who} on {rid}")


def test_gold_majority_per_pair_in_the_format_eval_reads(folder, tmp_path):
    label(folder, ("prefs", "q1/0-1", "a", "ann"), ("prefs", "q1/0-1", "a", "ben"),
          ("prefs", "q3/0-1", "b", "ann"), ("prefs", "q4/0-1", "a", "ann"),
          ("prefs", "q4/0-1", "b", "ben"), ("prefs", "q5/0-1", "tie", "ann"))  # fmt: skip
    done = write_gold(tmp_path / "gold.jsonl", folder.by_key, folder.store.current(),
                      folder.dataset_paths)  # fmt: skip
    assert done.rows == 2
    assert dict(done.left_out) == {"people split evenly": 1, "tie or skip only": 1}
    gold = read_gold(tmp_path / "gold.jsonl")
    assert [g.id for g in gold] == ["q1/0-1", "q3/0-1"]
    q1, q3 = gold
    assert isinstance(q1, GoldPair) and q1.chosen.startswith("If you're locked out")
    assert q1.conversation == [{"role": "user", "content": "How can I pick a lock?"}]
    assert q3.chosen.startswith("A steady deficit") and q3.rejected.startswith("Stop eating")
    # one person's labels only: the split pair is ben's alone now
    only = write_gold(tmp_path / "ben.jsonl", folder.by_key, folder.store.current(),
                      folder.dataset_paths, labeler="ben")  # fmt: skip
    assert only.rows == 2 and read_gold(tmp_path / "ben.jsonl")[1].chosen.startswith("Tell them")


def test_prefs_one_row_per_person_with_source_that_the_mix_reads(folder, tmp_path):
    label(folder, ("prefs", "q1/0-1", "a", "ann"), ("prefs", "q1/0-1", "b", "ben"),
          ("prefs", "q2/0-1", "skip", "ann"))  # fmt: skip
    folder.store.add("sl_cai", "p1", "revision_better", "b", "ann")  # not a pair: not exported
    path = tmp_path / "human.jsonl"
    done = write_prefs(path, folder.by_key, folder.store.current(), folder.dataset_paths)
    assert done.rows == 2 and dict(done.left_out) == {"skip": 1}
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["human:ann", "human:ben"]
    assert rows[0]["chosen"][0]["content"] == rows[1]["rejected"][0]["content"]
    assert rows[0]["note"] == "ann on q1/0-1"
    mixed = read_entry(MixEntry(path=str(path)), 1)
    assert len(mixed.rows) == 2 and mixed.rows[0]["preference_prob"] == 1.0
    assert mixed.rows[0]["prompt"] == [{"role": "user", "content": "How can I pick a lock?"}]
    assert mixed.rows[0]["chosen"][0]["content"].startswith("If you're locked out")


def test_export_never_overwrites_a_dataset_and_needs_labels(folder, out_dir, tmp_path, capsys):
    label(folder, ("prefs", "q1/0-1", "a", "ann"))
    target = out_dir / "prefs" / "preferences.jsonl"
    before = target.read_bytes()
    with pytest.raises(ReviewError, match="that is a dataset file"):
        write_gold(target, folder.by_key, folder.store.current(), folder.dataset_paths)
    assert target.read_bytes() == before
    with pytest.raises(ReviewError, match="no pair labelled A or B by ben"):
        write_prefs(tmp_path / "x.jsonl", folder.by_key, folder.store.current(),
                    folder.dataset_paths, labeler="ben")  # fmt: skip


def test_export_command(folder, out_dir, tmp_path, capsys):
    label(folder, ("prefs", "q1/0-1", "a", "ann"), ("prefs", "q6/0-1", "b", "ann"))
    gold, prefs = tmp_path / "gold.jsonl", tmp_path / "human.jsonl"
    args = ["review", "export", str(out_dir), "--gold", str(gold), "--prefs", str(prefs)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote 2 gold rows to {gold}" in out and f"wrote 2 prefs rows to {prefs}" in out
    assert len(read_gold(gold)) == 2


def test_export_without_labels_or_datasets_exits_2(tmp_path, out_dir, capsys):
    assert main(["review", "export", str(out_dir), "--gold", str(tmp_path / "g.jsonl")]) == 2
    assert "no labels yet" in capsys.readouterr().err
    assert not (out_dir / "review.sqlite").exists()
    (tmp_path / "empty").mkdir()
    assert main(["review", "export", str(tmp_path / "empty"), "--gold", "g.jsonl"]) == 2
    assert "no rlaif dataset here" in capsys.readouterr().err
