"""OpenAI chat completions, and any OpenAI-compatible server (vLLM serve, llama.cpp, SGLang).

One request per conversation (``max_batch_size`` 1) and many in flight (``max_concurrency``): an
API server batches on its side, so the engine's job is to keep it busy. With several
``base_url`` values, each request goes to the server with the fewest requests in flight.

The SDK's own retries are off (``max_retries=0``): ``reliability.with_retries`` retries 429, 5xx,
connection errors, timeouts and unparsable bodies with backoff and jitter, honouring Retry-After,
and a client-side limiter keeps requests/min and tokens/min under budget.

Option log-probs: chat APIs return ``top_logprobs`` for generated tokens, not the probability of
an arbitrary continuation. We ask for a few greedy tokens after the conversation and read, at the
first position where any option's label shows up among the top tokens, the log-probability of
each option's label ("A" for " (A)"). An option that is not among the top tokens gets the floor
of that position (the smallest returned log-prob), an upper bound that is recorded as such.

The API key comes from an environment variable or a key file, never from a flag or a config
value that could be logged; ``describe()`` does not include it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError, ConfigError, LabelerResponseError
from rlaif.labelers.base import (
    Completion,
    Conversation,
    GenerateParams,
    option_label,
    strip_prefill,
)
from rlaif.labelers.reliability import (
    ApiCaller,
    ApiLabelerMixin,
    ApiSettings,
    Verdict,
    classify_sdk_error,
    estimate_tokens,
    read_api_key,
)


class OpenAISettings(ApiSettings):
    base_url: str | list[str] | None = Field(
        default=None, description="server URL(s), e.g. http://127.0.0.1:8080/v1; default OpenAI"
    )
    top_logprobs: int = Field(default=20, ge=1, le=20)


class OpenAILabeler(ApiLabelerMixin):
    backend: ClassVar[str] = "openai"
    supports_logprobs: ClassVar[bool] = True
    Settings = OpenAISettings

    def __init__(self, settings: OpenAISettings):
        self.settings = settings
        urls = settings.base_url
        self._urls: list[str | None] = (
            [urls] if isinstance(urls, str) or urls is None else list(urls)
        )
        if not self._urls:
            raise ConfigError("openai: base_url is an empty list")
        self._key = read_api_key(settings.api_key_env, settings.api_key_file, urls is None)
        self._clients: list[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight = [0] * len(self._urls)
        self._caller = ApiCaller(settings, classify_openai, (self._key,))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.settings.model,
            "base_url": self.settings.base_url,
            "concurrency": self.settings.concurrency,
        }

    def _client_index(self) -> int:
        loop = asyncio.get_running_loop()
        if self._clients is None or self._loop is not loop:  # HTTP clients belong to one loop
            try:
                from openai import AsyncOpenAI
            except ImportError:
                raise BackendUnavailableError(
                    "the openai backend needs the openai package: pip install 'rlaif[api]'"
                ) from None
            self._loop = loop
            self._clients = [
                AsyncOpenAI(
                    api_key=self._key,
                    base_url=url,
                    max_retries=0,
                    timeout=self.settings.retry.timeout,
                )
                for url in self._urls
            ]
        return min(range(len(self._urls)), key=lambda i: self._inflight[i])

    async def _create(self, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            i = self._client_index()
            self._inflight[i] += 1
            try:
                response = await self._clients[i].chat.completions.create(**kwargs)  # type: ignore[index]
            finally:
                self._inflight[i] -= 1
            if not getattr(response, "choices", None):
                raise LabelerResponseError("response without choices")
            return response

        tokens = estimate_tokens(kwargs["messages"]) + kwargs.get("max_tokens", 0)
        return await self._caller.call(attempt, tokens)

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        return list(await asyncio.gather(*(self._one(c, params) for c in conversations)))

    async def _one(self, conversation: Conversation, params: GenerateParams) -> list[Completion]:
        kwargs: dict[str, Any] = {
            "model": self.settings.model,
            "messages": list(conversation),
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        response = await self._create(**kwargs)
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        total_completion = getattr(usage, "completion_tokens", 0) or 0
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != params.n:
            raise LabelerResponseError(f"asked for {params.n} choices, got {len(choices)}")
        self._caller.record(prompt_tokens, total_completion)
        per_choice = total_completion // max(1, len(choices))
        return [
            Completion(
                text=strip_prefill(c.message.content or "", conversation),
                finish_reason="length" if c.finish_reason == "length" else "stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=per_choice,
            )
            for c in choices
        ]

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        return list(await asyncio.gather(*(self._score(c, options) for c in conversations)))

    async def _score(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        labels = [option_label(o) for o in options]
        response = await self._create(
            model=self.settings.model,
            messages=list(conversation),
            max_tokens=4,
            temperature=0.0,
            logprobs=True,
            top_logprobs=self.settings.top_logprobs,
        )
        usage = getattr(response, "usage", None)
        self._caller.record(
            getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0
        )
        content = getattr(response.choices[0].logprobs, "content", None) or []
        # read the position where the model actually wrote an option's label (after " (",
        # say); if it never did, the first position where a label is among the top tokens
        decisive = [p for p in content if option_label(p.token) in labels]
        for position in decisive[:1] or content:
            found: dict[str, float] = {}
            floor = math.inf
            for top in position.top_logprobs or []:
                floor = min(floor, top.logprob)
                key = option_label(top.token)
                if key in labels:
                    # several spellings (" A", "A", "(A") of one label add up
                    found[key] = _logaddexp(found.get(key, -math.inf), top.logprob)
            if found:
                return [found.get(lab, floor) for lab in labels]
        raise LabelerResponseError(
            f"none of the options {labels} appeared among the top {self.settings.top_logprobs} "
            "tokens"
        )

    async def aclose(self) -> None:
        for client in self._clients or []:
            await client.close()
        self._clients = None


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def classify_openai(exc: BaseException) -> Verdict:
    """Which failures of the openai SDK are worth retrying."""
    import openai

    return classify_sdk_error(exc, openai)
