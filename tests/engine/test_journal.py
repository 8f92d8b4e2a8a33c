import asyncio
import json
import signal
import subprocess
import sys

import pytest

from rlaif.engine.journal import Journal
from rlaif.engine.runner import run_rows

IDS = ["a", "b", "c", "d"]


def line(i):
    return json.dumps({"id": i, "v": i.upper()})


def interrupted_after(target, *rows):
    """A journal that wrote ``rows`` and stopped before finishing."""
    j = Journal(target, "fp1")
    j.open(IDS)
    for row in rows:
        j.append(row)
    j.close()
    return j


def test_fresh_run_then_finish(tmp_path):
    j = Journal(tmp_path / "out.jsonl", "fp1")
    assert list(j.open(IDS)) == []
    for i in IDS:
        j.append({"id": i, "v": i.upper()})
    path, failed = j.finish()
    assert failed is None
    assert path.read_text().splitlines() == [line(i) for i in IDS]
    assert not j.partial.exists()


def test_resume_keeps_prefix_and_cuts_torn_line(tmp_path):
    target = tmp_path / "out.jsonl"
    j = interrupted_after(target, {"id": "a", "v": "A"}, {"id": "b", "v": "B"})
    with open(j.partial, "a") as f:  # a kill -9 in the middle of a write
        f.write('{"id": "c", "v": "tor')
    again = Journal(target, "fp1")
    assert list(again.open(IDS)) == [line("a"), line("b")]
    again.append({"id": "c", "v": "C"})
    again.append({"id": "d", "v": "D"})
    assert again.finish()[0].read_text().splitlines() == [line(i) for i in IDS]


def test_resume_cuts_the_partial_file_in_place_and_reads_kept_lines_lazily(tmp_path):
    """The kept prefix stays where it is, byte for byte (the file is cut after it, not
    rewritten), and the kept lines are read from the file when iterated, not held."""
    target = tmp_path / "out.jsonl"
    j = interrupted_after(target, {"id": "a", "v": "\u00e9t\u00e9"}, {"id": "b", "v": "B"})
    inode = j.partial.stat().st_ino
    kept_bytes = j.partial.read_bytes()
    with open(j.partial, "a") as f:
        f.write(json.dumps({"id": "x", "v": "not next"}) + "\n")  # not the next id: dropped
    again = Journal(target, "fp1")
    kept = again.open(IDS)
    assert len(kept) == 2 and again.resumed == 2
    assert j.partial.stat().st_ino == inode and j.partial.read_bytes() == kept_bytes
    assert [json.loads(x)["id"] for x in kept] == ["a", "b"] and kept[1] == line("b")
    again.append({"id": "c", "v": "C"})
    again.append({"id": "d", "v": "D"})
    assert [json.loads(x)["id"] for x in again.finish()[0].read_text().splitlines()] == IDS


def test_finished_target_is_the_journal_for_a_rerun(tmp_path):
    target = tmp_path / "out.jsonl"
    j = Journal(target, "fp1")
    j.open(IDS)
    for i in IDS:
        j.append({"id": i, "v": i.upper()})
    j.finish()
    assert len(Journal(target, "fp1").open(IDS)) == 4
    assert list(Journal(target, "fp2").open(IDS)) == []  # other inputs: nothing is kept


def test_a_kill_while_another_job_takes_over_never_leaves_old_rows_under_its_fingerprint(
    tmp_path, monkeypatch
):
    """A job with other inputs opens the journal of an unfinished one and is killed before the
    journal is its own: the earlier rows must not become the new job's."""
    from rlaif.engine import journal

    target = tmp_path / "out.jsonl"
    old = Journal(target, "fp1")
    old.open(IDS)
    old.append({"id": "a", "v": "old"})
    old.close()
    real = journal._copy_prefix_atomic

    def killed_at_the_partial(source, size, path):
        if path == old.partial:
            raise KeyboardInterrupt  # a kill -9 at this point of open()
        real(source, size, path)

    monkeypatch.setattr(journal, "_copy_prefix_atomic", killed_at_the_partial)
    with pytest.raises(KeyboardInterrupt):
        Journal(target, "fp2").open(IDS)
    assert json.loads(old.manifest.read_text())["fingerprint"] == "fp1"  # not yet claimed
    monkeypatch.setattr(journal, "_copy_prefix_atomic", real)
    assert list(Journal(target, "fp2").open(IDS)) == []  # the new job keeps none of the old rows
    assert json.loads(old.manifest.read_text())["fingerprint"] == "fp2"
    assert old.partial.read_text() == ""


def test_rows_that_do_not_match_the_input_are_dropped(tmp_path):
    target = tmp_path / "out.jsonl"
    j = Journal(target, "fp1")
    j.open(IDS)
    for i in ["a", "x", "c"]:
        j.append({"id": i})
    j.close()
    assert [json.loads(x)["id"] for x in Journal(target, "fp1").open(IDS)] == ["a"]


