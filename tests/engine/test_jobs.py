"""Per-row timings, kept by position: the run's own rows, rows carried over keep theirs."""

from __future__ import annotations

import json
import math

from rlaif.engine.jobs import write_timings


def test_timings_are_by_position_and_resumed_rows_keep_their_earlier_record(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"id": i} for i in ("a", "b", "c", "d")]
    write_timings(path, rows, [0.5, 0.25, math.nan, math.nan])  # a run killed after two rows
    first = [json.loads(x) for x in path.read_text().splitlines()]
    assert first == [
        {"id": "a", "seconds": 0.5, "resumed": False},
        {"id": "b", "seconds": 0.25, "resumed": False},
    ]
    write_timings(path, rows, [math.nan, math.nan, 1.0, 2.0])  # the resumed run
    again = [json.loads(x) for x in path.read_text().splitlines()]
    assert again == [
        {"id": "a", "seconds": 0.5, "resumed": True},
        {"id": "b", "seconds": 0.25, "resumed": True},
        {"id": "c", "seconds": 1.0, "resumed": False},
        {"id": "d", "seconds": 2.0, "resumed": False},
    ]
