import asyncio
import json

import pytest

from rlaif.engine.journal import Journal
from rlaif.engine.rowfile import JsonlRows
from rlaif.engine.runner import run_rows


def test_rows_are_read_from_the_file_as_a_list_would_give_them(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": f"r{i}", "text": "é" * i} for i in range(5)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n")
    got = JsonlRows(path)
    assert len(got) == 5 and bool(got)
    assert list(got) == rows and list(got) == rows  # each pass reads the file again
    assert got[0] == rows[0] and got[-1] == rows[-1] and got[3] == rows[3]
    assert got[:2] == rows[:2] and got[1::2] == rows[1::2]
    with pytest.raises(IndexError):
        got[5]


def test_no_file_is_no_rows(tmp_path):
    for missing in (None, tmp_path / "absent.jsonl"):
        got = JsonlRows(missing)
        assert len(got) == 0 and not got and list(got) == [] and got[:3] == []


def test_run_rows_without_keep_returns_nothing_and_the_journal_has_every_row(tmp_path):
    rows = [{"id": str(i)} for i in range(50)]
    seen = []

    async def process(row):
        await asyncio.sleep(0.001 * (int(row["id"]) % 3))  # finish out of order
        return {"id": row["id"], "n": int(row["id"]) * 2}

    journal = Journal(tmp_path / "out.jsonl", "fp")
    out = asyncio.run(
        run_rows(rows, process, journal, window=8, on_row=lambda r, _: seen.append(r), keep=False)
    )
    assert out == [] and [r["id"] for r in seen] == [r["id"] for r in rows]
    dataset, _ = journal.finish(len(rows))
    assert list(JsonlRows(dataset)) == [{"id": str(i), "n": 2 * i} for i in range(50)]
