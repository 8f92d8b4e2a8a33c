"""Where a request's static prefix ends, and whether marking it for the provider's prompt cache
can pay off. Shared by the anthropic and openai backends, which each turn the answer into their
own request fields (``cache_control`` breakpoints, a ``prompt_cache_key``).

Why a labeler can find the static part without knowing templates: every shipped template that
repeats text across rows (few-shot critique, revision and feedback) renders it as whole turns
before the final person's turn, and puts everything that varies (the prompt, the response, the
critique) in that final turn. So the static prefix is every message before the last person's
turn (a trailing assistant prefill is not part of it). A multi-turn prompt's earlier turns also
land there (``initial_response``), and those differ from row to row; caching them would pay the
provider's cache-write premium (1.25x on Anthropic) for nothing. ``PrefixTracker`` therefore marks
a prefix only from its second sighting on: the first request with a given prefix goes out
unmarked, the second writes the cache, the rest read it.

A prefix is marked only when its estimated length (4 characters a token, as the rate limiter
estimates) reaches the provider's minimum cacheable length: below it the provider caches
nothing, whatever is marked.

``without_cache_hints`` takes the hints out of a body again: batch custom ids are hashed without
them, and a server that refuses them gets the plain request.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from rlaif.labelers.reliability import estimate_tokens


def static_prefix(messages: Sequence[dict[str, Any]]) -> int:
    """How many leading messages are static: those before the final person's turn (a trailing
    assistant prefill does not count as that turn); 0 when there is no earlier message."""
    end = len(messages)
    if end and messages[-1].get("role") == "assistant":
        end -= 1
    last_user = max((i for i in range(end) if messages[i].get("role") == "user"), default=0)
    return last_user


def prefix_key(model: str, messages: Sequence[dict[str, Any]], end: int) -> str:
    """A stable name for the first ``end`` messages under ``model`` (a template + principle's
    few-shot turns give one key, whatever row they precede)."""
    text = json.dumps([model, list(messages[:end])], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class PrefixTracker:
    """Decides, per request, whether its static prefix is worth marking for the provider's cache:
    long enough (``min_tokens``) and seen before in this process (or, in a batch, more than once
    in it). Remembers at most ``capacity`` prefixes, forgetting the oldest."""

    def __init__(self, min_tokens: int, capacity: int = 100_000):
        self.min_tokens = min_tokens
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def cacheable(self, model: str, messages: Sequence[dict[str, Any]]) -> tuple[int, str] | None:
        """(the static prefix's length in messages, its key) when it is long enough to be
        cached, else None."""
        end = static_prefix(messages)
        if end == 0 or estimate_tokens(messages[:end]) < self.min_tokens:
            return None
        return end, prefix_key(model, messages, end)

    def mark(self, key: str, repeats: int = 1) -> bool:
        """Whether to mark the prefix ``key`` now: it was seen before, or ``repeats`` (its count
        among the requests going out together) is more than one. Records the sighting."""
        seen = key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return seen or repeats > 1


def without_cache_hints(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without ``prompt_cache_key`` (OpenAI) and ``cache_control`` breakpoints
    (Anthropic; a text block list that only carried one becomes its text again)."""
    out = {k: v for k, v in body.items() if k != "prompt_cache_key"}
    if "system" in out:
        out["system"] = _plain(out["system"])
    if isinstance(out.get("messages"), list):
        out["messages"] = [
            {**m, "content": _plain(m["content"])} if isinstance(m, dict) and "content" in m else m
            for m in out["messages"]
        ]
    return out


def _plain(content: Any) -> Any:
    if not isinstance(content, list) or not any(
        isinstance(b, dict) and "cache_control" in b for b in content
    ):
        return content
    blocks = [{k: v for k, v in b.items() if k != "cache_control"} for b in content]
    if len(blocks) == 1 and blocks[0].get("type") == "text" and set(blocks[0]) == {"type", "text"}:
        return blocks[0]["text"]
    return blocks
