"""Retries, timeouts and client-side rate limits for API backends.

API calls fail in ordinary ways: 429 with a Retry-After, 5xx, dropped connections, timeouts,
garbage bodies. ``with_retries`` retries what is transient, with exponential backoff and full
jitter (a random delay up to the cap, so many clients do not retry in lockstep), and honours the
server's Retry-After when it gives one. What is not transient (400, 401, 404) fails at once. A call
that still fails after the last retry raises ``LabelerCallError``; the engine marks the row failed
and the run goes on.

``RateLimiter`` keeps a client under requests/min and tokens/min budgets with two token buckets,
so a run does not provoke the 429s it would then have to retry.

Backends supply ``classify(exc) -> Verdict`` for their SDK's exceptions; ``classify_sdk_error``
covers the exception family that the openai and anthropic SDKs share. ``ApiSettings`` and
``ApiCaller`` hold what every API backend needs (keys, concurrency, limits, retries), so each
backend module keeps only what differs about its API.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rlaif.errors import ConfigError, LabelerCallError, LabelerResponseError

T = TypeVar("T")


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=6, ge=0)
    base_delay: float = Field(default=0.5, ge=0.0, description="seconds before the first retry")
    max_delay: float = Field(default=30.0, ge=0.0)
    timeout: float = Field(default=120.0, gt=0.0, description="seconds per attempt")


@dataclass(frozen=True)
class Verdict:
    retryable: bool
    reason: str
    retry_after: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, settings: RetrySettings, retry_after: float | None) -> float:
    if retry_after is not None:  # the server knows best
        return retry_after
    cap = min(settings.max_delay, settings.base_delay * (2**attempt))
    return random.uniform(0.0, cap)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    settings: RetrySettings,
    classify: Callable[[BaseException], Verdict],
    on_retry: Callable[[Verdict], None] | None = None,
    enforce_timeout: bool = True,
) -> T:
    """Call until success or a final failure. ``enforce_timeout=False`` when the client enforces
    ``settings.timeout`` itself (cancelling an HTTP client mid-request can leave its connection
    pool in a bad state, so an SDK's own timeout is preferred where there is one)."""
    attempt = 0
    while True:
        try:
            if not enforce_timeout:
                return await call()
            return await asyncio.wait_for(call(), timeout=settings.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is classified: transient or not
            verdict = (
                Verdict(True, f"timed out after {settings.timeout:g} s")
                if isinstance(exc, TimeoutError)
                else classify(exc)
            )
            attempt += 1
            if not verdict.retryable or attempt > settings.max_retries:
                raise LabelerCallError(verdict.reason, attempt, verdict.retryable) from exc
            if on_retry:
                on_retry(verdict)
            await asyncio.sleep(backoff_delay(attempt - 1, settings, verdict.retry_after))


class RateLimiter:
    """Token buckets for requests/min and tokens/min; ``None`` means no limit."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int = 0) -> None:
        if self._requests is None and self._tokens is None:
            return
        async with self._lock:
            if self._requests is not None:
                await self._requests.take(1.0)
            if self._tokens is not None:
                await self._tokens.take(min(float(tokens), self._tokens.capacity))


class _Bucket:
    """Refills at ``per_minute / 60`` a second, holds at most a minute's worth."""

    def __init__(self, per_minute: float):
        self.per_second = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.stamp = time.monotonic()

    async def take(self, amount: float) -> None:
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.per_second)
            self.stamp = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.per_second)


# --------------------------------------------------------------------------- shared by API backends

NO_KEY = "sk-no-key-needed"  # local OpenAI/Anthropic-compatible servers accept any key


class ApiSettings(BaseModel):
    """Settings every API backend has; a backend's settings model extends this one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model name as the server knows it")
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: Path | None = None
    concurrency: int = Field(default=32, ge=1, description="requests in flight")
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    retry: RetrySettings = RetrySettings()
    price_input_per_million: float | None = Field(
        default=None, ge=0, description="price of 1M prompt tokens, for cost accounting"
    )
    price_output_per_million: float | None = Field(
        default=None, ge=0, description="price of 1M completion tokens"
    )


def read_api_key(env: str, key_file: Path | None, required: bool) -> str:
    """The key from ``key_file`` or ``$env``; never from a flag or config value that gets logged."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read API key file {key_file}: {e.strerror}") from None
        if key:
            return key
    key = os.environ.get(env, "").strip()
    if key:
        return key
    if required:
        raise ConfigError(f"no API key: set ${env} or api_key_file")
    return NO_KEY


class ApiCaller:
    """Rate limit, then call with retries; counts retries, tokens and cost for the run's summary."""

    def __init__(self, settings: ApiSettings, classify: Callable[[BaseException], Verdict]):
        self.settings = settings
        self.classify = classify
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def record(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    @property
    def cost(self) -> float | None:
        """Spent so far by the configured price table; None without prices."""
        p_in, p_out = self.settings.price_input_per_million, self.settings.price_output_per_million
        if p_in is None and p_out is None:
            return None
        return (self.prompt_tokens * (p_in or 0.0) + self.completion_tokens * (p_out or 0.0)) / 1e6

    async def call(self, attempt: Callable[[], Awaitable[T]], tokens: int = 0) -> T:
        def counted(verdict: Verdict) -> None:
            self.retries += 1

        await self.limiter.acquire(tokens)
        # the SDK clients enforce settings.retry.timeout themselves
        return await with_retries(
            attempt, self.settings.retry, self.classify, counted, enforce_timeout=False
        )


class ApiLabelerMixin:
    """The protocol properties both API backends answer the same way (one request per call,
    ``concurrency`` calls in flight, retries and cost from their ``ApiCaller``)."""

    settings: ApiSettings
    _caller: ApiCaller

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def max_batch_size(self) -> int:
        return 1  # the server batches; our job is to keep enough requests in flight

    @property
    def max_concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def retries(self) -> int:
        """Calls retried so far (reported by the engine)."""
        return self._caller.retries

    @property
    def cost(self) -> float | None:
        """Spent in this process, by the configured price table (None without prices)."""
        return self._caller.cost


def classify_sdk_error(
    exc: BaseException, sdk: ModuleType, transient_status: tuple[int, ...] = (408, 409, 429)
) -> Verdict:
    """Retry or not, for the exception family the openai and anthropic SDKs share."""
    if isinstance(exc, LabelerResponseError):
        return Verdict(True, f"bad response: {exc}")
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        headers: Any = getattr(exc.response, "headers", None)
        retry_after = parse_retry_after(headers.get("retry-after")) if headers else None
        transient = status in transient_status or status >= 500
        return Verdict(transient, f"HTTP {status} from server", retry_after)
    if isinstance(exc, sdk.APITimeoutError | sdk.APIConnectionError):
        return Verdict(True, f"connection problem: {type(exc).__name__}")
    if isinstance(exc, sdk.APIResponseValidationError | ValueError):
        return Verdict(True, f"unparsable response: {type(exc).__name__}")
    return Verdict(False, f"{type(exc).__name__}: {exc}")
