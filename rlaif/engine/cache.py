"""A content-addressed SQLite cache of labeler results.

Every request is keyed by a hash of what determines its answer: backend, model, the rendered
messages, the sampling parameters, the seed and the sample index. Rerunning a job therefore makes
no labeler calls, and changing one principle's text changes only the keys of the requests that
used it. The value is the completion (text, finish reason, token counts) plus the seconds it took,
so timings of cached work can still be reported.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed entry survives ``kill -9`` of the
process (only a power loss can drop the last transactions), readers never block the writer, and
several processes may share one cache file. Puts are group-committed (``engine.commit``): held in
memory, where ``get`` already sees them, and written in one transaction at most
``commit_seconds`` apart (or every ``commit_items`` entries), and on ``commit()`` and ``close()``.
A transaction per answer cost more CPU than the rest of the engine's work per request; a crash
now loses at most the answers of the last window, which a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif.engine.commit import COMMIT_ITEMS, COMMIT_SECONDS, CommitWindow
from rlaif.errors import CacheError, StateFileError

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

    def __init__(
        self,
        path: str | Path | None,
        commit_seconds: float = COMMIT_SECONDS,
        commit_items: int = COMMIT_ITEMS,
    ):
        self.path = Path(path) if path is not None else None
        self._pending: dict[str, tuple[str, str, float]] = {}  # key -> (kind, value, created)
        self._window = CommitWindow(self._commit_or_fail, commit_seconds, commit_items)
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=30000")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(entries)")]
        except sqlite3.OperationalError as e:  # locked past the timeout, a read-only disk
            raise CacheError(f"cannot open cache {target}: {e}") from None
        except sqlite3.DatabaseError as e:  # not SQLite at all, or a damaged file
            raise StateFileError(target, f"cache: {e}") from None
        if columns != ["key", "kind", "value", "created"]:
            raise StateFileError(target, "an SQLite file, but not an rlaif cache")
        if self.path is not None and mode.lower() != "wal":
            # without WAL (a network filesystem), processes sharing the file could corrupt it
            raise CacheError(
                f"cache {target}: SQLite cannot use WAL mode here (journal mode {mode}): several "
                "runs sharing it would be unsafe; put the cache on a local disk (--cache PATH)"
            )

    def _failed(self, doing: str, e: sqlite3.Error) -> CacheError | StateFileError:
        where = self.path if self.path is not None else "(in memory)"
        if not isinstance(e, sqlite3.OperationalError):  # "database disk image is malformed"
            return StateFileError(where, f"cache: {e}")
        return CacheError(
            f"cache {where}: cannot {doing}: {e}; rows written so far are kept (free the disk "
            "or stop the other process holding the file, then run the same command again)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        pending = self._pending.get(key)
        if pending is not None:
            return json.loads(pending[1])
        try:
            row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise self._failed("read", e) from None
        return json.loads(row[0]) if row else None

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        if len(keys) == 1:  # the common case (one sample per request): no IN (...) to build
            hit = self.get(keys[0])
            return {} if hit is None else {keys[0]: hit}
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, value FROM entries WHERE key IN ({marks})"
            try:
                for key, value in self._db.execute(query, chunk):
                    found[key] = json.loads(value)
            except sqlite3.Error as e:
                raise self._failed("read", e) from None
        for key in keys:
            pending = self._pending.get(key)
            if pending is not None:
                found[key] = json.loads(pending[1])
        return found

    def put_many(self, kind: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store entries; durable at the next commit (at most ``commit_seconds`` later)."""
        now = time.time()
        for k, v in items:
            self._pending[k] = (kind, json.dumps(v, ensure_ascii=False), now)
        self._window.added(len(items))

    def commit(self) -> None:
        """Write every pending entry now, in one transaction."""
        self._window.flush()

    def _commit_or_fail(self) -> None:
        try:
            self._commit()
        except sqlite3.Error as e:
            raise self._failed("write", e) from None

    def _commit(self) -> None:
        rows = [(k, kind, value, created) for k, (kind, value, created) in self._pending.items()]
        self._db.execute("BEGIN IMMEDIATE")  # one transaction for the whole window
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO entries (key, kind, value, created) VALUES (?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._pending.clear()

    def __len__(self) -> int:
        self.commit()
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        """Commit what is pending, then close (safe to call twice)."""
        if self._db is None:
            return
        try:
            self._window.flush()
        finally:
            self._db.close()
            self._db = None  # type: ignore[assignment]
