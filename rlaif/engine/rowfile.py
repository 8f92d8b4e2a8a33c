"""The rows of a finished JSONL file, read from disk when they are used, not held in memory.

A run of 10^5 prompts writes hundreds of megabytes of rows. Kept as Python objects until the
card was written, they made a job's memory grow with its size (about 12 KB a row, over a
gigabyte at 10^5 prompts). The journal already has every row on disk, in order, so a job's
result points at the files instead: ``JsonlRows`` notes where each line starts (8 bytes a row)
and decodes a row only when it is read.

It is a read-only ``Sequence``: ``len``, truthiness, indexing, slicing and iteration work as on
the list it replaces; every iteration reads the file again (the card makes a few passes, each a
fraction of a second per 10^4 rows). The rows are those of the file as it is when they are read,
so a later run that rewrites the file changes them. Rows come with their full provenance
(``data/provenance.py``), as rlaif's other readers give them.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from rlaif.data.provenance import Expander


class JsonlRows(Sequence[dict[str, Any]]):
    """The non-empty lines of ``path`` as decoded rows; no rows when it is None or missing."""

    def __init__(self, path: Path | None):
        self.path = path
        self._starts = array("q")
        self._expander: Expander | None = None
        if path is None or not path.exists():
            return
        offset = 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    self._starts.append(offset)
                offset += len(line)

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = self._starts[index]  # IndexError past the end, negative indices from it
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            return self._row(f.readline())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._starts:
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    yield self._row(line)

    def _row(self, line: bytes) -> dict[str, Any]:
        if self._expander is None:
            assert self.path is not None
            self._expander = Expander(self.path)
        return self._expander.row(json.loads(line))

    def __repr__(self) -> str:
        return f"JsonlRows({len(self)} rows of {self.path})"
