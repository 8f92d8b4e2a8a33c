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

Batch mode (``batch=true``, see ``labelers/batches.py``) sends each stage as a Message Batch at
half the price: one item per sample (``n`` samples, or ``votes`` votes, are that many items, told
apart by the sample index in their custom ids), each carrying exactly the body an online request
sends (``message_body``), and each result read by the function that reads an online answer
(``parse_message``), so both modes give the same rows for the same answers.

Prompt caching (setting ``prompt_caching``, on by default): a ``cache_control`` breakpoint goes on
the last message of a request's static prefix (every message before the final person's turn:
system, few-shot turns; see ``labelers/caching.py``), once that prefix is long enough for the
model to cache (``CACHE_MINIMUM``, or the setting ``cache_min_tokens``) and has been sent before.
One breakpoint per request, of the four the API allows. The response's
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are added back to its
``input_tokens`` (which excludes them), so ``prompt_tokens`` is every input token, and counted
apart for pricing. A server that refuses ``cache_control`` (a 400 naming it) gets the request
again without it, and no breakpoint for the rest of the run.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError, LabelerResponseError
from rlaif.labelers.base import (
    Completion,
    Conversation,
    GenerateParams,
    option_label,
    strip_prefill,
    vote_shares,
)
from rlaif.labelers.batches import (
    FIND_WINDOW,
    BatchRunner,
    BatchSettings,
    BatchState,
    ItemResult,
    custom_id,
    upload_timeout,
)
from rlaif.labelers.caching import PrefixTracker, without_cache_hints
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


class AnthropicSettings(ApiSettings, BatchSettings):
    base_url: str | None = Field(default=None, description="default: Anthropic's API")
    api_key_env: str = "ANTHROPIC_API_KEY"
    concurrency: int = Field(default=16, ge=1)
    votes: int = Field(default=8, ge=1, description="samples per comparison for option scoring")


DEFAULT_RULES = ModelRules()

# the shortest prefix each model caches (Anthropic's prompt caching documentation, early 2026);
# the first match wins. Marking a shorter prefix costs nothing (it is just not cached), so an
# unknown model gets the smallest current value.
CACHE_MINIMUM: tuple[tuple[str, int], ...] = (
    (r"claude-(opus-4-[56]|haiku-4-5)(-|$)", 4096),
    (r"claude-(3-5-haiku|3-haiku|haiku-3)", 2048),
    (r"", 1024),
)


def cache_minimum(model: str) -> int:
    return next(n for pattern, n in CACHE_MINIMUM if re.match(pattern, model))


def split_system(conversation: Conversation) -> tuple[str | None, list[dict[str, str]]]:
    messages = [dict(m) for m in conversation]
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


# --------------------------------------------------------------------------- bodies and answers
# One builder and one reader, shared by online and batch mode.

# what ``messages.create`` takes as arguments; the rest of a body travels in ``extra_body``
_ARGUMENTS = ("model", "messages", "max_tokens", "system", "stop_sequences")