def test_runner_writes_in_input_order_when_rows_finish_out_of_order(tmp_path):
    rows = [{"id": str(i), "delay": (10 - i) / 1000} for i in range(10)]
    seen = []

    async def process(row):
        await asyncio.sleep(row["delay"])
        return {"id": row["id"]}

    j = Journal(tmp_path / "o.jsonl", "fp")
    out = asyncio.run(run_rows(rows, process, j, window=4, on_row=lambda r, res: seen.append(r)))
    assert [r["id"] for r in out] == [str(i) for i in range(10)] == [r["id"] for r in seen]
    assert [json.loads(x)["id"] for x in j.partial.read_text().splitlines()] == [
        str(i) for i in range(10)
    ]


def test_runner_skips_rows_kept_from_the_journal(tmp_path):
    calls = []

    async def process(row):
        calls.append(row["id"])
        return {"id": row["id"]}

    rows = [{"id": i} for i in IDS]
    j = Journal(tmp_path / "o.jsonl", "fp")
    j.open(IDS)
    j.append({"id": "a"})
    j.close()
    resumed = []
    out = asyncio.run(
        run_rows(
            rows,
            process,
            Journal(tmp_path / "o.jsonl", "fp"),
            2,
            lambda r, res: resumed.append(res),
        )
    )
    assert calls == ["b", "c", "d"] and [r["id"] for r in out] == IDS
    assert resumed == [True, False, False, False]


def test_failed_rows_go_to_their_own_file_and_are_retried(tmp_path):
    target = tmp_path / "out.jsonl"
    j = Journal(target, "fp1")
    j.open(IDS)
    j.append({"id": "a", "v": "A"})
    j.append({"id": "b", "failed": {"reason": "HTTP 500 from server", "attempts": 7}})
    j.append({"id": "c", "v": "C"})
    j.append({"id": "d", "v": "D"})
    dataset, failed = j.finish()
    assert [json.loads(x)["id"] for x in dataset.read_text().splitlines()] == ["a", "c", "d"]
    assert json.loads(failed.read_text())["failed"]["attempts"] == 7
    # a rerun keeps what comes before the failed row and redoes the rest (from the cache)
    again = Journal(target, "fp1")
    assert list(again.open(IDS)) == [line("a")]
    for i in ["b", "c", "d"]:
        again.append({"id": i, "v": i.upper()})
    dataset, failed = again.finish()
    assert dataset.read_text().splitlines() == [line(i) for i in IDS]
    assert failed is None and not (tmp_path / "out.failed.jsonl").exists()


# ---------------------------------------------------------------- group commit


def _on_disk(j):
    return [json.loads(x)["id"] for x in j.partial.read_text().splitlines()]


def test_rows_are_committed_together_by_time_count_and_close(tmp_path):
    async def go():
        j = Journal(tmp_path / "o.jsonl", "fp", commit_seconds=0.5, commit_rows=3)
        j.open(IDS)
        j.append({"id": "a"})
        j.append({"id": "b"})
        assert _on_disk(j) == []  # buffered: not yet durable
        j.append({"id": "c"})
        assert _on_disk(j) == ["a", "b", "c"]  # commit_rows reached
        j.append({"id": "d"})
        assert _on_disk(j) == ["a", "b", "c"]
        await asyncio.sleep(0.8)  # nothing else arrives: the timer commits the window
        assert _on_disk(j) == ["a", "b", "c", "d"]
        j.close()

    asyncio.run(go())


def test_close_commits_the_open_window(tmp_path):
    async def go():
        j = Journal(tmp_path / "o.jsonl", "fp", commit_seconds=60)
        j.open(IDS)
        j.append({"id": "a"})
        j.append({"id": "b"})
        assert _on_disk(j) == []
        j.close()
        assert _on_disk(j) == ["a", "b"]

    asyncio.run(go())


def test_a_failing_run_commits_every_row_written_before_the_error(tmp_path):
    rows = [{"id": str(i)} for i in range(8)]

    async def process(row):
        if row["id"] == "5":
            await asyncio.sleep(0.05)  # rows 0-4 are written first
            raise RuntimeError("boom")
        return {"id": row["id"]}

    j = Journal(tmp_path / "o.jsonl", "fp", commit_seconds=60)
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(run_rows(rows, process, j, window=8))
    assert _on_disk(j) == ["0", "1", "2", "3", "4"]


KILLED_WRITER = """
import asyncio, os, signal, sys
from rlaif.engine.journal import Journal

async def go():
    j = Journal(sys.argv[1], "fp", commit_seconds=60)
    j.open(["a", "b", "c", "d"])
    j.append({"id": "a", "v": "A"})
    j.append({"id": "b", "v": "B"})
    j.commit()
    j.append({"id": "c", "v": "C"})  # finished, but its window is still open
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(go())
"""


def test_a_kill_keeps_exactly_the_committed_prefix_and_the_rerun_fills_the_rest(tmp_path):
    target = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], check=False)
    assert proc.returncode == -signal.SIGKILL
    again = Journal(target, "fp")
    assert list(again.open(IDS)) == [line("a"), line("b")]  # c was lost with its window
    for i in ["c", "d"]:
        again.append({"id": i, "v": i.upper()})
    dataset, _ = again.finish()
    assert dataset.read_text().splitlines() == [line(i) for i in IDS]  # no gap, no duplicate
