"""The row runner's guarantees that are not about order or resuming (those are with the journal's
tests): the journal is closed however the run ends."""

import asyncio

import pytest

from rlaif.engine.journal import Journal
from rlaif.engine.runner import run_rows

ROWS = [{"id": i} for i in "abcd"]


async def _echo(row):
    return {**row, "done": True}


def test_a_callback_that_fails_on_a_resumed_row_still_closes_the_journal(tmp_path):
    target = tmp_path / "out.jsonl"
    first = Journal(target, "fp")
    first.open(r["id"] for r in ROWS)
    first.append({"id": "a", "done": True})
    first.close()

    def on_row(row, resumed):
        raise RuntimeError(f"cannot show {row['id']}")

    journal = Journal(target, "fp")
    with pytest.raises(RuntimeError, match="cannot show a"):
        asyncio.run(run_rows(ROWS, _echo, journal, window=2, on_row=on_row))
    assert journal._file is None  # closed: its file handle is not left open
    # and the journal is intact for the rerun
    assert asyncio.run(run_rows(ROWS, _echo, Journal(target, "fp"), window=2)) == [
        {"id": i, "done": True} for i in "abcd"
    ]
