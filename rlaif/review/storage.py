"""The human labels of ``rlaif review``: one SQLite file in the output folder (``review.sqlite``).

The datasets themselves are never written: they are the AI's output, hashed into cards and
provenance, and a person's opinion of a row is a separate fact about it. So labels live in their
own file beside the datasets, keyed by (dataset, row id), which survives a rerun of the job.

- **Append-only.** Each answer is a new record with who and when; a person who changes their mind
  adds another, and the latest record of (row, question, person) is their label. Nothing is lost,
  and two people (or two tabs of one person) never overwrite each other.
- **Concurrent writers.** WAL mode and a busy timeout: two browser tabs, or two people on one
  server, each commit their own record; a write waits for the other instead of failing. Every
  call opens its own connection, so the server's worker threads share nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlaif.errors import ReviewError

FILE_NAME = "review.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    row_id TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    labeler TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_row ON labels (dataset, row_id, question, labeler);
"""


@dataclass(frozen=True)
class Label:
    dataset: str
    row_id: str
    question: str
    answer: str
    labeler: str
    note: str
    created_at: str
    seq: int = 0


class LabelStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with self._connect() as db:
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ReviewError(f"{self.path}: not an rlaif review label file ({e})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def add(
        self, dataset: str, row_id: str, question: str, answer: str, labeler: str, note: str = ""
    ) -> Label:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO labels (dataset, row_id, question, answer, labeler, note, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (dataset, row_id, question, answer, labeler, note, created),
            )
            seq = int(cur.lastrowid or 0)
        return Label(dataset, row_id, question, answer, labeler, note, created, seq)

    def history(self) -> list[Label]:
        """Every record, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT dataset, row_id, question, answer, labeler, note, created_at, seq "
                "FROM labels ORDER BY seq"
            ).fetchall()
        return [Label(*r) for r in rows]

    def current(self, labeler: str | None = None) -> list[Label]:
        """The latest record of each (dataset, row, question, person), oldest first; only
        ``labeler``'s when given."""
        latest: dict[tuple[str, str, str, str], Label] = {}
        for lab in self.history():
            if labeler is None or lab.labeler == labeler:
                latest[(lab.dataset, lab.row_id, lab.question, lab.labeler)] = lab
        return sorted(latest.values(), key=lambda x: x.seq)

    def labelers(self) -> list[str]:
        return sorted({lab.labeler for lab in self.history()})
