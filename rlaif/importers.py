"""Importing the Constitutional AI paper's supplementary files into rlaif's constitution format.

The paper's repository ships four shapes of JSON, and the only way to tell them apart is by shape,
so each item is classified on its own and anything that fits no shape is refused with its file
and item number (guessing would turn a transcript into a "principle" without a word):

- critique/revision principles: an object keyed by principle id, each value
  ``{"prompt": ["\\n\\nCritiqueRequest: ...\\n\\nCritique:"], "edit_request": "...Revision:"}``;
- feedback principles: a list of multiple-choice instructions, each ending ``Options:``;
- critique/revision few-shot transcripts: a list of strings, each a run of ``\\n\\nHuman:`` /
  ``\\n\\nAssistant:`` turns followed by one or more ``CritiqueRequest`` / ``Critique`` /
  ``RevisionRequest`` / ``Revision`` blocks (a later block critiques the previous revision);
- feedback few-shot rows: a list of ``{"prompt", "corrects", "incorrects"}`` objects, the prompt
  a ``Human:``/``Assistant:`` transcript ending at the open assistant turn.

Transcripts become few-shot examples (the ``examples:`` file of the constitution), one per
critique block, keeping earlier turns as ``context``. Each example names the principle whose
critique request it shows: an imported principle with the same critique request, or, when none
matches, a principle made from the transcript's own requests (reported, never silent). Feedback
rows become feedback examples, one per (correct, incorrect) pair. Cue words are stripped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.errors import ImportFormatError

_CRITIQUE_CUE = re.compile(r"^\s*CritiqueRequest:\s*(?P<text>.*?)\s*(?:Critique:)?\s*$", re.S)
_REVISION_CUE = re.compile(r"^\s*RevisionRequest:\s*(?P<text>.*?)\s*(?:Revision:)?\s*$", re.S)
_OPTIONS_CUE = re.compile(r"^\s*(?P<text>.*?)\s*Options:\s*$", re.S)
_TAG = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")
_BLOCK = ("CritiqueRequest", "Critique", "RevisionRequest", "Revision")
_SHAPES = (
    "expected a feedback instruction (a string ending 'Options:'), a critique/revision "
    "transcript (Human/Assistant turns, then CritiqueRequest, Critique, RevisionRequest, "
    "Revision) or a feedback example ({prompt, corrects, incorrects})"
)


@dataclass
class CaiImport:
    """What the files held, in rlaif's schema (plain dicts, ready to write as YAML)."""

    critique_revision: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    feedback_examples: list[dict[str, Any]] = field(default_factory=list)
    from_examples: list[str] = field(default_factory=list)  # principles made from transcripts

    def constitution_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.critique_revision:
            out["critique_revision"] = self.critique_revision
        if self.feedback:
            out["feedback"] = self.feedback
        return out

    def examples_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.examples:
            out["examples"] = self.examples
        if self.feedback_examples:
            out["feedback_examples"] = self.feedback_examples
        return out


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
    return slug or "principle"


def _squash(text: str) -> str:
    return " ".join(text.split())


def import_cai_paper(paths: Sequence[str | Path]) -> CaiImport:
    """Read the paper's JSON files (any mix of the four shapes) into one ``CaiImport``."""
    result = CaiImport()
    transcripts: list[tuple[Path, int, list[tuple[str, str]]]] = []
    for p in map(Path, paths):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ImportFormatError(p, "file not found") from None
        except json.JSONDecodeError as e:
            raise ImportFormatError(p, f"invalid JSON: {e.msg}", e.lineno) from None
        if isinstance(data, dict):
            result.critique_revision.extend(_critiques(p, data))
        elif isinstance(data, list):
            for i, item in enumerate(data):
                _classify(p, i, item, result, transcripts)
        else:
            raise ImportFormatError(p, "expected a JSON object (critiques) or a list")
    for path, i, parts in transcripts:
        result.examples.extend(_examples_of(path, i, parts, result))
    return result


def _classify(
    path: Path,
    i: int,
    item: Any,
    result: CaiImport,
    transcripts: list[tuple[Path, int, list[tuple[str, str]]]],
) -> None:
    if isinstance(item, dict):
        result.feedback_examples.extend(_feedback_example(path, i, item))
    elif isinstance(item, str) and "CritiqueRequest:" in item:
        transcripts.append((path, i, _parts(path, i, item)))
    elif isinstance(item, str) and _OPTIONS_CUE.match(item) and item.strip() != "Options:":
        text = _OPTIONS_CUE.match(item)["text"]  # type: ignore[index]
        n = len(result.feedback) + 1
        result.feedback.append({"id": f"feedback-{n:02d}", "instruction": text})
    else:
        raise ImportFormatError(path, f"item {i}: {_SHAPES}")


