"""What each provider's model families accept in a request: a table of rules by model id.

Providers change what a request may carry from one model generation to the next, and a body that
an older model took is a 400 for a newer one, for every row: Claude Sonnet 4.5 and Opus 4.1
refuse ``temperature`` and ``top_p`` together, Opus 4.7 refuses both altogether, Claude 5 models
refuse non-default sampling, and Claude 4.6 and later refuse an assistant prefill; OpenAI's
reasoning models (o-series, gpt-5) want ``max_completion_tokens`` instead of ``max_tokens``,
refuse non-default ``temperature``/``top_p`` and return no log-probs. The request builders of both
backends, online and batch alike, read one ``ModelRules`` for their model from the tables below:
the first pattern (a regular expression matched at the start of the model id) that matches wins,
and a model no pattern names (every OpenAI-compatible local server: vLLM, llama.cpp) gets the
``default`` rules, which are today's bodies. A user overrides any field for a run with the labeler
setting ``model_rules`` (``--labeler-set 'model_rules={prefill: false}'``).

What the rules change:
- sampling settings a model refuses are left out of the body; where ``temperature`` and ``top_p``
  may not travel together, ``temperature`` goes alone. Left out, the model samples its own way:
  greedy decoding (temperature 0) cannot be asked for, and ``describe()`` says so in provenance
  (``not_reproducible``), which the dataset card repeats;
- where a prefill is refused, the final assistant message is moved into the person's turn as an
  instruction to begin the answer with it (``prompts/prefill_instruction.j2``); the answer is read
  as before (an echoed prefill is stripped, options are found in the text);
- where there are no log-probs, option scores are sampled votes (``supports_logprobs`` is False,
  so AI feedback runs in votes mode, said at the start of the run and in the card);
- where there is no seed (Anthropic's API has none), sampled answers cannot be reproduced either,
  and provenance says so the same way;
- ``reasoning_tokens`` are added to the token limit of a reasoning model, whose hidden reasoning
  counts against ``max_completion_tokens``: a vote of 8 visible tokens needs room to think first.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlaif.labelers.base import Conversation, is_prefill


class ModelRules(BaseModel):
    """What one model family accepts (every field ``True`` and ``max_tokens``: no limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = "default"
    temperature: bool = Field(default=True, description="a temperature may be sent")
    top_p: bool = Field(default=True, description="a top_p may be sent")
    temperature_with_top_p: bool = Field(default=True, description="both in one request")
    prefill: bool = Field(default=True, description="a final assistant message is continued")
    seed: bool = Field(default=True, description="a seed may be sent (where the API has one)")
    logprobs: bool = Field(default=True, description="top log-probs come back with the answer")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    reasoning_tokens: int = Field(
        default=0, ge=0, description="added to the token limit for hidden reasoning"
    )

    def refused(self) -> list[str]:
        """What this family does not take, by name, for provenance."""
        return [
            name
            for name in ("temperature", "top_p", "prefill", "seed", "logprobs")
            if not getattr(self, name)
        ]


class RulesOverride(BaseModel):
    """The labeler setting ``model_rules``: fields that replace the matched rules' ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str | None = None
    temperature: bool | None = None
    top_p: bool | None = None
    temperature_with_top_p: bool | None = None
    prefill: bool | None = None
    seed: bool | None = None
    logprobs: bool | None = None
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    reasoning_tokens: int | None = Field(default=None, ge=0)


_REASONING = {
    "temperature": False,
    "top_p": False,
    "logprobs": False,
    "max_tokens_field": "max_completion_tokens",
    "reasoning_tokens": 1024,
}

# provider -> ((pattern, rules), ...): the first match wins; anything else is "default"
RULES: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "openai": (
        (r"o[1-9](-|$)", {"family": "openai-o-series", **_REASONING}),
        (r"gpt-5", {"family": "openai-gpt-5", **_REASONING}),
    ),
    # the Messages API takes no seed at all, whatever the model
    "anthropic": (
        # Claude 5 and later: non-default sampling is refused, and so is a prefill
        (
            r"claude-(opus|sonnet|haiku)-([5-9]|[1-9][0-9])(-|$)",
            {
                "family": "claude-5",
                "seed": False,
                "temperature": False,
                "top_p": False,
                "prefill": False,
            },
        ),
        # Opus 4.7 and later 4.x Opus: no temperature, top_p or top_k at all; no prefill
        (
            r"claude-opus-4-[7-9](-|$)",
            {
                "family": "claude-opus-4.7",
                "seed": False,
                "temperature": False,
                "top_p": False,
                "prefill": False,
            },
        ),
        # 4.6 and later: one of temperature and top_p, and no prefill
        (
            r"claude-(opus|sonnet|haiku)-4-[6-9](-|$)",
            {
                "family": "claude-4.6",
                "seed": False,
                "temperature_with_top_p": False,
                "prefill": False,
            },
        ),
        # Opus 4.1, Sonnet 4.5, Haiku 4.5: one of temperature and top_p
        (
            r"claude-(opus|sonnet|haiku)-4-[1-5](-|$)",
            {"family": "claude-4.1", "seed": False, "temperature_with_top_p": False},
        ),
        (r"", {"family": "claude", "seed": False}),  # every other model
    ),
}


@cache
def _compiled(provider: str) -> tuple[tuple[re.Pattern[str], ModelRules], ...]:
    return tuple((re.compile(p), ModelRules(**r)) for p, r in RULES.get(provider, ()))


def rules_for(provider: str, model: str, override: RulesOverride | None = None) -> ModelRules:
    """The rules of ``model`` at ``provider``, with the run's ``override`` applied."""
    found = next((r for p, r in _compiled(provider) if p.match(model)), ModelRules())
    if override is None:
        return found
    changed = override.model_dump(exclude_none=True)
    if changed and "family" not in changed:
        changed["family"] = f"{found.family}+override"
    return found.model_copy(update=changed)


def sampling(rules: ModelRules, temperature: float, top_p: float) -> dict[str, float]:
    """The sampling settings a body may carry: all that are accepted; where ``temperature`` and
    ``top_p`` may not travel together, ``temperature`` alone (``top_p`` where temperature is
    refused)."""
    out: dict[str, float] = {}
    if rules.temperature:
        out["temperature"] = temperature
    if rules.top_p and (rules.temperature_with_top_p or not out):
        out["top_p"] = top_p
    return out


def token_limit(rules: ModelRules, max_tokens: int) -> dict[str, int]:
    return {rules.max_tokens_field: max_tokens + rules.reasoning_tokens}


def without_prefill(rules: ModelRules, conversation: Conversation) -> list[dict[str, Any]]:
    """The messages to send: as given, or, where a prefill is refused, the final assistant
    message moved into the person's turn before it as an instruction to begin with it."""
    messages = [dict(m) for m in conversation]
    if rules.prefill or not is_prefill(conversation) or len(messages) < 2:
        return messages
    prefill = messages.pop()
    last = messages[-1]
    if last["role"] != "user":  # nothing to attach it to: a turn of its own
        messages.append({"role": "user", "content": _instruction("", prefill["content"])})
        return messages
    messages[-1] = {**last, "content": _instruction(last["content"], prefill["content"])}
    return messages


def _instruction(request: str, prefill: str) -> str:
    rendered = _templates().render("prefill_instruction", request=request, prefill=prefill)
    return rendered[-1]["content"]


@cache
def _templates() -> Any:
    from rlaif.templates import Templates

    return Templates()


def not_reproducible(rules: ModelRules) -> str | None:
    """Why a run on this model cannot be reproduced by rerunning it, if it cannot."""
    if not rules.temperature and not rules.top_p:
        return (
            f"the model ({rules.family}) refuses sampling settings: greedy decoding "
            "(temperature 0) cannot be asked for, so answers vary from run to run"
        )
    if not rules.temperature:
        return (
            f"the model ({rules.family}) refuses temperature: greedy decoding cannot be asked for"
        )
    if not rules.seed:
        return (
            f"the API ({rules.family}) takes no seed: sampled answers (temperature above 0) vary "
            "from run to run"
        )
    return None


def provenance_of(rules: ModelRules) -> dict[str, Any]:
    """What provenance records of the rules: nothing for ``default`` (today's bodies)."""
    if rules == ModelRules():
        return {}
    out: dict[str, Any] = {"model_rules": {"family": rules.family, "refused": rules.refused()}}
    why = not_reproducible(rules)
    if why:
        out["not_reproducible"] = why
    return out
