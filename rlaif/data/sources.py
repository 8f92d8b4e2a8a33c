"""Readers for prompt data (``--prompts SRC``): text, JSONL, CSV, hh-rlhf and saved datasets.

Every reader returns ``PromptRow(id, prompt)`` in file order. Ids are stable: the record's own id
field when it has one, else its 1-based position (``line-N`` for text, ``row-N`` otherwise), so
principle sampling, the cache and resume all key on something that does not change between runs.
Duplicate ids are an error: resume could not tell the rows apart.

Formats (``auto`` picks by the path, then by the first JSON record):
- ``text``: a prompt a line; blank lines and ``#`` comments are skipped.
- ``jsonl``: one JSON object a line; the prompt is ``--prompt-field`` (default ``prompt``).
- ``csv``: a header row; the prompt column is ``--prompt-field``.
- ``hh-rlhf``: ``{"chosen", "rejected"}`` transcripts of ``\\n\\nHuman: ...\\n\\nAssistant: ...``
  turns. ``first``: the first Human turn (a red-team prompt); ``context``: the whole conversation
  before the final Assistant turn, as a transcript ending in the last Human turn.
- ``dataset``: a ``datasets`` dataset saved with ``save_to_disk`` (a folder).
Any file may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlaif.errors import PromptDataError
from rlaif.resources import locate

PromptFormat = Literal["auto", "text", "jsonl", "csv", "hh-rlhf", "dataset"]
HHContext = Literal["first", "context"]


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str


def read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptDataError(path, "prompt file not found") from None
    except IsADirectoryError:
        raise PromptDataError(path, "is a folder; use --prompt-format dataset") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise PromptDataError(path, f"not a valid gzip file ({e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptDataError(path, f"not UTF-8 text ({e.reason})") from None


def source_sha256(path: str | Path) -> str:
    """Content hash of a prompt source (a file, or every file of a saved dataset)."""
    path = locate(path, "prompts")
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _detect(path: Path, text: str | None) -> PromptFormat:
    if path.is_dir():
        return "dataset"
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".json", ".ndjson"}:
        first = next((ln for ln in (text or "").splitlines() if ln.strip()), "")
        try:
            record = json.loads(first)
        except ValueError:
            return "jsonl"
        if isinstance(record, dict) and {"chosen", "rejected"} <= set(record):
            return "hh-rlhf"
        return "jsonl"
    return "text"


_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def hh_turns(transcript: str) -> list[tuple[str, str]]:
    """Split an hh-rlhf transcript into ``(speaker, text)`` turns."""
    parts = _TURN.split("\n\n" + transcript.lstrip("\n"))
    turns = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=False):
        turns.append((speaker, text.strip()))
    return turns


def hh_prompt(transcript: str, mode: HHContext) -> str | None:
    turns = hh_turns(transcript)
    humans = [i for i, (s, _) in enumerate(turns) if s == "Human"]
    if not humans:
        return None
    if mode == "first":
        return turns[humans[0]][1] or None
    context = turns[: humans[-1] + 1]
    if len(context) == 1:
        return context[0][1] or None
    return "\n\n".join(f"{speaker}: {text}" for speaker, text in context)


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptDataError(path, f"invalid JSON: {e.msg}", n) from None
        if not isinstance(record, dict):
            raise PromptDataError(path, "each line must be a JSON object", n)
        yield n, record


def read_prompts(
    path: str | Path,
    fmt: PromptFormat = "auto",
    prompt_field: str = "prompt",
    id_field: str = "id",
    hh_context: HHContext = "first",
) -> list[PromptRow]:
    """Read prompt data (a path, or a shipped prompt set by name such as ``demo_prompts.txt``);
    raise ``PromptDataError`` naming the file (and line) on bad input."""
    path = locate(path, "prompts")
    if fmt == "dataset" or (fmt == "auto" and path.is_dir()):
        return _finish(path, list(_read_dataset(path, prompt_field, id_field)))
    text = read_text_file(path)
    fmt = _detect(path, text) if fmt == "auto" else fmt
    rows: list[PromptRow] = []
    if fmt == "text":
        rows = [
            PromptRow(f"line-{n}", line.strip())
            for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif fmt == "jsonl":
        for n, rec in jsonl_records(path, text):
            value = rec.get(prompt_field)
            if not isinstance(value, str) or not value.strip():
                keys = ", ".join(sorted(rec)) or "none"
                raise PromptDataError(
                    path, f"no text field '{prompt_field}' (keys: {keys}); set --prompt-field", n
                )
            rows.append(PromptRow(str(rec.get(id_field, f"row-{n}")), value.strip()))
    elif fmt == "hh-rlhf":
        for n, rec in jsonl_records(path, text):
            transcript = rec.get("chosen")
            prompt = hh_prompt(transcript, hh_context) if isinstance(transcript, str) else None
            if prompt is None:
                raise PromptDataError(path, "no Human turn in 'chosen'", n)
            rows.append(PromptRow(str(rec.get(id_field, f"row-{n}")), prompt))
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if prompt_field not in (reader.fieldnames or []):
            cols = ", ".join(reader.fieldnames or []) or "none"
            raise PromptDataError(path, f"no column '{prompt_field}' (columns: {cols})", 1)
        for n, rec in enumerate(reader, start=2):
            value = (rec.get(prompt_field) or "").strip()
            if value:
                rows.append(PromptRow(str(rec.get(id_field) or f"row-{n - 1}"), value))
    else:
        raise PromptDataError(path, f"unknown prompt format '{fmt}'")
    return _finish(path, rows)


def _read_dataset(path: Path, prompt_field: str, id_field: str) -> Iterator[PromptRow]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise PromptDataError(
            path, "reading a saved dataset needs `pip install datasets`"
        ) from None
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise PromptDataError(path, f"not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds.column_names, dict):
        raise PromptDataError(path, "a DatasetDict: save a single split with save_to_disk")
    if prompt_field not in ds.column_names:
        cols = ", ".join(ds.column_names)
        raise PromptDataError(path, f"no column '{prompt_field}' (columns: {cols})")
    for n, rec in enumerate(ds, start=1):
        value = rec[prompt_field]
        if isinstance(value, str) and value.strip():
            yield PromptRow(str(rec.get(id_field, f"row-{n}")), value.strip())


def _finish(path: Path, rows: list[PromptRow]) -> list[PromptRow]:
    if not rows:
        raise PromptDataError(path, "no prompts found")
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise PromptDataError(path, f"duplicate prompt id '{r.id}'")
        seen.add(r.id)
    return rows


def read_text_prompts(path: str | Path) -> list[PromptRow]:
    """One prompt a line (the demo's format)."""
    try:
        return read_prompts(path, "text")
    except PromptDataError as e:
        if e.message == "no prompts found":
            msg = "no prompts found (one prompt a line; # starts a comment)"
            raise PromptDataError(path, msg) from None
        raise
