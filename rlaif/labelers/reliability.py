"""Retries, timeouts and client-side rate limits for API backends.

API calls fail in ordinary ways: 429 with a Retry-After, 5xx, dropped connections, timeouts,
garbage bodies. ``with_retries`` retries what is transient, with exponential backoff and full
jitter (a random delay up to the cap, so many clients do not retry in lockstep), and honours the
server's Retry-After (or ``retry-after-ms``) when it gives one, up to ``max_retry_after``. What is
not transient (400, 401, 404) fails at once. A call that still fails after the last retry raises
``LabelerCallError``; the engine marks the row failed and the run goes on.

Some failures say the endpoint itself is unusable, whatever the row: 401/403 (the key), 404 (the
model or the URL), and a connection that cannot be made at all (nothing listening, unknown host).
Their verdict is ``permanent``; a refused connection is retried only ``connect_retries`` times (a
server that is restarting comes back within a second or two; a wrong port never does). The
labeler only classifies; stopping the run is the engine's decision.

Reasons keep the server's own error body (a user needs "model 'gpt-5o' does not exist", not
"HTTP 404"), one line, cut at 500 characters, with the API key and anything shaped like a key
redacted, since reasons are written to failed-row files and printed.

``RateLimiter`` keeps a client under requests/min and tokens/min budgets with two token buckets,
so a run does not provoke the 429s it would then have to retry. A request is charged its prompt
tokens plus ``max_tokens`` before it is sent, as providers count it; the prompt tokens are an
estimate from characters (``estimate_tokens``: 4 characters a token, plus 4 per message), since
the provider's tokenizer is not at hand.

Backends supply ``classify(exc) -> Verdict`` for their SDK's exceptions; ``classify_sdk_error``
covers the exception family that the openai and anthropic SDKs share. ``ApiSettings`` and
``ApiCaller`` hold what every API backend needs (keys, concurrency, limits, retries, the price
table), so each backend module keeps only what differs about its API.

``ApiCaller`` counts what was billed by price class: input tokens read from the provider's prompt
cache and those written to it are counted and priced apart from the rest of the input
(``price_cached_input_per_million``, ``price_cache_write_per_million``; unset, they cost what
other input tokens cost, so an unset price never understates the bill).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rlaif.errors import ConfigError, LabelerCallError, LabelerResponseError
from rlaif.labelers.base import Usage
from rlaif.labelers.rules import RulesOverride

T = TypeVar("T")


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=6, ge=0)
    base_delay: float = Field(default=0.5, ge=0.0, description="seconds before the first retry")
    max_delay: float = Field(default=30.0, ge=0.0)
    timeout: float = Field(default=120.0, gt=0.0, description="seconds per attempt")
    connect_retries: int = Field(
        default=2, ge=0, description="retries of a connection that cannot be made at all"
    )
    max_retry_after: float = Field(
        default=60.0, ge=0.0, description="longest server-asked wait (Retry-After) honoured"
    )


@dataclass(frozen=True)
class Verdict:
    retryable: bool
    reason: str
    retry_after: float | None = None
    permanent: bool = False  # the endpoint cannot serve any request: the run should stop


def retry_after_from(headers: Any) -> float | None:
    """The server's wait, from ``retry-after-ms`` (OpenAI; more precise) or ``Retry-After``."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


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
    if retry_after is not None:  # the server knows best, within reason
        return min(retry_after, settings.max_retry_after)
    cap = min(settings.max_delay, settings.base_delay * (2**attempt))
    return random.uniform(0.0, cap)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    settings: RetrySettings,
    classify: Callable[[BaseException], Verdict],
    on_retry: Callable[[Verdict], None] | None = None,
    enforce_timeout: bool = True,
    retry_timeouts: bool = True,
) -> T:
    """Call until success or a final failure. ``enforce_timeout=False`` when the client enforces
    ``settings.timeout`` itself (cancelling an HTTP client mid-request can leave its connection
    pool in a bad state, so an SDK's own timeout is preferred where there is one).
    ``retry_timeouts=False`` for calls that may have taken effect although they timed out (a
    batch creation): such a timeout is final."""
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
                Verdict(retry_timeouts, f"timed out after {settings.timeout:g} s")
                if isinstance(exc, TimeoutError)
                else classify(exc)
            )
            attempt += 1
            limit = settings.connect_retries if verdict.permanent else settings.max_retries
            if not verdict.retryable or attempt > limit:
                raise LabelerCallError(
                    verdict.reason, attempt, verdict.retryable, verdict.permanent
                ) from exc
            if on_retry:
                on_retry(verdict)
            await asyncio.sleep(backoff_delay(attempt - 1, settings, verdict.retry_after))


