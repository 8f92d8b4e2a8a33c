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
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError, LabelerResponseError
from rlaif.labelers.base import (
    Completion,
    Conversation,
    GenerateParams,
    first_option,
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


class AnthropicSettings(ApiSettings):
    base_url: str | None = Field(default=None, description="default: Anthropic's API")
    api_key_env: str = "ANTHROPIC_API_KEY"
    concurrency: int = Field(default=16, ge=1)
    votes: int = Field(default=8, ge=1, description="samples per comparison for option scoring")
    vote_max_tokens: int = Field(default=8, ge=1)


def split_system(conversation: Conversation) -> tuple[str | None, list[dict[str, str]]]:
    messages = [dict(m) for m in conversation]
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


class AnthropicLabeler(ApiLabelerMixin):
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
        self._caller = ApiCaller(settings, classify_anthropic, (self._key,))
        self.unparsed_votes = 0

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

        tokens = estimate_tokens(conversation) + kwargs.get("max_tokens", 0)
        return await self._caller.call(attempt, tokens)

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
        usage = getattr(response, "usage", None)
        self._caller.record(
            getattr(usage, "input_tokens", 0) or 0, getattr(usage, "output_tokens", 0) or 0
        )
        return Completion(
            text=strip_prefill(text, conversation),
            finish_reason="length" if response.stop_reason == "max_tokens" else "stop",
            prompt_tokens=getattr(usage, "input_tokens", 0) or 0,
            completion_tokens=getattr(usage, "output_tokens", 0) or 0,
        )

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        return list(await asyncio.gather(*(self._vote(c, options) for c in conversations)))

    async def _vote(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        labels = [option_label(o) for o in options]
        params = GenerateParams(
            n=self.settings.votes, temperature=1.0, max_tokens=self.settings.vote_max_tokens
        )
        answers = await self._samples(conversation, params)
        counts = dict.fromkeys(labels, 0)
        for answer in answers:
            index = first_option(answer.text, options)
            if index is None:
                self.unparsed_votes += 1
            else:
                counts[labels[index]] += 1
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

    return classify_sdk_error(exc, anthropic, transient_status=(408, 409, 429, 529))
