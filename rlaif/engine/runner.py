"""Run a row-wise step over many rows: concurrently, written in input order, resumable.

Each row is one coroutine (``process(row)``); up to ``window`` rows are in flight at once, which
is what lets the scheduler fill batches across rows and stages. Finished rows wait in a small
reorder buffer until every row before them is written, so the journal is always an in-order
prefix. ``window`` bounds both memory and how much finished work a crash can leave unwritten (that
work is in the cache anyway). The journal group-commits what it is given, and ``journal.close()``
in the ``finally`` commits the rest, whether the run ends, fails or is interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from rlaif.engine.journal import Journal

Row = dict[str, Any]


async def run_rows(
    rows: Sequence[Row],
    process: Callable[[Row], Awaitable[Row]],
    journal: Journal,
    window: int,
    on_row: Callable[[Row, bool], None] | None = None,
    keep: bool = True,
) -> list[Row]:
    """Process ``rows`` (each with an ``id``) and return the output rows in input order.

    ``on_row(row, resumed)`` is called once per output row, in order, as it is written. With
    ``keep=False`` nothing is returned and no row stays in memory once it is written: the
    journal's file has them all (a large run's rows would otherwise grow the process with N).
    """
    # rows are read one at a time, never copied: ``rows`` may be a compact table that builds
    # each row when asked (``rowtable``), and a list of N ids or rows grew a run with N
    kept = journal.open(str(r["id"]) for r in rows)
    resumed = len(kept)
    out: list[Row] = []
    total = len(rows)
    done: dict[int, Row] = {}
    running: set[asyncio.Task[Row]] = set()
    # finished tasks report here; waiting on a queue costs the same however many rows are in
    # flight (``asyncio.wait`` over the whole set would touch every task on every wake-up)
    finished: asyncio.Queue[tuple[int, asyncio.Task[Row]]] = asyncio.Queue()
    next_start, next_write = resumed, resumed  # positions in ``rows``
    try:  # from here the journal is open: whatever fails below, the ``finally`` closes it
        for line in kept if keep or on_row else ():
            row = journal.read(line)
            if keep:
                out.append(row)
            if on_row:
                on_row(row, True)
        del kept
        while next_write < total:
            while next_start < total and len(running) + len(done) < window:
                task = asyncio.create_task(process(rows[next_start]))
                running.add(task)
                task.add_done_callback(partial(_report, finished, next_start))
                next_start += 1
            index, task = await finished.get()
            while True:
                running.discard(task)
                done[index] = task.result()  # a row that raised stops the run here
                if finished.empty():
                    break
                index, task = finished.get_nowait()
            while next_write in done:
                row = done.pop(next_write)
                journal.append(row)
                if keep:
                    out.append(row)
                if on_row:
                    on_row(row, False)
                next_write += 1
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        journal.close()
    return out


def _report(
    queue: asyncio.Queue[tuple[int, asyncio.Task[Row]]], index: int, task: asyncio.Task[Row]
) -> None:
    queue.put_nowait((index, task))
