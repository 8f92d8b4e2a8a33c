"""Readers for prompt data (``--prompts SRC``): text, JSONL, CSV, parquet, hh-rlhf, datasets.

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
- ``parquet``: a parquet file, read through ``datasets``.
- ``dataset``: a folder: a ``datasets`` dataset saved with ``save_to_disk``, or data files laid
  out like a Hub dataset repo (``--data-dir``, ``--split``, ``--subset`` as in ``load_dataset``).
- ``hub``: a Hugging Face Hub dataset id (``ORG/NAME[@REVISION]`` or ``hf://datasets/...``), read
  from the user's Hub cache (``datasets_io``).
Text files may be gzip-compressed (``.gz``).

**Conversations stay conversations.** A prompt is either a string (one turn from the person) or a
list of chat messages ``{"role", "content"}`` ending with the person's turn (a multi-turn
prompt). A multi-turn prompt comes from a ``prompt`` that is a list of messages (TRL's
conversational format), a ``messages`` list (TRL's full-conversation format, used when the record
has no ``prompt`` field: its trailing assistant turns, the answer being trained on, are left out,
as hh-rlhf's ``context`` mode leaves out the final Assistant turn), or an hh-rlhf transcript read
with ``hh_context: context``. It is kept as separate messages all the way through answer,
critique, revision and feedback, so a model sees the real earlier turns instead of a transcript
pasted into one message. A conversation of a single user message is the plain string, so a
single-turn prompt is exactly what it always was (the same requests, the same cache keys).
Consumers that need one text (the PPO rollouts, the policy evaluation) use ``PromptRow.text``,
the ``Human:``/``Assistant:`` transcript. Message content may be a string or OpenAI/TRL content
parts (their text parts are read). A record with no usable prompt (empty, a conversation ending
with the assistant, a tool turn, an image part) is an error naming the record, in every format: a
prompt is never dropped unsaid.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlaif.data.datasets_io import (
    LoadOptions,
    dataset_commit,
    hub_id,
    is_saved_dataset,
    load_records,
    load_saved,
    resolve_dataset,
    take,
)
from rlaif.errors import PromptDataError
from rlaif.resources import locate
from rlaif.templates import as_messages

PromptFormat = Literal["auto", "text", "jsonl", "csv", "parquet", "hh-rlhf", "dataset", "hub"]
HHContext = Literal["first", "context"]


Prompt = str | list[dict[str, str]]  # one person's turn, or a conversation ending with one


@dataclass(frozen=True, slots=True)  # 56 bytes, not 96: a job reads every prompt at once
class PromptRow:
    id: str
    prompt: Prompt

    @property
    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a string is one user message)."""
        return as_messages(self.prompt)  # type: ignore[return-value]

    @property
    def text(self) -> str:
        """The prompt as one text: the string itself, or the conversation's transcript."""
        return prompt_transcript(self.prompt)


def prompt_transcript(prompt: Prompt) -> str:
    """A prompt as one text: a string as it is; a conversation as ``Human: ...`` /
    ``Assistant: ...`` turns (hh-rlhf's transcript), as rlaif flattened conversations before
    they were kept as messages."""
    if isinstance(prompt, str):
        return prompt
    turns = [(_SPEAKERS.get(m["role"], m["role"]), m["content"]) for m in prompt]
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{speaker}: {text}" for speaker, text in turns)


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
    """Content hash of a prompt source: a file, every file of a folder, a Hub dataset's commit."""
    hub = hub_id(path)
    if hub is not None:
        repo_id, revision = hub
        commit = dataset_commit(repo_id, revision)
        return hashlib.sha256(f"{repo_id}@{commit}".encode()).hexdigest()
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
    if suffix == ".parquet":
        return "parquet"
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


_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_prompt(transcript: str, mode: HHContext) -> Prompt | None:
    """The prompt of an hh-rlhf transcript: its first Human turn (``first``), or every turn up
    to the last Human one as chat messages (``context``; a string when that is one turn)."""
    turns = hh_turns(transcript)
    humans = [i for i, (s, _) in enumerate(turns) if s == "Human"]
    if not humans:
        return None
    if mode == "first":
        return turns[humans[0]][1] or None
    context = turns[: humans[-1] + 1]
    if len(context) == 1:
        return context[0][1] or None
    return [{"role": _ROLES[speaker], "content": text} for speaker, text in context]


class Unusable(ValueError):
    """A record that holds no usable prompt; the message says why."""


