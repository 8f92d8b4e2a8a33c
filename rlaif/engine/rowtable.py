"""The job's input rows, held compactly and handed out as dicts one at a time.

A job reads every prompt before it starts (the journal checks the prefix it resumes from, the
progress bar shows a total, ids are checked for duplicates). Held as a list of ``{"id", "prompt"}``
dicts, each prompt cost ~350 bytes of Python objects, and a run's memory grew with N. Here the ids
and prompts are UTF-8 bytes in two ``bytearray`` buffers with their end offsets in ``array``\\s
(~20 bytes a row beyond the text itself); ``rows[i]`` builds a fresh dict when the runner needs
that row, and it is dropped once the row is written. A prompt that is a conversation (a list of
messages) is stored as its JSON and read back equal.

``PairRows`` does the same for the preference job's pairs: a pair row is computed from its
prompt row and its position, so the k*(k-1)/2 pairs per prompt take no memory at all.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, overload

from rlaif.errors import PromptDataError

Row = dict[str, Any]


class _ComputedRows(Sequence[Row]):
    """A read-only sequence whose rows are built by ``_row(i)`` when asked for."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _row(self, i: int) -> Row:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Row: ...
    @overload
    def __getitem__(self, index: slice) -> list[Row]: ...
    def __getitem__(self, index: int | slice) -> Row | list[Row]:
        if isinstance(index, slice):
            return [self._row(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("row index out of range")
        return self._row(index)

    def __iter__(self) -> Iterator[Row]:
        for i in range(len(self)):
            yield self._row(i)


class PromptTable(_ComputedRows):
    """An append-only, read-only-after sequence of ``{"id": str, "prompt": str | messages}``."""

    def __init__(self, rows: Iterable[tuple[str, Any]] = ()):
        self._ids = bytearray()
        self._prompts = bytearray()
        self._id_ends = array("q")
        self._prompt_ends = array("q")  # negative end: the prompt is JSON (a conversation)
        for rid, prompt in rows:
            self.append(rid, prompt)

    def append(
        self, rid: str, prompt: Any, source: str | Path = "prompts", line: int | None = None
    ) -> None:
        """Add a row, or nothing: text that is not valid Unicode (a lone surrogate, which a
        JSON ``\\ud83d`` escape decodes to) is a ``PromptDataError`` naming ``source`` (and
        ``line`` where the caller knows it), and the table is left as it was."""
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
        try:
            rid_bytes, prompt_bytes = str(rid).encode("utf-8"), text.encode("utf-8")
        except UnicodeEncodeError as e:
            shown = str(rid).encode("utf-8", "backslashreplace").decode("utf-8")
            raise PromptDataError(
                source, f"prompt '{shown}' is not valid Unicode text ({e.reason})", line
            ) from None
        self._ids += rid_bytes
        self._id_ends.append(len(self._ids))
        self._prompts += prompt_bytes
        self._prompt_ends.append(
            len(self._prompts) if isinstance(prompt, str) else -len(self._prompts)
        )

    def __len__(self) -> int:
        return len(self._id_ends)

    def _row(self, i: int) -> Row:
        id_start = self._id_ends[i - 1] if i else 0
        rid = self._ids[id_start : self._id_ends[i]].decode("utf-8")
        end = self._prompt_ends[i]
        start = abs(self._prompt_ends[i - 1]) if i else 0
        text = self._prompts[start : abs(end)].decode("utf-8")
        return {"id": rid, "prompt": text if end >= 0 else json.loads(text)}


class PairRows(_ComputedRows):
    """Every pair ``(i, j)``, ``i < j < k``, of each prompt's ``k`` responses, prompt by prompt:
    ``{"id": "ID/i-j", "prompt_id": ID, "prompt": ..., "pair": (i, j)}``."""

    def __init__(self, prompts: Sequence[Row], k: int):
        self._prompts = prompts
        self._pairs = list(combinations(range(k), 2))

    def __len__(self) -> int:
        return len(self._prompts) * len(self._pairs)

    def _row(self, index: int) -> Row:
        prompt, pair = divmod(index, len(self._pairs))
        return _pair_row(self._prompts[prompt], *self._pairs[pair])

    def __iter__(self) -> Iterator[Row]:
        for r in self._prompts:
            for i, j in self._pairs:
                yield _pair_row(r, i, j)


def _pair_row(r: Row, i: int, j: int) -> Row:
    return {"id": f"{r['id']}/{i}-{j}", "prompt_id": r["id"], "prompt": r["prompt"], "pair": (i, j)}
