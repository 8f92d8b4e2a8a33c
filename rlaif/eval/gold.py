"""Readers for gold labels (``rlaif eval labeler --gold FILE``), in three formats.

- ``hh-rlhf``: ``{"chosen", "rejected"}`` transcripts of ``\\n\\nHuman: ...\\n\\nAssistant: ...``
  turns that share a prefix and differ in the last Assistant turn. The shared turns become the
  conversation; the two last turns are the pair, and the human preferred ``chosen``.
- ``pairs``: generic ``{"prompt", "chosen", "rejected"}`` rows; each field a string or a
  conversational list of ``{role, content}`` messages (TRL's preference format).
- ``multiple-choice``: the format of the Constitutional AI paper's evaluations: a ``prompt`` text
  that already ends in a question with lettered options, and ``corrects`` / ``incorrects`` lists of
  option strings such as ``" (B)"``.

Every reader returns rows in file order with stable ids (the record's ``id``, else ``row-N``) and
names the file and line of anything it cannot use. Any file may be gzip-compressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlaif.data.sources import hh_turns, jsonl_records, read_text_file
from rlaif.errors import GoldDataError, PromptDataError
from rlaif.templates import Message

GoldFormat = Literal["auto", "hh-rlhf", "pairs", "multiple-choice"]


@dataclass(frozen=True)
class GoldPair:
    id: str
    conversation: list[Message]  # the turns before the judged answer, ending with the person
    chosen: str
    rejected: str


@dataclass(frozen=True)
class GoldChoice:
    id: str
    prompt: str
    corrects: list[str]
    incorrects: list[str] = field(default_factory=list)

    @property
    def options(self) -> list[str]:
        return [*self.corrects, *self.incorrects]


GoldRow = GoldPair | GoldChoice


def detect(record: dict[str, Any]) -> GoldFormat:
    if {"corrects", "incorrects"} & set(record):
        return "multiple-choice"
    if "prompt" in record and {"chosen", "rejected"} <= set(record):
        return "pairs"
    if {"chosen", "rejected"} <= set(record):
        return "hh-rlhf"
    return "auto"


def read_gold(path: str | Path, fmt: GoldFormat = "auto") -> list[GoldRow]:
    path = Path(path)
    try:
        text = read_text_file(path)
    except PromptDataError as e:
        raise GoldDataError(path, e.message.replace("prompt file", "gold file")) from None
    rows: list[GoldRow] = []
    for n, rec in _records(path, text):
        kind = fmt if fmt != "auto" else detect(rec)
        rid = str(rec.get("id", f"row-{n}"))
        if kind == "hh-rlhf":
            rows.append(_hh(path, n, rid, rec))
        elif kind == "pairs":
            rows.append(_pair(path, n, rid, rec))
        elif kind == "multiple-choice":
            rows.append(_choice(path, n, rid, rec))
        else:
            keys = ", ".join(sorted(rec)) or "none"
            raise GoldDataError(
                path,
                f"cannot tell the gold format from the keys ({keys}); expected chosen/rejected "
                "(hh-rlhf), prompt/chosen/rejected, or prompt/corrects/incorrects",
                n,
            )
    if not rows:
        raise GoldDataError(path, "no gold rows found")
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise GoldDataError(path, f"duplicate id '{r.id}'")
        seen.add(r.id)
    return rows


def _records(path: Path, text: str) -> Any:
    try:
        yield from jsonl_records(path, text)
    except PromptDataError as e:
        raise GoldDataError(path, e.message, e.line) from None


def _hh(path: Path, n: int, rid: str, rec: dict[str, Any]) -> GoldPair:
    """Split at the last ``Assistant:`` marker the two transcripts share: what precedes it is the
    conversation, what follows is each answer. (Splitting into turns first would fail on the few
    real rows whose answers themselves contain "Human:" or a second Assistant turn.)"""
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise GoldDataError(path, "hh-rlhf rows need string 'chosen' and 'rejected'", n)
    marker = "\n\nAssistant:"
    cut = chosen.rfind(marker)
    while cut >= 0 and not rejected.startswith(chosen[: cut + len(marker)]):
        cut = chosen.rfind(marker, 0, cut)
    if cut < 0:
        raise GoldDataError(
            path, "chosen and rejected share no conversation before an Assistant turn", n
        )
    turns = hh_turns(chosen[:cut])
    if not turns or turns[-1][0] != "Human":
        raise GoldDataError(path, "the shared conversation must end with a Human turn", n)
    roles = {"Human": "user", "Assistant": "assistant"}
    conversation: list[Message] = [
        {"role": roles[speaker], "content": text}  # type: ignore[misc]
        for speaker, text in turns
    ]
    start = cut + len(marker)
    return GoldPair(rid, conversation, chosen[start:].strip(), rejected[start:].strip())


def _messages(value: Any) -> list[Message] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in value]
    return None


def _answer(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    msgs = _messages(value)
    if msgs:
        return "\n".join(m["content"] for m in msgs if m["role"] == "assistant") or None
    return None


def _pair(path: Path, n: int, rid: str, rec: dict[str, Any]) -> GoldPair:
    conversation = _messages(rec.get("prompt"))
    chosen, rejected = _answer(rec.get("chosen")), _answer(rec.get("rejected"))
    if not conversation or chosen is None or rejected is None:
        raise GoldDataError(
            path, "pairs rows need 'prompt', 'chosen' and 'rejected' (strings or messages)", n
        )
    return GoldPair(rid, conversation, chosen, rejected)


def _choice(path: Path, n: int, rid: str, rec: dict[str, Any]) -> GoldChoice:
    prompt, corrects, incorrects = rec.get("prompt"), rec.get("corrects"), rec.get("incorrects")
    ok = (
        isinstance(prompt, str)
        and isinstance(corrects, list)
        and isinstance(incorrects, list)
        and all(isinstance(o, str) and o.strip() for o in [*corrects, *incorrects])
    )
    if not ok or not corrects or not incorrects:
        raise GoldDataError(
            path,
            "multiple-choice rows need a 'prompt' text and non-empty 'corrects' and "
            "'incorrects' lists of option strings",
            n,
        )
    if set(corrects) & set(incorrects):
        raise GoldDataError(path, "an option is listed as both correct and incorrect", n)
    return GoldChoice(rid, prompt, list(corrects), list(incorrects))
