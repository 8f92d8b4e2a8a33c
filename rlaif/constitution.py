"""Constitutions: the schema, a line-aware loader, principle sampling and YAML writing.

A constitution is a YAML file, not code, so that users swap principles with a flag. The schema is a
set of pydantic models with ``extra="forbid"``: a misspelt key is an error rather than a silently
ignored setting. We parse with ruamel.yaml's round-trip loader because it remembers the line of
every key and list item; pydantic's error locations (``("feedback", 3, "instrction")``) are walked
back through that tree so every error names ``file:line``. All problems of a file are reported at
once, not just the first.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from ruamel.yaml.comments import CommentedMap

from rlaif.errors import ConstitutionError
from rlaif.resources import locate
from rlaif.yamlio import line_of, parse_yaml, validate_yaml, yaml_parser

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

PrincipleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
Text = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_blank_text(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be blank")
        return v.strip() if isinstance(v, str) else v


class CritiqueRevisionPrinciple(_Strict):
    """One SL-CAI principle: how to critique a response, and how to revise it after the critique."""

    id: PrincipleId
    critique_request: Text
    revision_request: Text
    tags: list[str] = []


class FeedbackPrinciple(_Strict):
    """One RL-CAI principle: the multiple-choice instruction put to the feedback model."""

    id: PrincipleId
    instruction: Text
    tags: list[str] = []


class Turn(_Strict):
    """One earlier turn of a few-shot conversation."""

    role: Literal["user", "assistant"]
    content: Text


class FewShotExample(_Strict):
    """A worked critique/revision exchange, shown to the model before the real one. ``context``
    holds the turns before ``prompt`` when the exchange is a multi-turn conversation."""

    prompt: Text
    response: Text
    critique: Text
    revision: Text
    principle: PrincipleId | None = None
    context: list[Turn] = []


class FeedbackExample(_Strict):
    """A worked multiple-choice question for RL-CAI feedback: a conversation (``context`` turns,
    then the person's ``prompt``) and two answers, of which ``better`` is the right choice."""

    prompt: Text
    better: Text
    worse: Text
    context: list[Turn] = []


class Constitution(_Strict):
    name: Text
    description: Text
    version: Text
    critique_revision: list[CritiqueRevisionPrinciple] = []
    feedback: list[FeedbackPrinciple] = []
    examples: str | None = Field(
        default=None, description="few-shot example file, relative to the constitution file"
    )

    _path: Path | None = PrivateAttr(default=None)
    _sha256: str = PrivateAttr(default="")
    _examples: tuple[FewShotExample, ...] = PrivateAttr(default=())
    _feedback_examples: tuple[FeedbackExample, ...] = PrivateAttr(default=())

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def sha256(self) -> str:
        """Content hash of the constitution file and its example file (for provenance)."""
        return self._sha256

    @property
    def few_shot(self) -> tuple[FewShotExample, ...]:
        return self._examples

    @property
    def feedback_few_shot(self) -> tuple[FeedbackExample, ...]:
        return self._feedback_examples

    def critique_principle(self, principle_id: str) -> CritiqueRevisionPrinciple:
        for p in self.critique_revision:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def feedback_principle(self, principle_id: str) -> FeedbackPrinciple:
        for p in self.feedback:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)


def sample_principles(principles: Sequence[T], k: int, seed: int, key: str) -> list[T]:
    """Draw ``k`` principles for one row, reproducibly and without repeats until all were used.

    The draw depends only on ``(seed, key)`` (e.g. the row's prompt id), never on how many rows came
    before, so a resumed or reordered run samples the same principles for the same row.
    """
    if not principles:
        raise ValueError("no principles to sample from")
    rng = random.Random(f"{seed}:{key}")
    out: list[T] = []
    while len(out) < k:
        cycle = list(principles)
        rng.shuffle(cycle)
        if out and len(cycle) > 1 and cycle[0] == out[-1]:  # no back-to-back repeat across cycles
            cycle[0], cycle[-1] = cycle[-1], cycle[0]
        out.extend(cycle[: k - len(out)])
    return out


