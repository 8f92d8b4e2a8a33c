"""The compact prompt table and the computed preference pairs: the same rows as lists of dicts,
in a fraction of the memory."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from itertools import combinations

import pytest

from rlaif.engine.journal import Journal
from rlaif.engine.rowtable import PairRows, PromptTable
from rlaif.engine.runner import run_rows
from rlaif.errors import PromptDataError

ROWS = [
    {"id": "line-1", "prompt": "How do I bake bread?"},
    {"id": "é/2", "prompt": 'Ünïcödé 🍞 and "quotes"\nand a newline'},
    {
        "id": "3",
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"},
        ],
    },
    {"id": "4", "prompt": ""},
]


def table(rows=ROWS):
    return PromptTable((r["id"], r["prompt"]) for r in rows)


def test_rows_read_back_equal_by_index_iteration_and_slice():
    t = table()
    assert len(t) == 4
    assert list(t) == ROWS
    assert [t[i] for i in range(4)] == ROWS
    assert t[-1] == ROWS[-1] and t[-4] == ROWS[0]
    assert t[1:3] == ROWS[1:3] and t[::-2] == ROWS[::-2]
    with pytest.raises(IndexError):
        t[4]
    with pytest.raises(IndexError):
        t[-5]
    assert t[0] is not t[0]  # a fresh dict each time: a caller may change its own


def test_an_empty_table():
    t = PromptTable()
    assert len(t) == 0 and list(t) == [] and t[:] == []


def test_a_prompt_that_is_not_valid_unicode_is_refused_and_leaves_the_table_as_it_was():
    t = table()
    for rid, prompt in [("r9", "ok \ud83d"), ("r\udfff", "ok"), ("r9", [{"content": "\ud83d"}])]:
        with pytest.raises(PromptDataError, match=r"prompts\.jsonl: prompt 'r.*not valid Unicode"):
            t.append(rid, prompt, "prompts.jsonl")
        assert len(t) == 4 and list(t) == ROWS
    t.append("r9", "fine")
    assert len(t) == 5 and t[4] == {"id": "r9", "prompt": "fine"}
    with pytest.raises(PromptDataError, match=r"in\.jsonl:7: "):
        t.append("x", "\ud83d", "in.jsonl", line=7)


def test_the_table_takes_a_fraction_of_a_list_of_dicts():
    n = 20_000
    pairs = [(f"line-{i}", f"What is question number {i} about?") for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        as_table = PromptTable(pairs)
        table_bytes = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        as_dicts = [{"id": rid, "prompt": p} for rid, p in ((r, q + "") for r, q in pairs)]
        dict_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert as_table[n - 1] == {"id": f"line-{n - 1}", "prompt": pairs[-1][1]}
    assert len(as_dicts) == n
    assert table_bytes / n < 80  # the text (~44 bytes) and two offsets
    assert table_bytes * 3 < dict_bytes


def reference_pairs(rows, k):
    return [
        {"id": f"{r['id']}/{i}-{j}", "prompt_id": r["id"], "prompt": r["prompt"], "pair": (i, j)}
        for r in rows
        for i, j in combinations(range(k), 2)
    ]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_pairs_are_every_pair_of_every_prompt_in_order(k):
    pairs = PairRows(table(), k)
    want = reference_pairs(ROWS, k)
    assert len(pairs) == len(want)
    assert list(pairs) == want
    assert [pairs[i] for i in range(len(want))] == want
    assert pairs[1:] == want[1:]
    with pytest.raises(IndexError):
        pairs[len(want)]


def test_runner_over_a_table_resumes_with_every_row_once_in_order(tmp_path):
    rows = table([{"id": f"r{i}", "prompt": f"p{i}"} for i in range(30)])
    target = tmp_path / "o.jsonl"
    seen = []

    async def process(row):
        seen.append(row["id"])
        await asyncio.sleep((30 - int(row["id"][1:])) / 5000)  # finish out of order
        return {"id": row["id"], "echo": row["prompt"]}

    j = Journal(target, "fp", commit_rows=1)
    j.open(r["id"] for r in rows[:12])
    for r in rows[:12]:
        j.append({"id": r["id"], "echo": r["prompt"]})
    j.close()
    resumed = []
    asyncio.run(
        run_rows(
            rows, process, Journal(target, "fp"), 4, lambda r, res: resumed.append(res), keep=False
        )
    )
    assert seen == [f"r{i}" for i in range(12, 30)]  # started in input order, none twice
    assert resumed == [True] * 12 + [False] * 18
    written = [json.loads(x) for x in j.partial.read_text().splitlines()]
    assert written == [{"id": f"r{i}", "echo": f"p{i}"} for i in range(30)]
