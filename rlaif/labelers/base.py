"""The one interface every labeler backend implements, and the registry that names them.

A labeler turns chat conversations (OpenAI-format ``{"role", "content"}`` lists) into
completions, and scores option continuations ("(A)" vs "(B)") for soft preference labels. It knows
nothing of constitutions, the engine or trainers: the engine sees backends only through this
``Labeler`` protocol, so adding a backend never touches the engine.

The methods are ``async`` so API backends can run many requests at once; local backends do their
batched compute in a worker thread (``asyncio.to_thread``) and keep the event loop free.

Backends are registered by name as ``"module:Class"`` strings and imported only when asked for, so
``rlaif --help`` never imports torch, and the ``openai`` backend never needs transformers. Third
parties can add backends through the ``rlaif.labelers`` entry-point group.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlaif.errors import ConfigError, LabelerNotFoundError
from rlaif.templates import Message

Conversation = Sequence[Message]


class GenerateParams(BaseModel):
    """Sampling settings shared by every backend (a typo is an error: ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1, description="samples per conversation")
    temperature: float = Field(default=0.7, ge=0.0, description="0 means greedy decoding")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def checked(cls, **values: Any) -> GenerateParams:
        """Build from user input; a bad value is a ``ConfigError`` (exit 2), not a traceback."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise ConfigError(f"bad generation settings: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())


# why generation ended: "stop" (the model finished), "length" (the token limit), and the
# provider's own word where it is something else: "content_filter" (OpenAI's filter cut it),
# "refusal" (Anthropic's classifiers stopped it), "tool_calls" (the model called a tool)
FinishReason = Literal["stop", "length", "content_filter", "refusal", "tool_calls"]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int  # every input token, cached ones included
    completion_tokens: int


@dataclass(frozen=True)
class Usage:
    """Tokens a backend was billed for in this process. ``input_tokens`` counts every prompt
    token, those read from or written to the provider's prompt cache included (Anthropic reports
    them apart; they are added back here), so shares are of one total."""

    input_tokens: int = 0
    cached_tokens: int = 0  # of the input, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of the input, written to it (Anthropic bills these apart)
    output_tokens: int = 0

    @property
    def cached_share(self) -> float:
        """The share of input tokens billed as cache reads."""
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0

    def summary(self) -> str:
        """One line for run summaries and dataset cards."""
        return (
            f"input tokens {self.input_tokens:,} (of which cached reads {self.cached_tokens:,} "
            f"= {100 * self.cached_share:.1f}%, cache writes {self.cache_write_tokens:,}) · "
            f"output tokens {self.output_tokens:,}"
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
        )


@runtime_checkable
class Labeler(Protocol):
    """What the engine may call. ``generate`` returns ``n`` completions per conversation;
    ``option_logprobs`` returns, per conversation, the total log-probability of each option
    string as a continuation of the conversation (after the assistant prefill, if any).

    A call fails as a whole by raising (``LabelerCallError``). A backend that answers many
    conversations in one call (a provider batch) may instead put an exception in the place of one
    conversation's result: that conversation alone fails, and the others keep their answers."""

    backend: ClassVar[str]
    supports_logprobs: ClassVar[bool]
    retries: int  # calls retried so far (0 for backends that never retry)
    cost: float | None  # money spent so far by the backend's price table; None if unpriced
    # API backends also answer ``usage`` (a ``Usage``: tokens billed so far, cached ones apart);
    # the engine reads it with ``getattr``, so local backends need not have it

    @property
    def model_name(self) -> str: ...

    @property
    def max_batch_size(self) -> int:
        """Conversations per ``generate`` call the backend handles well (1 for API backends)."""
        ...

    @property
    def max_concurrency(self) -> int:
        """Calls that may be in flight at once (1 for a local model, more for an API)."""
        ...

    @property
    def prefers_whole_stages(self) -> bool:
        """True when a call is slow but cheap per conversation (a provider's batch API): the
        scheduler then waits until every row has asked for what it needs before it cuts a batch,
        so a stage goes out as one call. Backends without the attribute count as False."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend, model and settings, for provenance. Must never include secrets."""
        ...

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]: ...

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- registry

_BACKENDS: dict[str, str] = {
    "transformers": "rlaif.labelers.transformers:TransformersLabeler",
    "openai": "rlaif.labelers.openai:OpenAILabeler",
    "anthropic": "rlaif.labelers.anthropic:AnthropicLabeler",
    "vllm": "rlaif.labelers.vllm:VLLMLabeler",
}

