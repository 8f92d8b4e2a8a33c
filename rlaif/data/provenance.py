"""Row provenance, stored once per dataset: a row carries a reference to it, not a copy.

Every row of a generated dataset says how it was made: the prompt source's hash, the
constitution's and templates' hashes, the models and their settings, the sampling parameters.
That record is about a kilobyte and the same for every row of a job; copied into each row it was
most of what the journal wrote and fsync'ed at 10^5 rows. So the job writes the full record once,
in ``NAME.provenance.json`` beside ``NAME.jsonl`` (before the first row, so a partial dataset
explains itself too), and a row carries only

    "provenance": {"sha256": "<sha256 of the record>"}

A row whose provenance is not the dataset's record carries its own record's hash and the
differences from the dataset's (top-level keys): ``base`` (the dataset record's hash),
``changed`` (the changed and added keys, as one JSON string, so that columnar readers never have
to merge the types of different rows' differences) and ``removed`` (the keys it lacks).

Users do not see the difference: rlaif's readers (``read_rows``, ``load_local_dataset`` which the
trainers and the preference mix use, ``rlaif compare``), the parquet twin and ``rlaif push`` put
the full record back in every row. Rows with a full record (datasets of older rlaif versions)
read as they are. A reference whose record file is missing (the JSONL copied without it) is left
as it is, with a warning: training reads no provenance. The hash is sha256 of the record's
canonical JSON (sorted keys), as the journal's run fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlaif.errors import StateFileError

log = logging.getLogger(__name__)

COLUMN = "provenance"
SUFFIX = ".provenance.json"
_REF_KEYS = frozenset({"sha256", "base", "changed", "removed"})

Record = dict[str, Any]


def record_sha256(record: Record) -> str:
    blob = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def record_file(dataset: str | Path) -> Path:
    """``DIR/NAME.jsonl`` -> ``DIR/NAME.provenance.json``."""
    dataset = Path(dataset)
    return dataset.with_name(dataset.stem + SUFFIX)


def is_reference(value: Any) -> bool:
    """A row's provenance as a reference (not a full record). Columnar readers fill the keys a
    row lacks with None (a file mixing both kinds of rows), so None values are ignored."""
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), str):
        return False
    return all(v is None for k, v in value.items() if k not in _REF_KEYS)


class RowProvenance:
    """The job's record and the reference a row carries instead of it."""

    def __init__(self, record: Record):
        self.record = record
        self.sha256 = record_sha256(record)
        self._ref = {"sha256": self.sha256}

    def reference(self, value: Record) -> dict[str, Any]:
        """What a row carries for ``value``: the bare reference when it is the job's record
        (the same object, as every job row holds: no comparison), else the differences."""
        if value is self.record or value == self.record:
            return self._ref
        changed = {k: v for k, v in value.items() if self.record.get(k, _MISSING) != v}
        removed = sorted(k for k in self.record if k not in value)
        ref: dict[str, Any] = {"sha256": record_sha256(value), "base": self.sha256}
        if changed:
            ref["changed"] = json.dumps(changed, sort_keys=True, ensure_ascii=False)
        if removed:
            ref["removed"] = removed
        return ref

    def compact(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row as it is written: its provenance replaced by a reference."""
        value = row.get(COLUMN)
        if not isinstance(value, dict) or is_reference(value):
            return row
        return {**row, COLUMN: self.reference(value)}

    def write(self, dataset: str | Path) -> Path:
        """Add the record to ``NAME.provenance.json`` (atomically). Records already there stay:
        a finished dataset of an earlier job keeps its record until this job replaces it."""
        path = record_file(dataset)
        records = _read_records(path) if path.exists() else {}
        if records.get(self.sha256) != self.record:
            records[self.sha256] = self.record
            _write_records(path, records)
        return path

    def prune(self, dataset: str | Path) -> None:
        """Keep only this job's record (the job finished and replaced the dataset)."""
        path = record_file(dataset)
        if path.exists() and set(_read_records(path)) != {self.sha256}:
            _write_records(path, {self.sha256: self.record})


_MISSING = object()


def _write_records(path: Path, records: dict[str, Record]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"records": records}, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_records(path: Path) -> dict[str, Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StateFileError(path, f"not a provenance record file: {e}") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, dict):
        raise StateFileError(path, "not a provenance record file (no 'records')")
    return records


def records_near(path: str | Path) -> dict[str, Record]:
    """Every provenance record in the folder of ``path`` (or in ``path``, a folder), by hash:
    a side file (``NAME.unlabeled.jsonl``) finds its dataset's record by the hash alone."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    records: dict[str, Record] = {}
    for f in sorted(folder.glob("*" + SUFFIX)):
        records.update(_read_records(f))
    return records


def expand(value: Any, records: dict[str, Record]) -> Any:
    """The full record a row's provenance stands for; the value itself when it is a full record
    already, or a reference to no known record."""
    if not is_reference(value):
        return value
    base_sha = value.get("base") or value["sha256"]
    base = records.get(base_sha)
    if base is None:
        return value
    if value.get("base") is None:
        return base
    full = {k: v for k, v in base.items() if k not in set(value.get("removed") or ())}
    if value.get("changed"):
        full.update(json.loads(value["changed"]))
    return full


class Expander:
    """Expands rows' provenance with the records near one file; warns once for a reference it
    cannot resolve."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records = records_near(path)
        self._warned = False

    def value(self, value: Any) -> Any:
        full = expand(value, self.records)
        if full is value and is_reference(value) and not self._warned:
            self._warned = True
            log.warning(
                "%s: rows refer to provenance record %s, which no %s file beside it holds "
                "(copied without it?): their provenance stays a reference",
                self.path, value["sha256"][:12], SUFFIX,
            )  # fmt: skip
        return full

    def row(self, row: Any) -> Any:
        if isinstance(row, dict) and is_reference(row.get(COLUMN)):
            return {**row, COLUMN: self.value(row[COLUMN])}
        return row


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a dataset JSONL file, each with its full provenance."""
    return list(iter_rows(path))


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    expander = Expander(path)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield expander.row(json.loads(line))


def expand_rows(rows: Iterable[Any], path: str | Path) -> list[Any]:
    """Rows read from ``path`` some other way, with their full provenance."""
    expander = Expander(path)
    return [expander.row(r) for r in rows]


def has_references(path: str | Path) -> bool:
    """Whether a JSONL file holds any row whose provenance is a reference."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"provenance": {"sha256"' in line and is_reference(json.loads(line).get(COLUMN)):
                return True
    return False


def write_expanded(source: str | Path, target: str | Path) -> Path:
    """``source`` (JSONL) rewritten to ``target`` with every row's full provenance: what a
    published dataset holds."""
    expander = Expander(source)
    with open(source, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as out:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            full = expander.row(row)
            out.write(line if full is row else json.dumps(full, ensure_ascii=False) + "\n")
    return Path(target)


def expand_dataset(ds: Any, path: str | Path) -> Any:
    """A ``datasets.Dataset`` read from ``path`` with its ``provenance`` column expanded."""
    if COLUMN not in (ds.column_names or []) or len(ds) == 0:
        return ds
    values = ds[COLUMN]
    if not any(is_reference(v) for v in values):
        return ds
    expander = Expander(path)
    full = [expander.value(v) for v in values]
    if any(is_reference(v) for v in full):
        return ds  # records missing (warned): the column stays as written
    return ds.remove_columns(COLUMN).add_column(COLUMN, full)
