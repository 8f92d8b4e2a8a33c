"""One writer per output folder, and damaged state files are clear errors.

Real processes: two ``rlaif`` commands started at once on one folder, against the fake server
(real HTTP), and ``kill -9`` of a writer; the OS lock goes with the process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.cli import main

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def sl_cai_args(tmp_path, url, out, n=60):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(n)))
    return ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
            "--labeler-set", f"base_url={url}", "--labeler-set", "concurrency=8",
            "--rounds", "1", "--max-tokens", "8", "--out", str(out)]  # fmt: skip


def start(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "rlaif", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lock(folder: Path, pid: int, timeout: float = 60) -> None:
    """Until the process ``pid`` holds the folder's lock (it writes its pid there then)."""
    lock = folder / ".rlaif.lock"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never took the lock of {folder}")


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_second_generate_on_the_same_folder_exits_2_at_once_and_the_first_loses_nothing(
    tmp_path,
):
    out = tmp_path / "out"
    with FakeOpenAIServer(latency=0.1) as server:
        args = sl_cai_args(tmp_path, server.url, out)
        first = start(args, tmp_path)
        wait_for_lock(out, first.pid)
        server.latency = 5.0  # the first run now needs minutes: the second must not wait for it
        t0 = time.perf_counter()
        second = subprocess.run(
            [sys.executable, "-m", "rlaif", *args], cwd=tmp_path, env=ENV,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        first_still_writing = first.poll() is None
        server.latency = 0.0
        assert first.wait(timeout=120) == 0, first.stderr.read()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"rlaif: error: {out} is being written by another rlaif process")
    assert f"(pid {first.pid}: " in lines[0] and "generate sl-cai" in lines[0]
    # it exited while the first was still writing, after the interpreter's start-up and rlaif's
    # imports (seconds on a loaded machine), without waiting for the lock
    assert first_still_writing and seconds < 30
    got = ids(out / "sl_cai.jsonl")
    assert got == [f"line-{i}" for i in range(1, 61)]  # every row, each once


def test_a_second_rlaif_run_on_one_run_folder_exits_2(tmp_path, tiny_llama_dir):
    run_dir = tmp_path / "run"
    with FakeOpenAIServer(latency=0.1) as server:
        recipe = tmp_path / "r.yaml"
        prompts = tmp_path / "p.txt"
        prompts.write_text("\n".join(f"prompt number {i}" for i in range(44)))
        recipe.write_text(
            f"name: t\nout: {run_dir}\nbase_model: {tiny_llama_dir}\nprompts: {prompts}\n"
            f"train_prompts: 40\nlabeler: openai:fake\nlabeler_settings:\n"
            f"  base_url: {server.url}\n  concurrency: 8\nsl_cai: {{max_tokens: 8}}\n"
        )
        args = ["run", str(recipe), "--until", "sl_cai"]
        first = start(args, tmp_path)
        wait_for_lock(run_dir, first.pid)
        second = subprocess.run(
            [sys.executable, "-m", "rlaif", *args], cwd=tmp_path, env=ENV,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert first.wait(timeout=180) == 0, first.stderr.read()
    assert second.returncode == 2, second.stderr
    assert f"{run_dir} is being written by another rlaif process (pid {first.pid}" in (
        " ".join(second.stderr.split())
    )
    assert ids(run_dir / "sl_cai" / "sl_cai.jsonl") == [f"line-{i}" for i in range(1, 41)]


def test_a_killed_writer_leaves_no_lock_behind_and_the_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    with FakeOpenAIServer(latency=0.1) as server:
        args = sl_cai_args(tmp_path, server.url, out)
        first = start(args, tmp_path)
        wait_for_lock(out, first.pid)
        deadline = time.time() + 60
        partial = out / ".sl_cai.jsonl.partial"
        while time.time() < deadline and not (partial.exists() and partial.read_text().strip()):
            time.sleep(0.05)  # some rows written
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert (out / ".rlaif.lock").exists()  # the file stays; nothing holds it
        t0 = time.perf_counter()
        assert main(args) == 0
        assert time.perf_counter() - t0 < 30
    said = " ".join(capsys.readouterr().out.split())
    resumed = int(said.split(" resumed)")[0].rsplit("(", 1)[1])
    assert resumed > 0  # the rows the killed writer had written were kept
    assert ids(out / "sl_cai.jsonl") == [f"line-{i}" for i in range(1, 61)]


def test_a_damaged_cache_is_one_line_naming_the_file_and_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    with FakeOpenAIServer() as server:
        args = sl_cai_args(tmp_path, server.url, out, n=3)
        assert main(args) == 0
        cache = out / "cache.sqlite"
        for suffix in ("-wal", "-shm"):
            Path(f"{cache}{suffix}").unlink(missing_ok=True)
        damaged = b"SQLite format 3\x00" + b"\x13" * 3000  # a header, then garbage
        cache.write_bytes(damaged)
        capsys.readouterr()
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"rlaif: error: {cache}: damaged")
    assert "move it away" in err and "Traceback" not in err
    assert cache.read_bytes() == damaged  # never recreated over the user's data


def test_a_foreign_sqlite_file_as_cache_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with sqlite3.connect(out / "cache.sqlite") as db:
        db.execute("CREATE TABLE entries (something TEXT)")
    with FakeOpenAIServer() as server:
        assert main(sl_cai_args(tmp_path, server.url, out, n=2)) == 2
    assert "not an rlaif cache" in capsys.readouterr().err


def test_a_truncated_batch_ledger_is_one_line_naming_the_file(tmp_path, capsys):
    from .test_generate_batch import FakeBatchServer, sl_cai

    with FakeBatchServer() as server:
        args = sl_cai(server, "openai", tmp_path, "b", batch=True, n=2, rounds=1)
        assert main(args) == 0
        ledger = tmp_path / "b" / "batches.sqlite"
        data = ledger.read_bytes()
        ledger.write_bytes(data[: len(data) // 2 + 100])  # cut short, as a copy made mid-write
        (tmp_path / "b" / "sl_cai.jsonl").unlink()  # so the rerun asks the labeler again
        (tmp_path / "b" / "cache.sqlite").unlink()
        capsys.readouterr()
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"rlaif: error: {ledger}: damaged")


def test_a_run_manifest_with_garbage_is_one_line_naming_the_file(tmp_path, capsys):
    from rlaif.pipeline import MANIFEST

    manifest = tmp_path / "run" / "sl_cai" / MANIFEST
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nout: {tmp_path / 'run'}\nprompts: demo_prompts.txt\n")
    assert main(["run", str(recipe), "--until", "sl_cai"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlaif: error: {manifest}: damaged or not an rlaif state file")
    assert manifest.read_text() == "{not json"  # the stage folder was not wiped


def test_a_journal_that_does_not_hold_every_row_is_never_the_dataset(tmp_path):
    from rlaif.engine.journal import Journal
    from rlaif.errors import EngineError

    journal = Journal(tmp_path / "d.jsonl", "fp")
    journal.open(["a", "b", "c"])
    journal.append({"id": "a"})
    journal.append({"id": "b"})
    with pytest.raises(EngineError, match=r"holds 2 rows but the input has 3"):
        journal.finish(expected=3)
    assert not (tmp_path / "d.jsonl").exists() and (tmp_path / ".d.jsonl.partial").exists()