def estimate_tokens(messages: Any) -> int:
    """Prompt tokens of a chat request, estimated from characters (4 a token, 4 per message)."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return math.ceil(chars / 4) + 4 * len(messages)


_KEYLIKE = re.compile(r"((?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)", re.IGNORECASE)
# a URL's query value whose name says it is a secret (key, api_key, api-key, access_token, sig...)
_SECRET_PARAM = re.compile(
    r"([?&][\w.-]*(?:key|token|secret|sig|password)[\w.-]*=)[^&\s\"'#]+", re.IGNORECASE
)
_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")  # user:password@ in a URL


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without the given secrets, anything shaped like an API key, key-like query
    values in URLs (``?api_key=...``) and URL credentials (``user:password@``)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _SECRET_PARAM.sub(r"\1[redacted]", _KEYLIKE.sub("[redacted]", text))
    return _USERINFO.sub("", text)


def server_says(body: Any, text: str | None = None, limit: int = 500) -> str:
    """The server's error body as one line (compact JSON or text), cut at ``limit``."""
    if body is None or body == {}:
        said = text or ""
    elif isinstance(body, str):
        said = body
    else:
        try:
            said = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            said = str(body)
    said = " ".join(said.split())
    return said if len(said) <= limit else said[: limit - 3] + "..."


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
    price_cached_input_per_million: float | None = Field(
        default=None,
        ge=0,
        description="price of 1M prompt tokens read from the provider's prompt cache "
        "(unset: the input price, which never understates the bill)",
    )
    price_cache_write_per_million: float | None = Field(
        default=None,
        ge=0,
        description="price of 1M prompt tokens written to the prompt cache (Anthropic: 1.25x "
        "the input price; unset: the input price)",
    )
    prompt_caching: bool = Field(
        default=True,
        description="mark each request's static prefix for the provider's prompt cache",
    )
    cache_min_tokens: int | None = Field(
        default=None,
        ge=1,
        description="shortest prefix (estimated tokens) worth marking; default: the model's "
        "minimum cacheable length",
    )
    model_rules: RulesOverride | None = Field(
        default=None,
        description="what the model accepts, over the rules matched by its id (labelers/rules.py)",
    )
    votes: int = Field(
        default=8, ge=1, description="samples per question where the model gives no log-probs"
    )
    vote_max_tokens: int = Field(default=8, ge=1)


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

    def __init__(
        self,
        settings: ApiSettings,
        classify: Callable[[BaseException], Verdict],
        secrets: tuple[str, ...] = (),
    ):
        self.settings = settings
        self.secrets = tuple(s for s in secrets if s and s != NO_KEY)

        def classify_redacted(exc: BaseException) -> Verdict:
            v = classify(exc)
            return Verdict(v.retryable, redact(v.reason, self.secrets), v.retry_after, v.permanent)

        self.classify = classify_redacted
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.retries = 0
        self.prompt_tokens = 0  # every input token, cached ones included
        self.cached_tokens = 0  # of them, read from the provider's prompt cache
        self.cache_write_tokens = 0  # of them, written to it
        self.completion_tokens = 0
        # tokens weighted by their price factor (batch items: 0.5), by price class
        self._billed_input = 0.0  # neither read from nor written to the cache
        self._billed_cached = 0.0
        self._billed_write = 0.0
        self._billed_completion = 0.0

    def record(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        price_factor: float = 1.0,
    ) -> None:
        """Count tokens (``prompt_tokens`` includes the cached and cache-written ones);
        ``price_factor`` scales their price (provider batches cost half)."""
        cached = min(cached_tokens, prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - cached)
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached
        self.cache_write_tokens += written
        self.completion_tokens += completion_tokens
        self._billed_input += (prompt_tokens - cached - written) * price_factor
        self._billed_cached += cached * price_factor
        self._billed_write += written * price_factor
        self._billed_completion += completion_tokens * price_factor

    @property
    def usage(self) -> Usage:
        return Usage(
            self.prompt_tokens, self.cached_tokens, self.cache_write_tokens, self.completion_tokens
        )

    @property
    def cost(self) -> float | None:
        """Spent so far by the configured price table; None without prices. Cached reads and
        cache writes are priced like other input tokens unless their own price is set."""
        s = self.settings
        p_in, p_out = s.price_input_per_million, s.price_output_per_million
        p_read, p_write = s.price_cached_input_per_million, s.price_cache_write_per_million
        if p_in is None and p_out is None and p_read is None and p_write is None:
            return None
        p_in = p_in or 0.0
        spent = (
            self._billed_input * p_in
            + self._billed_cached * (p_in if p_read is None else p_read)
            + self._billed_write * (p_in if p_write is None else p_write)
            + self._billed_completion * (p_out or 0.0)
        )
        return spent / 1e6

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
    ``concurrency`` calls in flight, retries and cost from their ``ApiCaller``). In batch mode
    (settings ``batch``, see ``labelers/batches.py``) a call is a whole stage instead: up to
    ``batch_call_size`` conversations, a few calls at once."""

    settings: ApiSettings
    _caller: ApiCaller
    batch_call_size: int = 50_000  # conversations per call in batch mode
    batch_calls: int = 4  # calls in flight in batch mode
    # whether n samples are n requests, each billed its prompt (engine/budget.py's estimate)
    prompt_billed_per_sample: ClassVar[bool] = False

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def batch_mode(self) -> bool:
        return bool(getattr(self.settings, "batch", False))

    @property
    def prefers_whole_stages(self) -> bool:
        return self.batch_mode

    @property
    def max_batch_size(self) -> int:
        if self.batch_mode:
            return self.batch_call_size
        return 1  # the server batches; our job is to keep enough requests in flight

    @property
    def max_concurrency(self) -> int:
        return self.batch_calls if self.batch_mode else self.settings.concurrency

    @property
    def retries(self) -> int:
        """Calls retried so far (reported by the engine)."""
        return self._caller.retries

    @property
    def cost(self) -> float | None:
        """Spent in this process, by the configured price table (None without prices)."""
        return self._caller.cost

    @property
    def usage(self) -> Usage:
        """Tokens billed in this process: input (cached reads and writes apart) and output."""
        return self._caller.usage


def classify_sdk_error(
    exc: BaseException, sdk: ModuleType, transient_status: tuple[int, ...] = (408, 409, 429)
) -> Verdict:
    """Retry or not, for the exception family the openai and anthropic SDKs share."""
    if isinstance(exc, LabelerResponseError):
        return Verdict(True, f"bad response: {exc}")
    url = _request_url(exc)
    if isinstance(exc, sdk.APIStatusError):
        said = server_says(getattr(exc, "body", None), _response_text(exc.response))
        headers: Any = getattr(exc.response, "headers", None)
        body = getattr(exc, "body", None)
        return status_verdict(exc.status_code, url, said, headers, transient_status, body)
    refused = _no_connection(exc) if isinstance(exc, sdk.APIConnectionError) else None
    if refused is not None:
        # no connection at all: nothing listens there, or the host is unknown
        return Verdict(True, f"cannot connect to {url}: {refused}", permanent=True)
    if isinstance(exc, sdk.APITimeoutError):
        return Verdict(True, f"timed out: {url}")
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__
        return Verdict(True, f"connection problem with {url}: {cause or exc}")
    if isinstance(exc, sdk.APIResponseValidationError | ValueError):
        return Verdict(True, f"unparsable response: {type(exc).__name__}")
    return Verdict(False, f"{type(exc).__name__}: {exc}")


def status_verdict(
    status: int,
    url: str,
    said: str,
    headers: Any,
    transient_status: tuple[int, ...] = (408, 409, 429),
    body: Any = None,
) -> Verdict:
    """An error status from a server: retried when transient (``transient_status``, 5xx), the
    endpoint unusable on 401/403/404 and on a 400 that refuses a parameter of the request (the
    model refuses it in every row), the server's words and its Retry-After kept."""
    transient = status in transient_status or status >= 500
    reason = f"HTTP {status} from {url}: {said}" if said else f"HTTP {status} from {url}"
    refused = refused_parameter(status, body, said)
    if refused is not None:
        reason = f"HTTP {status} from {url}: the model refuses '{refused}': {said}"
        return Verdict(False, reason, None, permanent=True)
    return Verdict(transient, reason, retry_after_from(headers), status in PERMANENT_STATUS)