def message_body(
    model: str,
    conversation: Conversation,
    params: GenerateParams,
    rules: ModelRules = DEFAULT_RULES,
    cache_prefix: int | None = None,
) -> dict[str, Any]:
    """The request body; with ``cache_prefix``, a cache breakpoint after that many leading
    messages (of those sent: the system message counts as the first)."""
    sent = without_prefill(rules, conversation)
    if cache_prefix:
        sent = _with_breakpoint(sent, cache_prefix)
    system, messages = split_system(sent)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        **token_limit(rules, params.max_tokens),
        **sampling(rules, params.temperature, params.top_p),
    }
    if system is not None:
        body["system"] = system
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def _with_breakpoint(messages: list[dict[str, Any]], end: int) -> list[dict[str, Any]]:
    """``messages`` with the ``end``-th one's text as a block carrying ``cache_control``."""
    out = list(messages)
    last = out[end - 1]
    block = {"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}
    out[end - 1] = {**last, "content": [block]}
    return out


def plain_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The body's system and messages as plain messages, for the token estimate."""
    plain = without_cache_hints(body)
    system = [{"role": "system", "content": plain["system"]}] if "system" in plain else []
    return system + plain["messages"]


# stop reasons that are not an ordinary end of turn, in rlaif's words
_FINISH: dict[Any, Any] = {"max_tokens": "length", "refusal": "refusal", "tool_use": "tool_calls"}


def parse_message(response: Any, conversation: Conversation) -> Completion:
    """One completion from a Message (an SDK object, online or from a batch)."""
    if not isinstance(getattr(response, "content", None), list):
        raise LabelerResponseError("response without content")
    text = "".join(getattr(b, "text", "") for b in response.content)
    prompt_tokens, completion_tokens, _, _ = usage_of(response)
    return Completion(
        text=strip_prefill(text, conversation),
        finish_reason=_FINISH.get(response.stop_reason, "stop"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def usage_of(response: Any) -> tuple[int, int, int, int]:
    """(every input token, output tokens, cache reads, cache writes): Anthropic's
    ``input_tokens`` leaves out the tokens read from or written to the cache, so they are added
    back."""
    usage = getattr(response, "usage", None)
    read = getattr(usage, "cache_read_input_tokens", 0) or 0
    written = getattr(usage, "cache_creation_input_tokens", 0) or 0
    uncached = getattr(usage, "input_tokens", 0) or 0
    return uncached + read + written, getattr(usage, "output_tokens", 0) or 0, read, written


def vote_params(settings: AnthropicSettings) -> GenerateParams:
    return GenerateParams(n=settings.votes, temperature=1.0, max_tokens=settings.vote_max_tokens)


class AnthropicLabeler(ApiLabelerMixin):
    backend: ClassVar[str] = "anthropic"
    supports_logprobs: ClassVar[bool] = False
    prompt_billed_per_sample: ClassVar[bool] = True  # a request per sample (no ``n``)
    Settings = AnthropicSettings
    batch_call_size = 100_000

    @staticmethod
    def cached_prefix_tokens(settings: AnthropicSettings, prefix: int) -> int:
        """Of a static prefix of ``prefix`` tokens, what a breakpoint caches (for estimates):
        all of it from the model's minimum on, where prompt caching is on."""
        if not settings.prompt_caching:
            return 0
        return (
            prefix if prefix >= (settings.cache_min_tokens or cache_minimum(settings.model)) else 0
        )

    def __init__(self, settings: AnthropicSettings):
        self.settings = settings
        self._key = read_api_key(
            settings.api_key_env, settings.api_key_file, settings.base_url is None
        )
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rules = rules_for("anthropic", settings.model, settings.model_rules)
        self._caller = ApiCaller(settings, classify_anthropic, (self._key,))
        self.unparsed_votes = 0
        self._prefixes: PrefixTracker | None = None
        if settings.prompt_caching:
            minimum = settings.cache_min_tokens or cache_minimum(settings.model)
            self._prefixes = PrefixTracker(minimum)
        self._batches: BatchRunner | None = None
        if settings.batch:
            online = self._online_body if settings.batch_errors == "online" else None
            self._batches = BatchRunner(_AnthropicBatches(self), settings, self._caller, online)

    def _body(
        self,
        conversation: Conversation,
        params: GenerateParams,
        repeats: Counter[str] | None = None,
    ) -> dict[str, Any]:
        """The request body, with a cache breakpoint where ``PrefixTracker`` says it pays
        (``repeats``: how often each prefix occurs among the requests going out together)."""
        mark = None
        if self._prefixes is not None:
            found = self._prefixes.cacheable(
                self.settings.model, without_prefill(self.rules, conversation)
            )
            if found and self._prefixes.mark(found[1], (repeats or {}).get(found[1], 1)):
                mark = found[0]
        return message_body(self.settings.model, conversation, params, self.rules, mark)

    def _prefix_key(self, conversation: Conversation) -> str | None:
        if self._prefixes is None:
            return None
        found = self._prefixes.cacheable(
            self.settings.model, without_prefill(self.rules, conversation)
        )
        return found[1] if found else None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "backend": self.backend,
            "model": self.settings.model,
            "base_url": self.settings.base_url,
            "votes": self.settings.votes,
        }
        if self.settings.batch:
            described["batch"] = True
        if not self.settings.prompt_caching:
            described["prompt_caching"] = False
        described.update(provenance_of(self.rules))
        return described

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

    async def _create(self, body: dict[str, Any]) -> Any:
        arguments = {k: v for k, v in body.items() if k in _ARGUMENTS}
        extra = {k: v for k, v in body.items() if k not in _ARGUMENTS}

        async def attempt() -> Any:
            nonlocal arguments, extra
            try:
                response = await self._get_client().messages.create(**arguments, extra_body=extra)
            except Exception as e:
                if not self._refuses_caching(e):
                    raise
                # the server takes no cache breakpoints: send this request, and every later
                # one, without them
                self._prefixes = None
                plain = without_cache_hints(body)
                arguments = {k: v for k, v in plain.items() if k in _ARGUMENTS}
                extra = {k: v for k, v in plain.items() if k not in _ARGUMENTS}
                response = await self._get_client().messages.create(**arguments, extra_body=extra)
            if not isinstance(getattr(response, "content", None), list):
                raise LabelerResponseError("response without content")
            return response

        tokens = estimate_tokens(plain_messages(body)) + body.get("max_tokens", 0)
        return await self._caller.call(attempt, tokens)

    @staticmethod
    def _refuses_caching(exc: Exception) -> bool:
        if getattr(exc, "status_code", None) != 400:
            return False
        said = str(getattr(exc, "message", "") or exc)
        named = refused_parameter(400, getattr(exc, "body", None), said)
        return named == "cache_control" or (named is None and "cache_control" in said)

    async def _online_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request online, for batch items sent online after errors: the answer as a body."""
        return (await self._create(body)).model_dump(mode="json")

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion] | Exception]:
        if self._batches is not None:
            return await self._batch_samples(conversations, params)
        return list(await asyncio.gather(*(self._samples(c, params) for c in conversations)))

    async def _samples(
        self, conversation: Conversation, params: GenerateParams
    ) -> list[Completion]:
        # one body for the n requests: they go out together, so they are one sighting of the
        # prefix (n - 1 of them marked would each pay a cache write that none of them can read)
        body = self._body(conversation, params)
        return list(await asyncio.gather(*(self._one(conversation, body) for _ in range(params.n))))

    async def _one(self, conversation: Conversation, body: dict[str, Any]) -> Completion:
        response = await self._create(body)
        self._caller.record(*usage_of(response))
        return parse_message(response, conversation)

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float] | Exception]:
        if self._batches is not None:
            votes = await self._batch_samples(conversations, vote_params(self.settings))
            return [
                v if isinstance(v, Exception) else self._count(v, options, failure=True)
                for v in votes
            ]
        return list(await asyncio.gather(*(self._vote(c, options) for c in conversations)))

    async def _vote(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        answers = await self._samples(conversation, vote_params(self.settings))
        return self._count(answers, options)  # type: ignore[return-value]

    def _count(
        self, answers: list[Completion], options: Sequence[str], failure: bool = False
    ) -> list[float] | Exception:
        """Vote shares as log-probabilities; with ``failure``, no votes is a returned error."""
        scores, unparsed = vote_shares([a.text for a in answers], options)
        self.unparsed_votes += unparsed
        if scores is None:
            labels = [option_label(o) for o in options]
            message = f"none of {len(answers)} votes named an option {labels}"
            if failure:
                return self._batches.failure(f"unusable answer: {message}", 1, False)  # type: ignore[union-attr]
            raise LabelerResponseError(message)
        return scores

    # ------------------------------------------------------------------ batch mode

    async def _batch_samples(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion] | Exception]:
        """Every sample of every conversation as one batch item; a conversation with a failed
        sample fails as a whole."""
        from anthropic.types import Message

        assert self._batches is not None
        keys = [self._prefix_key(c) for c in conversations]
        repeats = Counter(k for k in keys for _ in range(params.n) if k is not None)
        bodies = [self._body(c, params, repeats) for c in conversations]
        items = {custom_id(b, i): b for b in bodies for i in range(params.n)}
        got = await self._batches.run(items)

        def read(conversation: Conversation) -> Any:
            def completion(body: dict[str, Any]) -> tuple[Completion, tuple[int, ...]]:
                response = Message.model_validate(body)
                return parse_message(response, conversation), usage_of(response)

            return completion

        out: list[list[Completion] | Exception] = []
        for conversation, body in zip(conversations, bodies, strict=True):
            samples = [
                self._batches.answer(got, custom_id(body, i), read(conversation))
                for i in range(params.n)
            ]
            failed = next((s for s in samples if isinstance(s, Exception)), None)
            out.append(failed if failed is not None else samples)  # type: ignore[arg-type]
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._batches is not None:
            self._batches.close()


class _AnthropicBatches:
    """Message Batches: requests in the create call, results as JSONL when the batch ended."""

    name = "anthropic"
    max_items = 100_000
    max_bytes = 250 * 1024 * 1024  # the limit is 256 MB per create request; keep a margin

    def __init__(self, labeler: AnthropicLabeler):
        self.labeler = labeler
        url = labeler.settings.base_url or "https://api.anthropic.com"
        self.endpoint = f"{url} {labeler.settings.model}"

    def item_size(self, cid: str, body: dict[str, Any]) -> int:
        item = {"custom_id": cid, "params": body}
        return len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()) + 1

    async def prepare(
        self, items: list[tuple[str, dict[str, Any]]]
    ) -> tuple[list[dict[str, Any]], int]:
        size = sum(self.item_size(cid, body) for cid, body in items)
        return [{"custom_id": cid, "params": body} for cid, body in items], size

    async def create(self, prepared: tuple[list[dict[str, Any]], int], key: str) -> tuple[str, str]:
        # Message Batches keep no metadata: a batch whose create call failed is found by its
        # size and time instead (``find``)
        requests, size = prepared
        timeout = upload_timeout(size, self.labeler.settings.retry.timeout)
        batch = await self.labeler._get_client().messages.batches.create(
            requests=requests, timeout=timeout
        )
        return batch.id, batch.processing_status

    async def find(self, key: str, items: int, since: float) -> list[tuple[str, str]]:
        """Batches of ``items`` requests created from a little before ``since`` on."""
        found = []
        async for batch in self.labeler._get_client().messages.batches.list(limit=100):
            created = batch.created_at.timestamp()
            if created < since - FIND_WINDOW:
                break
            c = batch.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if total == items:
                found.append((batch.id, batch.processing_status))
        return found

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.labeler._get_client().messages.batches.retrieve(batch_id)
        counts = batch.request_counts
        found = {
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        }
        return BatchState(batch.processing_status, batch.processing_status == "ended", False, found)

    async def results(self, batch_id: str) -> dict[str, ItemResult]:
        found: dict[str, ItemResult] = {}
        decoder = await self.labeler._get_client().messages.batches.results(batch_id)
        async for line in decoder:
            found[line.custom_id] = _item_result(line.result.model_dump(mode="json"))
        return found


def _item_result(result: dict[str, Any]) -> ItemResult:
    kind = result.get("type")
    if kind == "succeeded":
        return ItemResult(result["message"])
    if kind == "errored":
        error = result.get("error") or {}
        inner = error.get("error", error) if isinstance(error, dict) else error
        kind_of = inner.get("type", "") if isinstance(inner, dict) else ""
        retryable = kind_of in ("api_error", "overloaded_error", "rate_limit_error", "")
        return ItemResult(None, server_says(inner), retryable)
    return ItemResult(None, f"the item was {kind}", True)  # expired or canceled


def classify_anthropic(exc: BaseException) -> Verdict:
    import anthropic

    return classify_sdk_error(exc, anthropic, transient_status=(408, 409, 429, 529))
