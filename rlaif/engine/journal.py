"""Writing datasets so that a crash never loses, duplicates or corrupts a row.

Two ways to write:

- ``write_jsonl_atomic``: the whole file at once, to a temporary file that is fsync'ed and then
  renamed over the target (rename is atomic on POSIX).
- ``Journal``: streaming. Finished rows are appended, in input order, to ``.NAME.partial`` beside
  the target; when the run completes, the partial file is renamed to ``NAME``. A run manifest
  (``.NAME.run.json``) records the fingerprint of the job's inputs. Lines are group-committed
  (``engine.commit``): buffered and written + fsync'ed together at most ``commit_seconds`` apart
  (or every ``commit_rows`` rows), and always on close, on an error and on Ctrl-C. An fsync per
  row cost more than the rest of the engine's work per row at a few hundred rows a second.

Resume: with a matching fingerprint, the rows already in the partial file (or in a finished
target) are kept byte for byte, a torn last line from a ``kill -9`` is cut off, and the run
continues at the first prompt not yet written. Rows are written in input order, so the file is
always a prefix of the final dataset. A ``kill -9`` loses at most the rows of the last commit
window, and rows that finished out of order are not in the file yet; both are rebuilt from the
cache at no cost (or asked again, for answers of the cache's own last window). With a
different fingerprint (another constitution, template or model) the journal is discarded and every
row is rebuilt through the cache, which regenerates only what really changed.

Provenance: given the job's provenance record, the journal writes it once (``NAME.provenance.json``,
at ``open``) and each row carries a reference to it instead of a copy (``data.provenance``); the
rows it hands back from an earlier run have the full record again.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from rlaif.data.provenance import RowProvenance, expand, is_reference
from rlaif.engine.commit import COMMIT_SECONDS, CommitWindow
from rlaif.errors import EngineError, StateFileError


def dumps_row(row: dict[str, Any]) -> str:
    """One JSONL line; key order as built and real UTF-8, so reruns are byte-identical."""
    return json.dumps(row, ensure_ascii=False)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_lines_atomic(path, (dumps_row(row) for row in rows))  # streamed: rows may be many
    return path


class Journal:
    def __init__(
        self,
        target: str | Path,
        fingerprint: str,
        commit_seconds: float = COMMIT_SECONDS,
        commit_rows: int = 256,
        provenance: dict[str, Any] | None = None,
    ):
        self.target = Path(target)
        self.provenance = RowProvenance(provenance) if provenance is not None else None
        self.fingerprint = fingerprint
        self.partial = self.target.with_name(f".{self.target.name}.partial")
        self.manifest = self.target.with_name(f".{self.target.name}.run.json")
        self._file: Any = None
        self._lines: list[str] = []  # appended, not yet committed
        self._window = CommitWindow(self._commit, commit_seconds, commit_rows)
        self.resumed = 0  # rows carried over from an earlier run

    def _previous_fingerprint(self) -> str | None:
        """The fingerprint of the run that wrote the journal; None when there was none. A
        damaged manifest is an error: read as "another job", it would discard the journal."""
        try:
            text = self.manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise StateFileError(self.manifest, str(e)) from None
        try:
            fingerprint = json.loads(text)["fingerprint"]
        except (ValueError, KeyError, TypeError) as e:
            raise StateFileError(self.manifest, f"no run fingerprint: {e}") from None
        if not isinstance(fingerprint, str):
            raise StateFileError(self.manifest, "the run fingerprint is not a string")
        return fingerprint

    def open(self, expected_ids: Iterable[str]) -> KeptLines:
        """Start or resume; returns the kept lines (a prefix of ``expected_ids``, in order), read
        from the file when iterated. ``expected_ids`` is read lazily, only as far as the kept
        prefix goes. Nothing is held: a run killed at 90% of 10^5 rows keeps ~10^5 lines."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        same_job = self._previous_fingerprint() == self.fingerprint
        source = None
        if same_job and self.partial.exists():
            source = self.partial
        elif same_job and self.target.exists():
            source = self.target
        count, end = 0, 0  # kept lines, and the bytes they take
        with open(source, "rb") if source else io.BytesIO() as f:
            for raw, expected in zip(f, expected_ids, strict=False):
                if not raw.endswith(b"\n"):
                    break  # a torn last line from a kill
                try:
                    record = json.loads(raw)
                except ValueError:
                    break
                failed = isinstance(record.get("failed"), dict)
                if str(record.get("id")) != str(expected) or failed:
                    break  # a failed row is retried, and everything after it is rebuilt from cache
                count, end = count + 1, end + len(raw)
        self.resumed = count
        # the partial file first, as exactly the kept prefix, and only then the fingerprint that
        # claims it: a kill in between leaves the earlier job's fingerprint over the new prefix
        # (a rerun of either job keeps nothing it should not), never the earlier job's rows
        # under the new fingerprint
        if source == self.partial:  # the same job's partial file: cut it after the kept prefix
            with open(self.partial, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        else:  # nothing, or a finished dataset's first ``end`` bytes (a failed row after them)
            _copy_prefix_atomic(source, end, self.partial)
        _write_lines_atomic(self.manifest, [json.dumps({"fingerprint": self.fingerprint})])
        if self.provenance is not None:  # before any row refers to it
            self.provenance.write(self.target)
        self._file = open(self.partial, "a", encoding="utf-8")  # noqa: SIM115
        return KeptLines(self.partial, count)

    def append(self, row: dict[str, Any]) -> str:
        """Add the next row; it is durable after the next commit (at most a window later)."""
        if self._file is None:
            raise ValueError("the journal is not open")
        if self.provenance is not None:
            row = self.provenance.compact(row)
        line = dumps_row(row)
        self._lines.append(line)
        self._window.added()
        return line

    def read(self, line: str) -> dict[str, Any]:
        """A kept line as a row, with its full provenance."""
        row = json.loads(line)
        if self.provenance is not None and is_reference(row.get("provenance")):
            known = {self.provenance.sha256: self.provenance.record}
            row["provenance"] = expand(row["provenance"], known)
        return row

    def commit(self) -> None:
        """Write and fsync every appended row now."""
        self._window.flush()

    def _commit(self) -> None:
        lines, self._lines = self._lines, []
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Commit what was appended and close the file (also on errors: nothing is dropped)."""
        if self._file is not None:
            try:
                self._window.flush()
            finally:
                self._file.close()
                self._file = None

    def finish(self, expected: int | None = None) -> tuple[Path, Path | None]:
        """The run completed: the partial file becomes the dataset, once it holds exactly
        ``expected`` rows (every input row, each once).

        Rows marked ``failed`` (a labeler call that failed for good) are moved to
        ``NAME.failed.jsonl`` instead, so the dataset holds only complete rows. They are not part
        of the journal a rerun resumes from, so the rerun retries exactly those rows (the rows
        after them come back from the cache). Rows marked ``unlabeled`` (the labeler answered,
        but no label could be read from it) go to ``NAME.unlabeled.jsonl`` with their reason; they
        are final, and a rerun keeps them.
        """
        self.close()
        # streamed line by line: at 10^5 rows the file is hundreds of megabytes, and reading it
        # whole (bytes, text and lines at once) was the run's peak memory
        sides: dict[str, list[str]] = {"failed": [], "unlabeled": []}
        tmp = self.target.with_name(f".{self.target.name}.tmp-{os.getpid()}")
        count = 0
        with open(self.partial, "rb") as src, open(tmp, "w", encoding="utf-8") as dst:
            for raw in src:
                if not raw.endswith(b"\n"):
                    break  # a torn last line
                line = raw[:-1].decode("utf-8", errors="replace")
                if not line:
                    continue
                count += 1
                side = _side(line)
                if side:
                    sides[side].append(line)
                else:
                    dst.write(line + "\n")
            dst.flush()
            os.fsync(dst.fileno())
        if expected is not None and count != expected:
            tmp.unlink()
            # never a silently short dataset: the journal is kept for a rerun to resume from
            raise EngineError(
                f"{self.partial}: the journal holds {count} rows but the input has "
                f"{expected}; the dataset was not written. Run the same command again to resume"
            )
        os.replace(tmp, self.target)
        self.partial.unlink()
        if self.provenance is not None:
            self.provenance.prune(self.target)
        for side, side_lines in sides.items():
            path = self.side_file(side)
            if side_lines:
                _write_lines_atomic(path, side_lines)
            else:
                path.unlink(missing_ok=True)
        failed = self.side_file("failed")
        return self.target, failed if sides["failed"] else None

    def side_file(self, side: str) -> Path:
        return self.target.with_name(f"{self.target.stem}.{side}.jsonl")


def _side(line: str) -> str | None:
    if '"failed"' not in line and '"unlabeled"' not in line:
        return None  # the common case, without parsing (a quote inside a value is escaped)
    try:
        record = json.loads(line)
    except ValueError:
        return None
    for side in ("failed", "unlabeled"):
        if isinstance(record.get(side), dict):
            return side
    return None


class KeptLines(Sequence[str]):
    """The lines a journal kept from an earlier run: the first ``count`` lines of ``path``,
    read from the file each time they are iterated (indexing reads up to the line)."""

    def __init__(self, path: Path, count: int):
        self.path = path
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        if not self.count:
            return
        with open(self.path, "rb") as f:
            for raw in itertools.islice(f, self.count):
                yield raw[:-1].decode("utf-8", errors="replace")

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return list(self)[index]


def _copy_prefix_atomic(source: Path | None, size: int, path: Path) -> None:
    """``path`` := the first ``size`` bytes of ``source`` (nothing, without one), streamed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        if source is not None and size:
            with open(source, "rb") as f:
                left = size
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    out.write(chunk)
                    left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