# request fields a server may name when it refuses one (OpenAI's ``param``, Anthropic's message)
_PARAMETERS = (
    "max_completion_tokens|max_tokens|temperature|top_p|top_k|top_logprobs|logprobs|seed|n|"
    "stop_sequences|stop|reasoning_effort|prompt_cache_key|cache_control"
)
_NAMED = re.compile(r"[`'\"](" + _PARAMETERS + r")[`'\"]")
_PREFILL = re.compile(r"prefill", re.I)
# a 400 about the row's own content, not about what the request carries
_ROW_CODES = ("context_length_exceeded", "string_above_max_length", "content_policy_violation")


def refused_parameter(status: int, body: Any, said: str) -> str | None:
    """The request parameter a 400 refuses (``temperature``, ``max_tokens``, ``prefill``...), or
    None when the 400 is about the row (a prompt too long for the context) or names nothing."""
    if status != 400:
        return None
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict):
        if error.get("code") in _ROW_CODES:
            return None
        param = error.get("param")
        if isinstance(param, str) and param and param not in ("messages", "input", "prompt"):
            return param
        said = str(error.get("message") or said)
    named = _NAMED.search(said)
    if named:
        return named.group(1)
    if _PREFILL.search(said):
        return "prefill"
    return None


def _no_connection(exc: BaseException) -> BaseException | None:
    """The cause that says no connection could be made at all: httpx's ``ConnectError``, or
    aiohttp's ``ClientConnectorError`` (which the SDKs' aiohttp transport reports as a connect
    timeout)."""
    cause = exc.__cause__
    while cause is not None:
        if any(c.__name__ in ("ConnectError", "ClientConnectorError") for c in type(cause).__mro__):
            return cause
        cause = cause.__cause__
    return None


# the key (401, 403) or the model/URL (404) is wrong: no request to this endpoint can succeed
PERMANENT_STATUS = (401, 403, 404)


def _request_url(exc: BaseException) -> str:
    request = getattr(exc, "request", None)
    try:
        return str(request.url) if request is not None else "server"
    except RuntimeError:  # an SDK error built without a request
        return "server"


def _response_text(response: Any) -> str | None:
    try:
        return response.text if response is not None else None
    except Exception:  # a streamed or closed body: the status line has to do
        return None