# --------------------------------------------------------------------------- loading


def _duplicate_ids(root: Any, section: str) -> list[tuple[int | None, str]]:
    seen: dict[str, int | None] = {}
    problems = []
    for i, item in enumerate(root.get(section) or []):
        pid = item.get("id") if isinstance(item, dict) else None
        if pid is None:
            continue
        line = line_of(root, (section, i, "id"))
        if pid in seen:
            problems.append((line, f"duplicate {section} id '{pid}' (first at line {seen[pid]})"))
        else:
            seen[pid] = line
    return problems


def load_constitution(path: str | Path) -> Constitution:
    """Parse and validate a constitution file (a path, or the name of a shipped one such as
    ``harmless``); raise ``ConstitutionError`` naming file and line."""
    path = locate(path, "constitution")
    root, raw = parse_yaml(path, ConstitutionError)
    if not isinstance(root, CommentedMap):
        raise ConstitutionError(path, [(1, "a constitution must be a YAML mapping of keys")])
    dupes = _duplicate_ids(root, "critique_revision") + _duplicate_ids(root, "feedback")
    try:
        const = validate_yaml(Constitution, root, path, ConstitutionError)
    except ConstitutionError as e:
        raise ConstitutionError(path, sorted(e.problems + dupes, key=lambda p: p[0] or 0)) from None
    if dupes:
        raise ConstitutionError(path, dupes)
    if not const.critique_revision and not const.feedback:
        raise ConstitutionError(
            path, [(1, "no principles: add 'critique_revision' and/or 'feedback' entries")]
        )
    digest = hashlib.sha256(raw)
    examples: tuple[FewShotExample, ...] = ()
    feedback_examples: tuple[FeedbackExample, ...] = ()
    if const.examples:
        ex_path = (path.parent / const.examples).resolve()
        if not ex_path.is_file():
            line = line_of(root, ("examples",))
            raise ConstitutionError(path, [(line, f"examples file not found: {ex_path}")])
        parsed, ex_raw = _load_examples(ex_path, const)
        examples, feedback_examples = tuple(parsed.examples), tuple(parsed.feedback_examples)
        digest.update(ex_raw)
    const._path = path
    const._sha256 = digest.hexdigest()
    const._examples = examples
    const._feedback_examples = feedback_examples
    return const


class ExampleFile(_Strict):
    """The few-shot file a constitution names in ``examples:``."""

    examples: list[FewShotExample] = []
    feedback_examples: list[FeedbackExample] = []


def _load_examples(path: Path, const: Constitution) -> tuple[ExampleFile, bytes]:
    root, raw = parse_yaml(path, ConstitutionError)
    if not isinstance(root, CommentedMap):
        raise ConstitutionError(
            path,
            [
                (
                    1,
                    "an examples file must be a mapping with 'examples:' and/or "
                    "'feedback_examples:'",
                )
            ],
        )
    parsed = validate_yaml(ExampleFile, root, path, ConstitutionError)
    known = {p.id for p in const.critique_revision}
    bad = [
        (line_of(root, ("examples", i, "principle")), f"unknown principle id '{ex.principle}'")
        for i, ex in enumerate(parsed.examples)
        if ex.principle is not None and ex.principle not in known
    ]
    if bad:
        raise ConstitutionError(path, bad)
    return parsed, raw


# --------------------------------------------------------------------------- writing / importing


def dump_constitution(data: dict[str, Any]) -> str:
    """Render a constitution mapping as YAML, long texts as folded-free plain block scalars."""
    from ruamel.yaml.scalarstring import LiteralScalarString

    def wrap(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: wrap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [wrap(x) for x in v]
        if isinstance(v, str) and "\n" in v:
            return LiteralScalarString(v)
        return v

    y = yaml_parser()
    y.width = 100
    y.indent(mapping=2, sequence=4, offset=2)
    buf = StringIO()
    y.dump(wrap(data), buf)
    return buf.getvalue()
