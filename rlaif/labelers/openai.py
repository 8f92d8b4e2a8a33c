"""OpenAI chat completions, and any OpenAI-compatible server (vLLM serve, llama.cpp, SGLang).

One request per conversation (``max_batch_size`` 1) and many in flight (``max_concurrency``): an
API server batches on its side, so the engine's job is to keep it busy. With several
``base_url`` values, each request goes to the server with the fewest requests in flight.

Online requests are plain JSON posts (``labelers/http.py``: the body as built here, the answer as
a dict), not the SDK's typed client, whose import and per-request work cost more CPU than the
rest of rlaif at a few hundred requests a second. ``reliability.with_retries`` retries 429, 5xx,
connection errors, timeouts and unparsable bodies with backoff and jitter, honouring Retry-After,
and a client-side limiter keeps requests/min and tokens/min under budget.

Option log-probs: chat APIs return ``top_logprobs`` for generated tokens, not the probability of
an arbitrary continuation. We ask for a few greedy tokens after the conversation and read, at the
first position where any option's label shows up among the top tokens, the log-probability of
each option's label ("A" for " (A)"). An option that is not among the top tokens gets the floor
of that position (the smallest returned log-prob), an upper bound that is recorded as such.

The API key comes from an environment variable or a key file, never from a flag or a config
value that could be logged; ``describe()`` does not include it.

Batch mode (``batch=true``, see ``labelers/batches.py``; the Batch API calls are in
``openai_batches.py``) sends each stage through the Batch API at half the price: the JSONL input
file carries, per conversation, exactly the body an online request would send
(``chat_body``/``score_body``), and each result body is read by the same function an online
answer is (``parse_chat``/``parse_scores``), so both modes give the same rows for the same
answers. With several ``base_url`` values, batches go to the first.

Prompt caching: OpenAI caches long identical prefixes by itself (from 1024 tokens, in 128-token
steps) and bills cached tokens at a discount; what a client can do is route requests with the
same prefix to the same cache with a ``prompt_cache_key``. With ``prompt_caching`` on (the
default) a request whose static prefix (the messages before the final person's turn: few-shot
turns, see ``labelers/caching.py``) is long enough to be cached carries a key derived from that
prefix, so one template under one principle has one key. The response's
``prompt_tokens_details.cached_tokens`` (part of ``prompt_tokens``) is counted and priced apart.
OpenAI-compatible servers that refuse unknown fields (vLLM answers 400 naming it) get the request
again without the key, and no key for the rest of the run.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import (
    BackendUnavailableError,
    ConfigError,
    LabelerCallError,
    LabelerResponseError,
)
from rlaif.labelers.base import (
    Completion,
    Conversation,
    GenerateParams,
    option_label,
    strip_prefill,
    vote_shares,
)
from rlaif.labelers.batches import BatchRunner, BatchSettings, custom_id
from rlaif.labelers.caching import PrefixTracker
from rlaif.labelers.http import HttpError, JsonClient, classify_http_error
from rlaif.labelers.openai_batches import OpenAIBatches
from rlaif.labelers.reliability import (
    ApiCaller,
    ApiLabelerMixin,
    ApiSettings,
    Verdict,
    classify_sdk_error,
    estimate_tokens,
    read_api_key,
    refused_parameter,
    server_says,
)
from rlaif.labelers.rules import (
    ModelRules,
    provenance_of,
    rules_for,
    sampling,
    token_limit,
    without_prefill,
)

DEFAULT_URL = "https://api.openai.com/v1"
DEFAULT_RULES = ModelRules()
CACHE_MINIMUM = 1024  # OpenAI caches prompts from 1024 tokens on


class OpenAISettings(ApiSettings, BatchSettings):
    base_url: str | list[str] | None = Field(
        default=None, description="server URL(s), e.g. http://127.0.0.1:8080/v1; default OpenAI"
    )
    top_logprobs: int = Field(default=20, ge=1, le=20)


async def _closed_with_the_loop(clients: list[JsonClient]) -> AsyncIterator[None]:
    """Closes ``clients`` as their event loop shuts down: ``asyncio.run`` finalises the async
    generators still open before it closes the loop. A labeler used under several loops (a judge
    called from synchronous code) or never closed then leaves no open HTTP session behind, which
    aiohttp would report at exit. Closing twice is harmless."""
    try:
        yield
    finally:
        for client in clients:
            await client.close()


def _env_url(url: str) -> str | None:
    """The URL for provenance when it came from ``$OPENAI_BASE_URL`` (None for OpenAI's)."""
    return None if url == DEFAULT_URL else url


_ENV_HEADERS = (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project"))


def _headers(key: str) -> dict[str, str]:
    """What the SDK sends besides the body: the key, and the organisation and project the
    OpenAI API reads from these headers (set from the SDK's environment variables)."""
    from rlaif import __version__

    headers = {"User-Agent": f"rlaif/{__version__}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for env, header in _ENV_HEADERS:
        if os.environ.get(env):
            headers[header] = os.environ[env]
    return headers


# --------------------------------------------------------------------------- bodies and answers
# One builder per request kind and one reader per answer kind, shared by online and batch mode.


def chat_body(
    model: str,
    conversation: Conversation,
    params: GenerateParams,
    rules: ModelRules = DEFAULT_RULES,
    cache_key: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": without_prefill(rules, conversation),
        "n": params.n,
        **sampling(rules, params.temperature, params.top_p),
        **token_limit(rules, params.max_tokens),
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None and rules.seed:
        body["seed"] = params.seed
    if cache_key:
        body["prompt_cache_key"] = cache_key
    return body


def score_body(
    model: str,
    conversation: Conversation,
    top_logprobs: int,
    rules: ModelRules = DEFAULT_RULES,
    cache_key: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": without_prefill(rules, conversation),
        **token_limit(rules, 4),
    }
    if rules.temperature:
        body["temperature"] = 0.0
    body.update(logprobs=True, top_logprobs=top_logprobs)
    if cache_key:
        body["prompt_cache_key"] = cache_key
    return body


def usage_of(response: dict[str, Any]) -> tuple[int, int, int, int]:
    """(prompt tokens, completion tokens, of the prompt those read from the cache, cache
    writes: none, OpenAI does not bill them)."""
    usage = response.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0 if isinstance(details, dict) else 0
    return usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached, 0


def _choices(response: Any) -> list[dict[str, Any]]:
    choices = response.get("choices") if isinstance(response, dict) else None
    if not choices or not isinstance(choices, list):
        raise LabelerResponseError("response without choices")
    return choices


# the provider's finish reasons that are not an ordinary stop, kept as they are
_FINISH: dict[Any, Any] = {
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def parse_chat(response: dict[str, Any], conversation: Conversation, n: int) -> list[Completion]:
    """The ``n`` completions of a chat completion (the JSON answer, online or from a batch)."""
    choices = _choices(response)
    if len(choices) != n:
        raise LabelerResponseError(f"asked for {n} choices, got {len(choices)}")
    prompt_tokens, total_completion, _, _ = usage_of(response)
    per_choice = total_completion // max(1, len(choices))
    try:
        return [
            Completion(
                text=strip_prefill((c.get("message") or {}).get("content") or "", conversation),
                finish_reason=_FINISH.get(c.get("finish_reason"), "stop"),
                prompt_tokens=prompt_tokens,
                completion_tokens=per_choice,
            )
            for c in sorted(choices, key=lambda c: c.get("index") or 0)
        ]
    except (AttributeError, TypeError) as e:
        raise LabelerResponseError(f"malformed choices: {e}") from None


def parse_scores(
    response: dict[str, Any], options: Sequence[str], top_logprobs: int
) -> list[float]:
    """Each option's log-probability, read from the top log-probs of a short greedy answer."""
    choices = _choices(response)
    labels = [option_label(o) for o in options]
    try:
        content = (choices[0].get("logprobs") or {}).get("content") or []
        # read the position where the model actually wrote an option's label (after " (",
        # say); if it never did, the first position where a label is among the top tokens
        decisive = [p for p in content if option_label(p["token"]) in labels]
        for position in decisive[:1] or content:
            found: dict[str, float] = {}
            floor = math.inf
            for top in position.get("top_logprobs") or []:
                logprob = float(top["logprob"])
                floor = min(floor, logprob)
                key = option_label(top["token"])
                if key in labels:
                    # several spellings (" A", "A", "(A") of one label add up
                    found[key] = _logaddexp(found.get(key, -math.inf), logprob)
            if found:
                return [found.get(lab, floor) for lab in labels]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise LabelerResponseError(f"malformed logprobs: {e}") from None
    raise LabelerResponseError(
        f"none of the options {labels} appeared among the top {top_logprobs} tokens"
    )


class OpenAILabeler(ApiLabelerMixin):
    backend: ClassVar[str] = "openai"
    Settings = OpenAISettings
    batch_call_size = 50_000

    @staticmethod
    def cached_prefix_tokens(settings: OpenAISettings, prefix: int) -> int:
        """Of a static prefix of ``prefix`` tokens, what OpenAI caches (for estimates): from
        1,024 tokens on, in steps of 128. It caches whether or not a key is sent."""
        if prefix < CACHE_MINIMUM:
            return 0
        return CACHE_MINIMUM + (prefix - CACHE_MINIMUM) // 128 * 128

    def __init__(self, settings: OpenAISettings):
        self.settings = settings
        urls = settings.base_url
        # no base_url: $OPENAI_BASE_URL, as the SDK reads it, then OpenAI's API; one URL for
        # online and batch mode alike (the SDK alone would send batches elsewhere)
        default = os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL
        self._urls: list[str] = (
            [urls or default] if isinstance(urls, str) or urls is None else list(urls)
        )
        if not self._urls:
            raise ConfigError("openai: base_url is an empty list")
        required = self._urls == [DEFAULT_URL]  # local servers take any key
        self._key = read_api_key(settings.api_key_env, settings.api_key_file, required)
        self.rules = rules_for("openai", settings.model, settings.model_rules)
        self.unparsed_votes = 0
        self._clients: list[JsonClient] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sdk: Any = None  # the SDK client of batch mode
        self._sdk_loop: asyncio.AbstractEventLoop | None = None
        self._inflight = [0] * len(self._urls)
        self._caller = ApiCaller(settings, classify_openai, (self._key,))
        self._prefixes: PrefixTracker | None = None
        if settings.prompt_caching:
            self._prefixes = PrefixTracker(settings.cache_min_tokens or CACHE_MINIMUM)
        self._batches: BatchRunner | None = None
        if settings.batch:
            online = self._online_body if settings.batch_errors == "online" else None
            self._batches = BatchRunner(OpenAIBatches(self), settings, self._caller, online)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "backend": self.backend,
            "model": self.settings.model,
            "base_url": self.settings.base_url or _env_url(self._urls[0]),
            "concurrency": self.settings.concurrency,
        }
        if self.settings.batch:
            described["batch"] = True
        if not self.supports_logprobs:
            described["votes"] = self.settings.votes
        if not self.settings.prompt_caching:
            described["prompt_caching"] = False
        described.update(provenance_of(self.rules))
        return described

    @property
    def supports_logprobs(self) -> bool:
        """False for models that return no log-probs (reasoning models): option scores are then
        sampled votes, and AI feedback runs in votes mode."""
        return self.rules.logprobs

    def _client_index(self) -> int:
        loop = asyncio.get_running_loop()
        if self._clients is None or self._loop is not loop:  # HTTP sessions belong to one loop
            self._loop = loop
            headers = _headers(self._key)
            self._clients = [
                JsonClient(
                    url,
                    headers,
                    self.settings.retry.timeout,
                    limit=max(self.settings.concurrency, 1),
                )
                for url in self._urls
            ]
            # closed when this loop shuts down, if aclose() has not closed them by then
            self._closer = _closed_with_the_loop(self._clients)
            self._closer_task = loop.create_task(anext(self._closer))
        return min(range(len(self._urls)), key=lambda i: self._inflight[i])

    def _batch_client(self) -> Any:
        """The SDK's client for the Batch API (files and batches), for the first server."""
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is not loop:  # its connections belong to one loop
            try:
                from openai import AsyncOpenAI
            except ImportError:
                raise BackendUnavailableError(
                    "batch mode needs the openai package: pip install 'rlaif[api]'"
                ) from None
            self._sdk = AsyncOpenAI(
                api_key=self._key,
                base_url=self._urls[0],
                max_retries=0,
                timeout=self.settings.retry.timeout,
            )
            self._sdk_loop = loop
        return self._sdk

    def _cache_key(self, conversation: Conversation) -> str | None:
        """The routing key of the request's static prefix, when it is long enough to be cached."""
        if self._prefixes is None:
            return None
        found = self._prefixes.cacheable(
            self.settings.model, without_prefill(self.rules, conversation)
        )
        return f"rlaif-{found[1]}" if found else None

    def _chat_body(self, conversation: Conversation, params: GenerateParams) -> dict[str, Any]:
        key = self._cache_key(conversation)
        return chat_body(self.settings.model, conversation, params, self.rules, key)

    def _score_body(self, conversation: Conversation) -> dict[str, Any]:
        top, key = self.settings.top_logprobs, self._cache_key(conversation)
        return score_body(self.settings.model, conversation, top, self.rules, key)

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            nonlocal body
            i = self._client_index()
            self._inflight[i] += 1
            try:
                try:
                    response = await self._clients[i].post("/chat/completions", body)  # type: ignore[index]
                except HttpError as e:
                    if "prompt_cache_key" not in body or not _refuses_cache_key(e):
                        raise
                    # the server takes no prompt_cache_key: this request and every later one
                    # go without it
                    self._prefixes = None
                    body = {k: v for k, v in body.items() if k != "prompt_cache_key"}
                    response = await self._clients[i].post("/chat/completions", body)  # type: ignore[index]
            finally:
                self._inflight[i] -= 1
            _choices(response)  # an answer without choices is retried
            return response

        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        tokens = estimate_tokens(body["messages"]) + limit
        return await self._caller.call(attempt, tokens)

    async def _online_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request online, for batch items sent online after errors: the answer as a body."""
        return await self._create(body)

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        if self._batches is not None:
            bodies = [self._chat_body(c, params) for c in conversations]
            got = await self._batch(bodies)
            return [
                self._batches.answer(  # type: ignore[union-attr]
                    got, custom_id(body), lambda r, c=c: (parse_chat(r, c, params.n), usage_of(r))
                )
                for c, body in zip(conversations, bodies, strict=True)
            ]
        return list(await asyncio.gather(*(self._one(c, params) for c in conversations)))

    async def _one(self, conversation: Conversation, params: GenerateParams) -> list[Completion]:
        response = await self._create(self._chat_body(conversation, params))
        self._caller.record(*usage_of(response))  # billed, even if the answer is unusable
        return parse_chat(response, conversation, params.n)

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float] | Exception]:
        if not self.supports_logprobs:
            return await self._votes(conversations, options)
        top = self.settings.top_logprobs
        if self._batches is not None:
            bodies = [self._score_body(c) for c in conversations]
            got = await self._batch(bodies)
            return [
                self._batches.answer(  # type: ignore[union-attr]
                    got, custom_id(body), lambda r: (parse_scores(r, options, top), usage_of(r))
                )
                for body in bodies
            ]
        return list(await asyncio.gather(*(self._score(c, options) for c in conversations)))

    async def _score(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        top = self.settings.top_logprobs
        response = await self._create(self._score_body(conversation))
        self._caller.record(*usage_of(response))
        return parse_scores(response, options, top)

    async def _votes(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float] | Exception]:
        """Option scores from ``votes`` sampled answers each (the model gives no log-probs)."""
        params = GenerateParams(
            n=self.settings.votes, temperature=1.0, max_tokens=self.settings.vote_max_tokens
        )
        out: list[list[float] | Exception] = []
        for answers in await self.generate(conversations, params):
            if isinstance(answers, Exception):
                out.append(answers)
                continue
            scores, unparsed = vote_shares([a.text for a in answers], options)
            self.unparsed_votes += unparsed
            labels = [option_label(o) for o in options]
            out.append(
                scores
                if scores is not None
                else LabelerCallError(
                    f"unusable answer: none of {len(answers)} votes named an option {labels}",
                    1,
                    False,
                )
            )
        return out

    # ------------------------------------------------------------------ batch mode

    async def _batch(self, bodies: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
        assert self._batches is not None
        return await self._batches.run({custom_id(b): b for b in bodies})

    async def aclose(self) -> None:
        for client in self._clients or []:
            await client.close()
        self._clients = None
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
        if self._batches is not None:
            self._batches.close()


def _refuses_cache_key(e: HttpError) -> bool:
    """A 400 that refuses ``prompt_cache_key`` (vLLM: "Extra inputs are not permitted")."""
    if e.kind != "status" or e.status != 400:
        return False
    said = server_says(e.body, e.text)
    named = refused_parameter(400, e.body, said)
    return named == "prompt_cache_key" or (named is None and "prompt_cache_key" in said)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def classify_openai(exc: BaseException) -> Verdict:
    """Which failures are worth retrying: online requests fail with ``HttpError``, the Batch API
    calls (through the SDK) with the SDK's errors."""
    if isinstance(exc, HttpError | LabelerResponseError):
        return classify_http_error(exc)
    try:
        import openai
    except ImportError:  # no SDK, so no SDK error either
        return classify_http_error(exc)
    return classify_sdk_error(exc, openai)