# Short names users type; each expands to (backend, settings).
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2": ("transformers", {"model": "smollm2"}),
}


def register_backend(name: str, target: str) -> None:
    """Register a backend class by ``"module:Class"`` (imported lazily)."""
    _BACKENDS[name] = target


def backends() -> dict[str, str]:
    found = dict(_BACKENDS)
    for ep in entry_points(group="rlaif.labelers"):
        found.setdefault(ep.name, ep.value)
    return found


def aliases() -> dict[str, tuple[str, dict[str, Any]]]:
    return dict(_ALIASES)


def backend_class(name: str) -> type:
    table = backends()
    if name not in table:
        known = ", ".join(sorted({*table, *_ALIASES}))
        raise LabelerNotFoundError(f"unknown labeler '{name}'; known: {known}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"smollm2"`` -> alias; ``"transformers:/path/to/model"`` -> backend + model; a bare backend
    name -> its defaults."""
    if spec in _ALIASES:
        backend, settings = _ALIASES[spec]
        return backend, dict(settings)
    backend, sep, model = spec.partition(":")
    return backend, ({"model": model} if sep and model else {})


def create_labeler(spec: str, **settings: Any) -> Labeler:
    """Build a labeler from a spec string plus settings (validated by the backend's model)."""
    backend, base = parse_spec(spec)
    cls = backend_class(backend)
    try:
        config = cls.Settings(**{**base, **settings})
    except ValidationError as e:
        raise ConfigError(f"bad settings for labeler '{spec}': {_problems(e)}") from None
    return cls(config)


class BackendSettings(BaseModel):
    """Base for backend settings models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a labeler coroutine from synchronous code (the CLI, scripts, tests)."""
    return asyncio.run(coro)


def option_label(option: str) -> str:
    """The letter or word that identifies an option: ``" (A)"`` -> ``"A"``."""
    core = re.sub(r"[^0-9A-Za-z]+", " ", option).strip()
    return core.split()[0] if core else option.strip()


def is_prefill(conversation: Conversation) -> bool:
    """A conversation ending in an assistant message asks the model to continue that message."""
    return conversation[-1]["role"] == "assistant"


def chat_prompt_text(tokenizer: Any, conversation: Conversation) -> str:
    """The prompt text of a conversation under the tokenizer's chat template: ready for a new
    assistant turn, or continuing the final assistant message when it is a prefill."""
    prefill = is_prefill(conversation)
    return tokenizer.apply_chat_template(
        list(conversation),
        tokenize=False,
        add_generation_prompt=not prefill,
        continue_final_message=prefill,
    )


def strip_prefill(text: str, conversation: Conversation) -> str:
    """Drop an assistant prefill that a server echoed at the start of its answer."""
    prefill = conversation[-1]["content"] if is_prefill(conversation) else ""
    if prefill and text.startswith(prefill):
        text = text[len(prefill) :]
    return text.strip()


def first_option(text: str, options: Sequence[str]) -> int | None:
    """Index of the option a free-text answer names (``"I pick (B)."`` -> 1), or None.

    A parenthesised label (``(A)``) counts first, the earliest one winning. Failing that, a bare
    label standing as a word counts only when no other label appears, since "A" is also an article
    ("A better answer is B" names B, not A).
    """
    labels = [option_label(o) for o in options]
    alternatives = "|".join(map(re.escape, labels))
    m = re.search(r"\((" + alternatives + r")\)", text)
    if m:
        return labels.index(m.group(1))
    bare = re.findall(r"(?<![A-Za-z0-9])(" + alternatives + r")(?![A-Za-z0-9])", text)
    named = set(bare)
    if len(named) == 1:
        return labels.index(bare[0])
    return None


def vote_shares(texts: Sequence[str], options: Sequence[str]) -> tuple[list[float] | None, int]:
    """Option scores from sampled answers, for backends without log-probs: the log of each
    option's share of the answers that name one (``-inf`` for an option with no votes), or None
    when no answer names any; and how many answers named none."""
    counts = [0] * len(options)
    unparsed = 0
    for text in texts:
        index = first_option(text, options)
        if index is None:
            unparsed += 1
        else:
            counts[index] += 1
    total = sum(counts)
    if total == 0:
        return None, unparsed
    return [math.log(c / total) if c else -math.inf for c in counts], unparsed
