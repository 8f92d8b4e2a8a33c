"""Writing datasets safely.

A dataset file is either the old version or the complete new one, never half of each: rows are
written to a temporary file beside the target, flushed and fsync'ed, then renamed over it
(rename is atomic on POSIX). Streaming writes and resume build on this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def dumps_row(row: dict[str, Any]) -> str:
    """One JSONL line; stable key order and real UTF-8 so reruns are byte-identical."""
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
