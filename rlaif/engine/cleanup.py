"""Rule-based clean-up of revision artifacts: flagged per row, configurable, never silent.

Models often wrap a revision in chatter ("Sure, here is the revised response:"), echo a label
("Revision:"), quote the whole answer, stop at the token limit, or return nothing. Each rule
reports a flag; in ``fix`` mode the rule also repairs the text (an empty revision keeps the text it
was meant to revise); in ``flag`` mode the text is left as it came; ``off`` does nothing. The flags
``unchanged`` and ``copied_critique`` only report that the reviser repeated the answer or the
critique, as small models often do. Flags are kept per round in the output row and counted
in the dataset card.
"""

from __future__ import annotations

import re
from typing import Literal

CleanupMode = Literal["fix", "flag", "off"]

# a provider's own reason for stopping, as the flag that marks the text: a refusal or a filtered
# answer must never enter SFT data unmarked
PROVIDER_STOPS = {"refusal": "refused", "content_filter": "filtered", "tool_calls": "tool_call"}


def stop_flags(finish_reason: str, prefix: str = "") -> list[str]:
    """The flag for a text the provider stopped (``refused``, ``filtered``, ``tool_call``), with
    ``prefix`` naming which text it is; none for an ordinary stop or the token limit."""
    flag = PROVIDER_STOPS.get(finish_reason)
    return [f"{prefix}{flag}"] if flag else []


_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[,!.]?\s+)?"
    r"(?:here(?:'s| is| are)|below is|this is)\s+(?:the\s+|a\s+|my\s+|an\s+)?"
    r"(?:revised|rewritten|improved|updated|new|edited|corrected)[^:\n]{0,60}:\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^\s*(?:revision|revised (?:response|answer|reply|version)|rewritten (?:response|answer)"
    r"|improved answer|assistant)\s*:\s*",
    re.IGNORECASE,
)
_QUOTED = re.compile(r'^\s*"(?P<inner>[^"]+)"\s*$', re.S)


def clean_revision(
    text: str, finish_reason: str, previous: str, mode: CleanupMode, critique: str = ""
) -> tuple[str, list[str]]:
    """Return the (possibly repaired) revision and the flags raised for it."""
    if mode == "off":
        return text, stop_flags(finish_reason)
    flags: list[str] = []
    fixed = text
    m = _PREAMBLE.match(fixed)
    if m:
        flags.append("preamble")
        fixed = fixed[m.end() :]
    m = _LABEL.match(fixed)
    if m:
        flags.append("echoed_label")
        fixed = fixed[m.end() :]
    m = _QUOTED.match(fixed)
    if m:
        flags.append("wrapped_in_quotes")
        fixed = m["inner"]
    fixed = fixed.strip()
    if finish_reason == "length":
        flags.append("truncated")
    flags += stop_flags(finish_reason)
    if not fixed:
        flags.append("empty")
        fixed = previous
    elif fixed == previous.strip():
        flags.append("unchanged")
    elif critique and fixed == critique.strip():
        flags.append("copied_critique")
    return (fixed if mode == "fix" else text), flags
