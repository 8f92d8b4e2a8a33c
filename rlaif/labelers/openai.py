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

Batch mode (``batch=true``, see ``labelers/batches.py``) sends each stage through the Batch API
at half the price: the JSONL input file carries, per conversation, exactly the body an online
request would send (``chat_body``/``score_body``), and each result body is read by the same
function an online answer is (``parse_chat``/``parse_scores``), so both modes give the same rows
for the same answers. With several ``base_url`` values, batches go to the first.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
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
from rlaif.labelers.batches import (
    BATCH_PRICE_FACTOR,
    BatchRunner,
    BatchSettings,
    BatchState,
    ItemResult,
    custom_id,
)
from rlaif.labelers.reliability import (
    ApiCaller,
    ApiLabelerMixin,
    ApiSettings,
    Verdict,
    classify_sdk_error,
    estimate_tokens,
    read_api_key,
    server_says,
)


class OpenAISettings(ApiSettings, BatchSettings):
    base_url: str | list[str] | None = Field(
        default=None, description="server URL(s), e.g. http://127.0.0.1:8080/v1; default OpenAI"
    )
    top_logprobs: int = Field(default=20, ge=1, le=20)


_BEARER: Any = {"security": {"bearer_auth": True}}  # the request options create() passes


def _aiohttp_client() -> Any:
    """The SDK's aiohttp transport where aiohttp is installed (None: the SDK's httpx default).
    At a few hundred requests a second it costs about a third less CPU per request than httpx's
    connection pool, and that CPU is what limits a client against a fast server."""
    try:
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient()
    except (ImportError, RuntimeError):  # an older SDK, or one without its aiohttp extra
        return None


async def _closed_with_the_loop(clients: list[Any]) -> AsyncIterator[None]:
    """Closes ``clients`` as their event loop shuts down: ``asyncio.run`` finalises the async
    generators still open before it closes the loop. A labeler used under several loops (a judge
    called from synchronous code) or never closed then leaves no open HTTP session behind, which
    aiohttp would report at exit. Closing twice is harmless."""
    try:
        yield
    finally:
        for client in clients:
            await client.close()


# --------------------------------------------------------------------------- bodies and answers
# One builder per request kind and one reader per answer kind, shared by online and batch mode.


def chat_body(model: str, conversation: Conversation, params: GenerateParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": list(conversation),
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def score_body(model: str, conversation: Conversation, top_logprobs: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": list(conversation),
        "max_tokens": 4,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": top_logprobs,
    }


def usage_of(response: Any) -> tuple[int, int]:
    usage = getattr(response, "usage", None)
    return (
        getattr(usage, "prompt_tokens", 0) or 0,
        getattr(usage, "completion_tokens", 0) or 0,
    )


def parse_chat(response: Any, conversation: Conversation, n: int) -> list[Completion]:
    """The ``n`` completions of a chat completion (an SDK object, online or from a batch)."""
    if not getattr(response, "choices", None):
        raise LabelerResponseError("response without choices")
    prompt_tokens, total_completion = usage_of(response)
    choices = sorted(response.choices, key=lambda c: c.index)
    if len(choices) != n:
        raise LabelerResponseError(f"asked for {n} choices, got {len(choices)}")
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


def parse_scores(response: Any, options: Sequence[str], top_logprobs: int) -> list[float]:
    """Each option's log-probability, read from the top log-probs of a short greedy answer."""
    if not getattr(response, "choices", None):
        raise LabelerResponseError("response without choices")
    labels = [option_label(o) for o in options]
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
        f"none of the options {labels} appeared among the top {top_logprobs} tokens"
    )