def message_text(content: Any) -> str:
    """A message's text: a string, or OpenAI/TRL content parts (``[{"type": "text", "text":
    ...}]``), whose text parts are joined; another kind of part (an image) is unusable."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise Unusable(f"a content part of type {kind!r}: only text parts can be read")
            texts.append(part["text"])
        return "\n".join(texts)
    raise Unusable(f"message content is {type(content).__name__}, not text")


_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def conversation_prompt(messages: list[Any], drop_answer: bool = False) -> Prompt:
    """A chat-message list (TRL's conversational ``prompt``) as a prompt: the messages with
    their text (a single user message is its text); raises ``Unusable`` saying why a list cannot
    be one. ``drop_answer`` leaves out trailing assistant turns (a ``messages`` record holds the
    answer too)."""
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise Unusable(f"message {i} is not an object with role and content")
        role = m.get("role")
        if role not in _SPEAKERS:
            raise Unusable(f"message {i} has role {role!r} (user, assistant or system)")
        if role == "system" and turns:
            raise Unusable(f"message {i} is a system message after the first")
        text = message_text(m.get("content")).strip()
        if not text:
            raise Unusable(f"message {i} ({role}) is empty")
        turns.append({"role": role, "content": text})
    while drop_answer and turns and turns[-1]["role"] == "assistant":
        turns.pop()
    if not turns:
        raise Unusable("the conversation has no messages")
    if turns[-1]["role"] != "user":
        raise Unusable("the conversation must end with the person's (user) turn")
    if len(turns) == 1:
        return turns[0]["content"]
    return turns


def record_prompt(
    rec: dict[str, Any], prompt_field: str, hh: bool, hh_context: HHContext
) -> Prompt:
    """The prompt of one record: an hh-rlhf transcript, a text field or a message list; raises
    ``Unusable`` saying why a record has none."""
    if hh:
        transcript = rec.get("chosen")
        prompt = hh_prompt(transcript, hh_context) if isinstance(transcript, str) else None
        if prompt is None:
            raise Unusable("no Human turn in 'chosen'")
        return prompt
    if _uses_messages(prompt_field, rec) and isinstance(rec[MESSAGES], list):
        return conversation_prompt(rec[MESSAGES], drop_answer=True)
    value = rec.get(prompt_field)
    if isinstance(value, list):
        return conversation_prompt(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, str) or (value is None and prompt_field in rec):
        raise Unusable(f"'{prompt_field}' is empty")
    raise Unusable(_bad_prompt(prompt_field, rec))


MESSAGES = "messages"  # TRL's full-conversation column: the prompt when there is no 'prompt'


def _uses_messages(prompt_field: str, columns: Iterable[str]) -> bool:
    """A record read through its ``messages`` list: asked for by name, or the default
    ``prompt`` field is missing and a ``messages`` column is there."""
    columns = set(columns)
    return MESSAGES in columns and (
        prompt_field == MESSAGES or (prompt_field == "prompt" and "prompt" not in columns)
    )


def _bad_prompt(prompt_field: str, keys: Iterable[str]) -> str:
    return (
        f"no text field '{prompt_field}' (keys: {', '.join(sorted(keys)) or 'none'}); set "
        "--prompt-field (a string, or a list of chat messages ending with the user's turn)"
    )


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
        if "\\u" in line:  # an escape may decode to a lone surrogate, which no file can hold
            try:
                json.dumps(record, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as e:
                raise PromptDataError(path, f"not valid Unicode text ({e.reason})", n) from None
        yield n, record


def read_prompts(
    path: str | Path,
    fmt: PromptFormat = "auto",
    prompt_field: str = "prompt",
    id_field: str = "id",
    hh_context: HHContext = "first",
    options: LoadOptions | None = None,
    limit: int | None = None,
) -> list[PromptRow]:
    """Read prompt data: a path, a shipped prompt set by name (``demo_prompts.txt``) or a Hub
    dataset id; raise ``PromptDataError`` naming the source (and line) on bad input. ``limit``
    keeps the first N prompts."""
    options = options or LoadOptions()
    hub = hub_id(path) if fmt in ("auto", "hub") else None
    if hub is not None:
        source = resolve_dataset(*hub, options.data_dir)
        records, columns = load_records(path, source.path, options, limit)
        return _finish(path, _dataset_rows(path, records, columns, prompt_field, id_field,
                                           fmt, hh_context, limit))  # fmt: skip
    path = locate(path, "prompts")
    if fmt == "hub":
        raise PromptDataError(path, "not a Hub dataset id (ORG/NAME[@REVISION])")
    if fmt in ("auto", "dataset", "hh-rlhf") and path.is_dir():
        if is_saved_dataset(path):
            records, columns = load_saved(path, path)
        else:
            records, columns = load_records(path, path, options, limit)
        rows = _dataset_rows(path, records, columns, prompt_field, id_field, fmt, hh_context, limit)
        return _finish(path, rows)
    if fmt == "parquet" or (fmt == "auto" and _detect(path, None) == "parquet"):
        if not path.is_file():
            raise PromptDataError(path, "prompt file not found")
        records, columns = load_records(path, path, options, limit)
        rows = _dataset_rows(path, records, columns, prompt_field, id_field, fmt, hh_context, limit)
        return _finish(path, rows)
    text = read_text_file(path)
    fmt = _detect(path, text) if fmt == "auto" else fmt
    rows: list[PromptRow] = []
    if fmt == "text":
        rows = [
            PromptRow(f"line-{n}", line.strip())
            for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif fmt in ("jsonl", "hh-rlhf"):
        for n, rec in jsonl_records(path, text):
            try:
                prompt = record_prompt(rec, prompt_field, fmt == "hh-rlhf", hh_context)
            except Unusable as e:
                raise PromptDataError(path, str(e), n) from None
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
    del text  # the whole file, no longer needed: not alive beside every row at the peak
    return _finish(path, rows[:limit] if limit else rows)


def _dataset_rows(
    source: str | Path,
    records: Iterable[dict[str, Any]],
    columns: list[str],
    prompt_field: str,
    id_field: str,
    fmt: str,
    hh_context: HHContext,
    limit: int | None,
) -> list[PromptRow]:
    hh = fmt == "hh-rlhf" or (
        {"chosen", "rejected"} <= set(columns) and prompt_field not in columns
    )
    if not hh and prompt_field not in columns and not _uses_messages(prompt_field, columns):
        raise PromptDataError(source, _bad_prompt(prompt_field, columns))
    rows = []
    for n, rec in take(records, limit):
        rid = str(rec.get(id_field) or f"row-{n}")
        try:
            prompt = record_prompt(rec, prompt_field, hh, hh_context)
        except Unusable as e:  # never skipped silently: the user would lose the row unawares
            raise PromptDataError(source, f"record {n} (id {rid}): {e}") from None
        rows.append(PromptRow(rid, prompt))
    return rows


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
