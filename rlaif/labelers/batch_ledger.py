"""The batch ledger: which provider batches this run has paid for, and what each one carries.

A small SQLite file (``batches.sqlite`` in the run's output folder) that ``BatchRunner``
(``labelers/batches.py``) writes before it polls anything, so a killed run, on its rerun, collects
the batches it already submitted instead of paying for them again. It records, per batch, the job
key (a hash of provider, endpoint and item ids), the provider's batch id and its last status;
per item, the batch carrying it; creations asked for but not yet confirmed (``attempts``: such a
batch may exist although the create call failed); and the answers of items collected in a round
that another round followed. A damaged ledger is never written over: it names the batches being
paid for, so opening it fails with ``StateFileError`` instead.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import StateFileError

LEDGER_FILE = "batches.sqlite"

DEAD = frozenset({"failed", "expired", "cancelled", "cancelling", "canceling", "canceled"})


@dataclass(frozen=True)
class LedgerEntry:
    job_key: str
    provider: str
    endpoint: str
    batch_id: str
    status: str
    items: int
    submitted: float
    finished: float | None


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches (job_key TEXT PRIMARY KEY, provider TEXT NOT NULL,"
    " endpoint TEXT NOT NULL, batch_id TEXT NOT NULL, status TEXT NOT NULL,"
    " items INTEGER NOT NULL, submitted REAL NOT NULL, finished REAL)",
    "CREATE TABLE IF NOT EXISTS items (custom_id TEXT NOT NULL, job_key TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS items_by_id ON items (custom_id)",
    # creations asked for and not yet confirmed: the batch may exist although the call failed
    "CREATE TABLE IF NOT EXISTS attempts (job_key TEXT PRIMARY KEY, provider TEXT NOT NULL,"
    " endpoint TEXT NOT NULL, items INTEGER NOT NULL, started REAL NOT NULL)",
    # answers of items collected in a round that another round followed (resubmissions): kept
    # at once, so a kill during the later round loses none of what was paid for
    "CREATE TABLE IF NOT EXISTS answers (custom_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL,"
    " body TEXT NOT NULL)",
)


def _in_chunks(ids: Sequence[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """``ids`` in chunks that fit one ``IN (...)`` query, each with its placeholders."""
    for start in range(0, len(ids), size):
        chunk = list(ids[start : start + size])
        yield chunk, ",".join("?" * len(chunk))


class BatchLedger:
    """Submitted batches (by job key) and the items each carries: written and committed before
    any poll. Opened on first use, so a labeler reused after ``close`` opens it again."""

    def __init__(self, path: Path | None):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path) if self.path is not None else ":memory:")
            try:
                # a damaged ledger is never written over: it names the batches being paid for
                checked = conn.execute("PRAGMA quick_check").fetchone()[0]
                if checked != "ok":
                    raise sqlite3.DatabaseError(checked)
                with conn:
                    for statement in _SCHEMA:
                        conn.execute(statement)
            except sqlite3.DatabaseError as e:
                conn.close()
                raise StateFileError(self.path or ":memory:", f"batch ledger: {e}") from None
            self._conn = conn
        return self._conn

    def live(self, key: str) -> LedgerEntry | None:
        """The batch submitted for ``key`` that can still be collected, if any."""
        row = self._db.execute("SELECT * FROM batches WHERE job_key = ?", (key,)).fetchone()
        if row is None or row[4] in DEAD:
            return None
        return LedgerEntry(*row)

    def covering(
        self, provider: str, endpoint: str, ids: Sequence[str], exclude: set[str] = frozenset()
    ) -> dict[str, tuple[LedgerEntry, list[str]]]:
        """Live batches of this provider and endpoint that carry some of ``ids`` (each id goes to
        the latest such batch), by job key, with the ids each one answers; batches whose id is in
        ``exclude`` do not count."""
        latest: dict[str, LedgerEntry] = {}
        for chunk, marks in _in_chunks(ids):
            found = self._db.execute(
                "SELECT i.custom_id, b.* FROM items i JOIN batches b ON b.job_key = i.job_key"
                f" WHERE b.provider = ? AND b.endpoint = ? AND i.custom_id IN ({marks})",
                (provider, endpoint, *chunk),
            )
            for cid, *row in found:
                entry = LedgerEntry(*row)
                if entry.status in DEAD or entry.batch_id in exclude:
                    continue
                if cid not in latest or entry.submitted > latest[cid].submitted:
                    latest[cid] = entry
        out: dict[str, tuple[LedgerEntry, list[str]]] = {}
        for cid, entry in latest.items():
            out.setdefault(entry.job_key, (entry, []))[1].append(cid)
        return out

    def submitted(
        self,
        key: str,
        provider: str,
        endpoint: str,
        batch_id: str,
        status: str,
        ids: Sequence[str],
    ) -> None:
        with self._db:  # committed before the caller polls
            self._db.execute("DELETE FROM items WHERE job_key = ?", (key,))
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (key, provider, endpoint, batch_id, status, len(ids), time.time()),
            )
            self._db.executemany("INSERT INTO items VALUES (?, ?)", ((i, key) for i in ids))
            self._db.execute("DELETE FROM attempts WHERE job_key = ?", (key,))

    def status(self, key: str, status: str, finished: bool = False) -> None:
        with self._db:
            self._db.execute(
                "UPDATE batches SET status = ?, finished = ? WHERE job_key = ?",
                (status, time.time() if finished else None, key),
            )

    def forget(self, key: str, ids: Sequence[str]) -> None:
        """The batch ``key`` answered ``ids`` with an error: it no longer carries them, so a
        rerun submits them again instead of reading the same error."""
        if not ids:
            return
        with self._db:
            self._db.executemany(
                "DELETE FROM items WHERE job_key = ? AND custom_id = ?", ((key, i) for i in ids)
            )

    def attempt(self, key: str, provider: str, endpoint: str, items: int) -> float:
        """Record, before the create call, that a batch ``key`` is being created; its start."""
        started = time.time()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?)",
                (key, provider, endpoint, items, started),
            )
        return started

    def attempted(self, key: str) -> float | None:
        """When an unconfirmed creation of ``key`` started, if one did."""
        row = self._db.execute("SELECT started FROM attempts WHERE job_key = ?", (key,)).fetchone()
        return row[0] if row else None

    def keep_answers(self, endpoint: str, answers: dict[str, dict[str, Any]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                ((cid, endpoint, json.dumps(body)) for cid, body in answers.items()),
            )

    def answers(self, endpoint: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk, marks in _in_chunks(ids):
            rows = self._db.execute(
                "SELECT custom_id, body FROM answers"
                f" WHERE endpoint = ? AND custom_id IN ({marks})",
                (endpoint, *chunk),
            )
            found.update((cid, json.loads(body)) for cid, body in rows)
        return found

    def entries(self) -> list[LedgerEntry]:
        return [LedgerEntry(*r) for r in self._db.execute("SELECT * FROM batches ORDER BY rowid")]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
