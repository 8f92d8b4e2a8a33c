"""Readers for prompt data (``--prompts FILE``).

This module reads the plain-text format: one prompt a line, blank lines and lines starting with
``#`` ignored. Every prompt gets a stable id (its 1-based line number) so sampling, caching and
resume can key on it. Other formats (JSONL, CSV, hh-rlhf, saved datasets) extend this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlaif.errors import PromptDataError


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str


def read_text_prompts(path: str | Path) -> list[PromptRow]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptDataError(path, "prompt file not found") from None
    except UnicodeDecodeError as e:
        raise PromptDataError(path, f"not UTF-8 text ({e.reason})") from None
    rows = [
        PromptRow(id=f"line-{n}", prompt=line.strip())
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise PromptDataError(path, "no prompts found (one prompt a line; # starts a comment)")
    return rows
