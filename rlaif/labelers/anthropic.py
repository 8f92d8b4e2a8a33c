"""Anthropic Messages API (and servers that speak it, such as llama.cpp's llama-server).

Like the openai backend: one request per conversation, many in flight, our own retries
(``max_retries=0`` in the SDK), keys from an environment variable or a key file only.

Differences the Messages API forces:
- A leading system message goes into the ``system`` parameter.
- There is no ``n``: ``n`` samples are ``n`` requests. There is no seed.
- Recent SDK versions no longer list ``temperature``/``top_p`` as arguments of
  ``messages.create``; the API still takes them, so they travel in ``extra_body``.
- A final assistant message is a prefill the model continues. Some servers echo the prefill at
  the start of the answer; we strip it when they do.
- There are no log-probs. ``option_logprobs`` samples ``votes`` answers at temperature 1 and
  counts which option each names first: the probability of an option is its vote share (log of
  it returned; an option with no votes gets ``-inf``). Answers that name no option are counted in
  ``unparsed_votes`` and do not vote.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError, LabelerResponseError
from rlaif.labelers.base import BackendSettings, Completion, Conversation, GenerateParams
from rlaif.labelers.openai import read_api_key
from rlaif.labelers.reliability import (
    RateLimiter,
    RetrySettings,
    Verdict,
    parse_retry_after,
    with_retries,
)


class AnthropicSettings(BackendSettings):
    model: str
    base_url: str | None = Field(default=None, description="default: Anthropic's API")
    api_key_env: str = "ANTHROPIC_API_KEY"
    api_key_file: Path | None = None
    concurrency: int = Field(default=16, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    retry: RetrySettings = RetrySettings()
    votes: int = Field(default=8, ge=1, description="samples per comparison for option scoring")
    vote_max_tokens: int = Field(default=8, ge=1)


def _label(option: str) -> str:
    core = re.sub(r"[^0-9A-Za-z]+", " ", option).strip()
    return core.split()[0] if core else option.strip()


def split_system(conversation: Conversation) -> tuple[str | None, list[dict[str, str]]]:
    messages = [dict(m) for m in conversation]
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


class AnthropicLabeler:
    backend: ClassVar[str] = "anthropic"
    supports_logprobs: ClassVar[bool] = False
    Settings = AnthropicSettings

    def __init__(self, settings: AnthropicSettings):
        self.settings = settings
        self._key = read_api_key(
            settings.api_key_env, settings.api_key_file, settings.base_url is None
        )
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.retries = 0
        self.unparsed_votes = 0

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def max_batch_size(self) -> int:
        return 1

    @property
    def max_concurrency(self) -> int:
        return self.settings.concurrency

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.settings.model,
            "base_url": self.settings.base_url,
            "votes": self.settings.votes,
        }

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                from anthropic import AsyncAnthropic
            except ImportError:
                raise BackendUnavailableError(
                    "the anthropic backend needs the anthropic package: pip install 'rlaif[api]'"
                ) from None
            self._loop = loop
            self._client = AsyncAnthropic(
                api_key=self._key,
                base_url=self.settings.base_url,
                max_retries=0,
                timeout=self.settings.retry.timeout,
            )
        return self._client

    async def _create(self, conversation: Conversation, **kwargs: Any) -> Any:
        system, messages = split_system(conversation)
        if system is not None:
            kwargs["system"] = system

        async def attempt() -> Any:
            response = await self._get_client().messages.create(
                model=self.settings.model, messages=messages, **kwargs
            )
            if not isinstance(getattr(response, "content", None), list):
                raise LabelerResponseError("response without content")
            return response

        def counted(v: Verdict) -> None:
            self.retries += 1

        await self._limiter.acquire(kwargs.get("max_tokens", 0))
        return await with_retries(
            attempt, self.settings.retry, classify_anthropic, counted, enforce_timeout=False
        )

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        return list(await asyncio.gather(*(self._samples(c, params) for c in conversations)))

    async def _samples(
        self, conversation: Conversation, params: GenerateParams
    ) -> list[Completion]:
        return list(
            await asyncio.gather(*(self._one(conversation, params) for _ in range(params.n)))
        )

    async def _one(self, conversation: Conversation, params: GenerateParams) -> Completion:
        kwargs: dict[str, Any] = {
            "max_tokens": params.max_tokens,
            "extra_body": {"temperature": params.temperature, "top_p": params.top_p},
        }
        if params.stop:
            kwargs["stop_sequences"] = list(params.stop)
        response = await self._create(conversation, **kwargs)
        text = "".join(getattr(b, "text", "") for b in response.content)
        prefill = conversation[-1]["content"] if conversation[-1]["role"] == "assistant" else ""
        if prefill and text.startswith(prefill):  # some servers echo the prefill
            text = text[len(prefill) :]
        usage = getattr(response, "usage", None)
        return Completion(
            text=text.strip(),
            finish_reason="length" if response.stop_reason == "max_tokens" else "stop",
            prompt_tokens=getattr(usage, "input_tokens", 0) or 0,
            completion_tokens=getattr(usage, "output_tokens", 0) or 0,
        )

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        return list(await asyncio.gather(*(self._vote(c, options) for c in conversations)))

    async def _vote(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        labels = [_label(o) for o in options]
        params = GenerateParams(
            n=self.settings.votes, temperature=1.0, max_tokens=self.settings.vote_max_tokens
        )
        answers = await self._samples(conversation, params)
        counts = dict.fromkeys(labels, 0)
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, labels)) + r")\b")
        for answer in answers:
            m = pattern.search(answer.text)
            if m:
                counts[m.group(1)] += 1
            else:
                self.unparsed_votes += 1
        total = sum(counts.values())
        if total == 0:
            raise LabelerResponseError(f"none of {len(answers)} votes named an option {labels}")
        return [math.log(counts[lab] / total) if counts[lab] else -math.inf for lab in labels]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def classify_anthropic(exc: BaseException) -> Verdict:
    import anthropic

    if isinstance(exc, LabelerResponseError):
        return Verdict(True, f"bad response: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        headers = getattr(exc.response, "headers", None)
        retry_after = parse_retry_after(headers.get("retry-after")) if headers else None
        transient = status in (408, 409, 429, 529) or status >= 500
        return Verdict(transient, f"HTTP {status} from server", retry_after)
    if isinstance(exc, anthropic.APITimeoutError | anthropic.APIConnectionError):
        return Verdict(True, f"connection problem: {type(exc).__name__}")
    if isinstance(exc, anthropic.APIResponseValidationError | ValueError):
        return Verdict(True, f"unparsable response: {type(exc).__name__}")
    return Verdict(False, f"{type(exc).__name__}: {exc}")