class OpenAILabeler(ApiLabelerMixin):
    backend: ClassVar[str] = "openai"
    supports_logprobs: ClassVar[bool] = True
    Settings = OpenAISettings
    batch_call_size = 50_000

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
        self._batches: BatchRunner | None = None
        if settings.batch:
            online = self._online_body if settings.batch_errors == "online" else None
            self._batches = BatchRunner(_OpenAIBatches(self), settings, self._caller, online)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "backend": self.backend,
            "model": self.settings.model,
            "base_url": self.settings.base_url,
            "concurrency": self.settings.concurrency,
        }
        if self.settings.batch:
            described["batch"] = True
        return described

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
                    http_client=_aiohttp_client(),
                )
                for url in self._urls
            ]
            # closed when this loop shuts down, if aclose() has not closed them by then
            self._closer = _closed_with_the_loop(self._clients)
            self._closer_task = loop.create_task(anext(self._closer))
        return min(range(len(self._urls)), key=lambda i: self._inflight[i])

    def _batch_client(self) -> Any:
        self._client_index()
        return self._clients[0]  # type: ignore[index]

    async def _create(self, body: dict[str, Any]) -> Any:
        async def attempt() -> Any:
            i = self._client_index()
            self._inflight[i] += 1
            try:
                # the body is plain JSON already: posting it skips create()'s TypedDict
                # transform of every message, which cost more CPU than the rest of a request
                from openai.types.chat import ChatCompletion

                response = await self._clients[i].post(  # type: ignore[index]
                    "/chat/completions", body=body, cast_to=ChatCompletion, options=_BEARER
                )
            finally:
                self._inflight[i] -= 1
            if not getattr(response, "choices", None):
                raise LabelerResponseError("response without choices")
            return response

        tokens = estimate_tokens(body["messages"]) + body.get("max_tokens", 0)
        return await self._caller.call(attempt, tokens)

    async def _online_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request online, for batch items sent online after errors: the answer as a body."""
        return (await self._create(body)).model_dump(mode="json")

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        if self._batches is not None:
            bodies = [chat_body(self.settings.model, c, params) for c in conversations]
            got = await self._batch(bodies)
            return [
                self._from_batch(got, body, lambda r, c=c: parse_chat(r, c, params.n))
                for c, body in zip(conversations, bodies, strict=True)
            ]
        return list(await asyncio.gather(*(self._one(c, params) for c in conversations)))

    async def _one(self, conversation: Conversation, params: GenerateParams) -> list[Completion]:
        response = await self._create(chat_body(self.settings.model, conversation, params))
        completions = parse_chat(response, conversation, params.n)
        self._caller.record(*usage_of(response))
        return completions

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        top = self.settings.top_logprobs
        if self._batches is not None:
            bodies = [score_body(self.settings.model, c, top) for c in conversations]
            got = await self._batch(bodies)
            return [
                self._from_batch(got, body, lambda r: parse_scores(r, options, top))
                for body in bodies
            ]
        return list(await asyncio.gather(*(self._score(c, options) for c in conversations)))

    async def _score(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        top = self.settings.top_logprobs
        response = await self._create(score_body(self.settings.model, conversation, top))
        self._caller.record(*usage_of(response))
        return parse_scores(response, options, top)

    # ------------------------------------------------------------------ batch mode

    async def _batch(self, bodies: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
        assert self._batches is not None
        return await self._batches.run({custom_id(b): b for b in bodies})

    def _from_batch(self, got: tuple[dict[str, Any], set[str]], body: dict[str, Any], read: Any):
        """One conversation's answer from the batch results, or the exception that fails it."""
        from openai.types.chat import ChatCompletion

        answers, online = got
        cid = custom_id(body)
        answer = answers[cid]
        if isinstance(answer, Exception):
            return answer
        try:
            response = ChatCompletion.model_validate(answer)
            result = read(response)
        except (LabelerResponseError, ValueError) as e:
            return self._batches.failure(f"unusable answer: {e}", 1, False)  # type: ignore[union-attr]
        factor = 1.0 if cid in online else BATCH_PRICE_FACTOR
        self._caller.record(*usage_of(response), price_factor=factor)
        return result

    async def aclose(self) -> None:
        for client in self._clients or []:
            await client.close()
        self._clients = None
        if self._batches is not None:
            self._batches.close()


class _OpenAIBatches:
    """The Batch API: a JSONL input file, a batch over it, output and error files."""

    name = "openai"
    max_items = 50_000
    max_bytes = 190 * 1024 * 1024  # the limit is 200 MB per input file; keep a margin
    url = "/v1/chat/completions"

    def __init__(self, labeler: OpenAILabeler):
        self.labeler = labeler
        self.endpoint = (
            f"{labeler._urls[0] or 'https://api.openai.com/v1'} {labeler.settings.model}"
        )

    def _line(self, cid: str, body: dict[str, Any]) -> str:
        line = {"custom_id": cid, "method": "POST", "url": self.url, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))

    def item_size(self, cid: str, body: dict[str, Any]) -> int:
        return len(self._line(cid, body).encode("utf-8")) + 1

    async def prepare(self, items: list[tuple[str, dict[str, Any]]]) -> str:
        data = "".join(self._line(cid, body) + "\n" for cid, body in items).encode("utf-8")
        client = self.labeler._batch_client()
        uploaded = await client.files.create(
            file=("rlaif-batch.jsonl", data, "application/jsonl"), purpose="batch"
        )
        return uploaded.id

    async def create(self, file_id: str) -> tuple[str, str]:
        client = self.labeler._batch_client()
        batch = await client.batches.create(
            input_file_id=file_id, endpoint=self.url, completion_window="24h"
        )
        return batch.id, batch.status

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.labeler._batch_client().batches.retrieve(batch_id)
        counts = batch.request_counts
        found = (
            {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts is not None
            else {}
        )
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        said = "; ".join(server_says(e.model_dump(exclude_none=True)) for e in errors)
        return BatchState(
            status=batch.status,
            done=batch.status in ("completed", "expired", "cancelled"),
            dead=batch.status == "failed",
            counts=found,
            error=f"batch failed: {said}" if said else "",
        )

    async def results(self, batch_id: str) -> dict[str, ItemResult]:
        client = self.labeler._batch_client()
        batch = await client.batches.retrieve(batch_id)
        found: dict[str, ItemResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    record = json.loads(line)
                    found[record["custom_id"]] = _item_result(record)
        return found


def _item_result(record: dict[str, Any]) -> ItemResult:
    """One line of an output or error file."""
    response = record.get("response") or {}
    status = response.get("status_code")
    if status == 200 and isinstance(response.get("body"), dict):
        return ItemResult(response["body"])
    error = record.get("error")
    if error:  # the batch could not run the request (batch_expired, ...)
        code = error.get("code") or ""
        return ItemResult(None, server_says(error), code in ("batch_expired", "batch_cancelled"))
    body = response.get("body")
    said = server_says(body.get("error", body) if isinstance(body, dict) else body)
    retryable = status is None or status in (408, 409, 429) or status >= 500
    return ItemResult(None, f"HTTP {status}: {said}", retryable)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def classify_openai(exc: BaseException) -> Verdict:
    """Which failures of the openai SDK are worth retrying."""
    import openai

    return classify_sdk_error(exc, openai)