def _critiques(path: Path, data: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for key, value in data.items():
        if not isinstance(value, dict) or set(value) - {"prompt", "edit_request"}:
            raise ImportFormatError(
                path, f"entry '{key}': expected keys 'prompt' and 'edit_request'"
            )
        prompts = value.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(x, str) for x in prompts) or len(prompts) != 1:
            raise ImportFormatError(path, f"entry '{key}': 'prompt' must be a list of one string")
        edit = value.get("edit_request")
        c = _CRITIQUE_CUE.match(prompts[0])
        r = _REVISION_CUE.match(edit) if isinstance(edit, str) else None
        if not c or not r or "CritiqueRequest:" not in prompts[0]:
            raise ImportFormatError(path, f"entry '{key}': missing CritiqueRequest/RevisionRequest")
        rows.append(
            {"id": _slug(str(key)), "critique_request": c["text"], "revision_request": r["text"]}
        )
    return rows


def _parts(path: Path, i: int, text: str) -> list[tuple[str, str]]:
    """``[(tag, content), ...]`` of a transcript; a trailing empty ``Human:`` is dropped."""
    pieces = _TAG.split("\n\n" + text.lstrip("\n"))
    if pieces[0].strip():
        raise ImportFormatError(path, f"item {i}: text before the first 'Human:' turn")
    parts = [(tag, body.strip()) for tag, body in zip(pieces[1::2], pieces[2::2], strict=True)]
    if parts and parts[-1] == ("Human", ""):
        parts.pop()
    return parts


def _turns(path: Path, i: int, parts: list[tuple[str, str]]) -> list[dict[str, str]]:
    turns = []
    for n, (tag, body) in enumerate(parts):
        want = "Human" if n % 2 == 0 else "Assistant"
        if tag != want or not body:
            raise ImportFormatError(
                path, f"item {i}: turn {n + 1} should be a non-empty '{want}:' turn, got '{tag}:'"
            )
        turns.append({"role": "user" if tag == "Human" else "assistant", "content": body})
    return turns


def _examples_of(
    path: Path, i: int, parts: list[tuple[str, str]], result: CaiImport
) -> list[dict[str, Any]]:
    start = next(n for n, (tag, _) in enumerate(parts) if tag == "CritiqueRequest")
    turns = _turns(path, i, parts[:start])
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        raise ImportFormatError(
            path,
            f"item {i}: the conversation must end with an 'Assistant:' turn before "
            "'CritiqueRequest:'",
        )
    blocks = parts[start:]
    if len(blocks) % 4 or any(tag != _BLOCK[n % 4] for n, (tag, _) in enumerate(blocks)):
        found = ", ".join(tag for tag, _ in blocks)
        raise ImportFormatError(
            path,
            f"item {i}: after the conversation expected CritiqueRequest, Critique, "
            f"RevisionRequest, Revision (repeated), found {found}",
        )
    if any(not body for _, body in blocks):
        raise ImportFormatError(path, f"item {i}: an empty critique or revision block")
    context, prompt, response = turns[:-2], turns[-2]["content"], turns[-1]["content"]
    out = []
    for b in range(0, len(blocks), 4):
        critique_request, critique, revision_request, revision = (x for _, x in blocks[b : b + 4])
        example: dict[str, Any] = {
            "principle": _principle_for(critique_request, revision_request, result),
            "prompt": prompt,
            "response": response,
            "critique": critique,
            "revision": revision,
        }
        if context:
            example["context"] = context
        out.append(example)
        response = revision  # a further block critiques the revision
    return out


def _principle_for(critique_request: str, revision_request: str, result: CaiImport) -> str:
    for p in result.critique_revision:
        if _squash(p["critique_request"]) == _squash(critique_request):
            return p["id"]
    pid = f"example-request-{len(result.from_examples) + 1:02d}"
    result.critique_revision.append(
        {"id": pid, "critique_request": critique_request, "revision_request": revision_request}
    )
    result.from_examples.append(pid)
    return pid


def _feedback_example(path: Path, i: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    if set(item) != {"prompt", "corrects", "incorrects"}:
        raise ImportFormatError(path, f"item {i}: {_SHAPES}")
    prompt, corrects, incorrects = item["prompt"], item["corrects"], item["incorrects"]
    lists_ok = all(
        isinstance(x, list) and x and all(isinstance(s, str) and s.strip() for s in x)
        for x in (corrects, incorrects)
    )
    if not isinstance(prompt, str) or not lists_ok:
        raise ImportFormatError(
            path,
            f"item {i}: 'prompt' must be a string and 'corrects'/'incorrects' non-empty "
            "lists of strings",
        )
    parts = _parts(path, i, prompt)
    if parts and parts[-1] == ("Assistant", ""):
        parts.pop()  # the open turn the answer would fill
    turns = _turns(path, i, parts)
    if not turns or turns[-1]["role"] != "user":
        raise ImportFormatError(path, f"item {i}: 'prompt' must end with the person's turn")
    out = []
    for better in corrects:
        for worse in incorrects:
            example: dict[str, Any] = {
                "prompt": turns[-1]["content"],
                "better": better.strip(),
                "worse": worse.strip(),
            }
            if len(turns) > 1:
                example["context"] = turns[:-1]
            out.append(example)
    return out
