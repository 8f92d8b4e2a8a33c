"""The label file: append-only records, the latest per person, concurrent writers all kept."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from rlaif.errors import ReviewError
from rlaif.review.storage import LabelStore


def test_latest_label_per_person_wins_and_history_keeps_all(tmp_path):
    store = LabelStore(tmp_path / "review.sqlite")
    store.add("prefs", "q1/0-1", "pair", "a", "ann")
    store.add("prefs", "q1/0-1", "pair", "b", "ann", note="changed my mind")
    store.add("prefs", "q1/0-1", "pair", "a", "ben")
    current = {(x.labeler, x.answer, x.note) for x in store.current()}
    assert current == {("ann", "b", "changed my mind"), ("ben", "a", "")}
    assert [x.answer for x in store.history()] == ["a", "b", "a"]
    assert [x.labeler for x in store.current("ben")] == ["ben"]
    assert store.labelers() == ["ann", "ben"]
    mode = sqlite3.connect(tmp_path / "review.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


def test_two_writers_at_once_are_both_kept(tmp_path):
    path = tmp_path / "review.sqlite"
    LabelStore(path)

    def write(who):
        store = LabelStore(path)  # each tab's request: its own connection
        for i in range(40):
            store.add("prefs", f"q{i}", "pair", "a", who)

    threads = [threading.Thread(target=write, args=(w,)) for w in ("tab-1", "tab-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = LabelStore(path).current()
    assert len(labels) == 80 and {x.labeler for x in labels} == {"tab-1", "tab-2"}


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "review.sqlite"
    path.write_text("not a database, just text " * 100)
    with pytest.raises(ReviewError, match="not an rlaif review label file"):
        LabelStore(path)
