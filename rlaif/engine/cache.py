"""A content-addressed SQLite cache of labeler results.

Every request is keyed by a hash of what determines its answer: backend, model, the rendered
messages, the sampling parameters, the seed and the sample index. Rerunning a job therefore makes
no labeler calls, and changing one principle's text changes only the keys of the requests that
used it. The value is the completion (text, finish reason, token counts) plus the seconds it took,
so timings of cached work can still be reported.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed entry survives ``kill -9`` of the
process (only a power loss can drop the last transactions), readers never block the writer, and
several processes may share one cache file. Each put is its own transaction: a crash loses at most
the request that was in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key     TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def request_key(kind: str, backend: str, model: str, payload: dict[str, Any]) -> str:
    """sha256 of a canonical JSON encoding of everything that determines the answer."""
    blob = json.dumps(
        {"kind": kind, "backend": backend, "model": model, **payload},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    """``Cache(path)`` for a file, ``Cache(None)`` for an in-memory cache (tests, no reuse)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise RlaifError(f"cannot open cache {target}: {e}") from None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, value FROM entries WHERE key IN ({marks})"
            for key, value in self._db.execute(query, chunk):
                found[key] = json.loads(value)
        return found

    def put_many(self, kind: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        rows = [(k, kind, json.dumps(v, ensure_ascii=False), now) for k, v in items]
        self._db.execute("BEGIN IMMEDIATE")  # one transaction for the whole batch
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO entries (key, kind, value, created) VALUES (?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        self._db.close()
