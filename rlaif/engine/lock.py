"""One writer per output folder: an OS file lock held for as long as a job writes the folder.

Two jobs writing one folder (a second terminal, a re-launched cluster job, a retry script) would
interleave their journals and renames: rows lost with nobody told, or a crash on a file the other
one renamed away. So every job that writes an output folder takes an exclusive ``flock`` on
``OUT/.rlaif.lock`` first, and a second writer stops at once with one line naming the folder and
the process that holds it (its pid and command, which the holder writes into the lock file).

``flock`` is the operating system's: the lock goes with the process however it ends, ``kill -9``
included, so a stale lock never blocks the next run; the file may stay, but nothing holds it. A
folder the lock had to create is removed again when the job wrote nothing else into it (a bad
input stops a job before its first write).
Readers (``rlaif push``, ``rlaif report``, a review page reading datasets) never take it. Within
one process the lock is re-entrant: a pipeline that holds its run folder may run a job that asks
for the same folder again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlaif.errors import FolderBusyError

LOCK_FILE = ".rlaif.lock"

_held: dict[Path, tuple[Any, int]] = {}  # folder -> (open lock file, how many holders here)


def _command() -> str:
    """This process's command line as the other process's message shows it: shortened, with
    anything key-like and the credentials in URLs left out."""
    from rlaif.labelers.reliability import redact

    if not sys.argv:
        return ""
    name = Path(sys.argv[0]).name
    name = "rlaif" if name in ("__main__.py", "-c", "") else name
    said = " ".join([name, *sys.argv[1:]])
    return redact(said)[:300]


def _holder(f: Any) -> str:
    """Who holds the lock, as the holder wrote it: ``pid 123: rlaif generate ...``."""
    try:
        f.seek(0)
        said = json.loads(f.read() or "{}")
    except ValueError:
        return "another rlaif process"
    pid, command = said.get("pid"), said.get("command")
    if not pid:
        return "another rlaif process"
    return f"another rlaif process (pid {pid}: {command})" if command else f"pid {pid}"


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the write lock of ``folder`` (created if need be) for the ``with`` block; raise
    ``FolderBusyError`` at once when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: go on unguarded
        yield
        return
    path = Path(folder).resolve()
    held = _held.get(path)
    if held is not None:
        _held[path] = (held[0], held[1] + 1)
        try:
            yield
        finally:
            f, n = _held[path]
            _held[path] = (f, n - 1)
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held until released
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        who = _holder(f)
        f.close()
        raise FolderBusyError(
            f"{path} is being written by {who}; wait for it to finish or stop it (a rerun then "
            "resumes), or write elsewhere (--out)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "command": _command()}))
    f.flush()
    _held[path] = (f, 1)
    try:
        yield
    finally:
        _held.pop(path)
        if created and [p.name for p in path.iterdir()] == [LOCK_FILE]:
            # the job stopped before writing anything (bad input): leave no folder behind
            (path / LOCK_FILE).unlink()
            path.rmdir()
        f.close()  # closing the file releases the lock
