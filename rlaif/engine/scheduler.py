"""The one scheduler every labeler request goes through: cache first, then batches.

Pipeline steps process each row as its own coroutine and ask for one conversation at a time
(``await scheduler.generate(messages, params)``). The scheduler answers from the cache when it
can; otherwise it queues the request. A single worker drains the queue into batches of up to
``max_batch`` conversations with identical sampling parameters, and keeps up to
``max_concurrency`` batches in flight:

- local backends (``max_batch_size`` > 1, ``max_concurrency`` = 1): while one batch computes,
  requests from every row pile up (first answers of new rows, critiques and revisions of older
  ones), and the next batch takes them all: rows at different stages share a batch;
- API backends (``max_batch_size`` = 1, ``max_concurrency`` = N): N single requests in flight.

The scheduler knows backends only through these two numbers of the ``Labeler`` protocol and
``prefers_whole_stages``: a backend whose calls are slow but cheap per conversation (a provider's
batch API, where a job takes minutes to hours) wants each stage at once, so before cutting a batch
the scheduler waits until the queue has stopped growing for ``settle`` seconds (every row in
flight is then waiting on the scheduler), and one call carries the whole stage. Two identical
requests in flight at once (the same conversation, parameters and samples) are sent only once. A
request whose first samples are cached (``n`` raised since the last run) asks only for the rest.

Every way a call can end reaches the rows that asked: an answer, the call's error, or, when the
answer cannot be read (``LabelerResponseError``: no option label among the top log-probs, fewer
choices than asked), a failed row like any failed call. What comes after the call (the cache's
writes, handing out the answers) is guarded too: if it fails, the rows get that error and the run
stops with it, instead of waiting forever for answers that will never be handed out.

After a permanent failure (``LabelerCallError.permanent``: a rejected key, an unknown model or
URL, nothing listening) nothing more is sent: queued and new requests fail with the same error at
once, so a dead endpoint costs the calls already in flight and no more while the run stops.

Option scoring (``await scheduler.option_logprobs(messages, options)``, the soft labels of
RL-CAI) goes through the same queue, cache and batching; requests are grouped by what they ask
for (generation with given parameters, or scores of given options), since a backend call answers
one kind at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlaif.engine.cache import Cache, request_key
from rlaif.errors import EngineError, LabelerCallError, LabelerResponseError, RlaifError
from rlaif.labelers.base import Completion, Conversation, GenerateParams, Labeler, Usage


@dataclass
class EngineStats:
    """Counters shared by the schedulers of one run (shown in the progress bar and summary)."""

    requests: int = 0
    cache_hits: int = 0
    labeler_calls: int = 0
    generated_tokens: int = 0  # completion tokens produced by the labeler in this run
    total_tokens: int = 0  # prompt + completion tokens of every answer, cached or not
    labeler_seconds: float = 0.0
    retries: int = 0  # calls the labelers retried (429, 5xx, timeouts, garbage)
    failed_rows: int = 0  # rows given up after the last retry
    cost: float | None = None  # by the labelers' price tables; None when none is priced
    # tokens the API labelers were billed for in this run (input with its cached reads and
    # cache writes, output); None when no labeler reports usage (local models)
    usage: Usage | None = None


# what a queued request asks for: ("generate", params) or ("options", options)
_Group = tuple[str, Any]


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    keys: list[str]
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Scheduler:
    def __init__(
        self,
        labeler: Labeler,
        cache: Cache,
        stats: EngineStats | None = None,
        max_batch: int | None = None,
        max_concurrency: int | None = None,
        settle: float = 0.2,
    ):
        self.labeler = labeler
        self.cache = cache
        self.stats = stats or EngineStats()
        self.max_batch = max_batch or labeler.max_batch_size
        self.max_concurrency = max_concurrency or labeler.max_concurrency
        self.whole_stages = bool(getattr(labeler, "prefers_whole_stages", False))
        self.settle = settle
        self._queues: OrderedDict[_Group, list[_Pending]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dead: LabelerCallError | None = None  # the endpoint failed permanently
        self._params_payload: dict[GenerateParams, dict[str, Any]] = {}
        self.budget: Any = None  # engine.budget.Budget: max_cost, checked before every call
        self.prices: Any = None  # the labeler's prices, for the budget's estimate of a call

    # ------------------------------------------------------------------ public

    def keys_for(self, messages: Conversation, params: GenerateParams) -> list[str]:
        payload = self._params_payload.get(params)
        if payload is None:  # a run uses a handful of parameter sets: dump each once
            payload = self._params_payload[params] = params.model_dump(mode="json", exclude={"n"})
        return [
            request_key(
                "generate",
                self.labeler.backend,
                self.labeler.model_name,
                {"messages": list(messages), "params": payload, "sample": i},
            )
            for i in range(params.n)
        ]

    def option_key(self, messages: Conversation, options: Sequence[str]) -> str:
        return request_key(
            "options",
            self.labeler.backend,
            self.labeler.model_name,
            {"messages": list(messages), "options": list(options)},
        )

    async def generate(self, messages: Conversation, params: GenerateParams) -> list[Completion]:
        """``params.n`` completions for one conversation, from the cache or the labeler. Samples
        already cached (``n`` was raised since) are kept; only the missing ones are asked for."""
        self.stats.requests += 1
        keys = self.keys_for(messages, params)
        hits = self.cache.get_many(keys)
        if len(hits) == len(keys):
            self.stats.cache_hits += 1
            done = [_completion(hits[k]) for k in keys]
            self.stats.total_tokens += sum(c.prompt_tokens + c.completion_tokens for c in done)
            return done
        if not hits:
            return await self._enqueue(("generate", params), messages, keys)
        missing = [i for i, k in enumerate(keys) if k not in hits]
        asked = _more_samples(params, len(missing), missing[0])
        fresh = iter(await self._enqueue(("generate", asked), messages, [keys[i] for i in missing]))
        return [_completion(hits[k]) if k in hits else next(fresh) for k in keys]

    async def option_logprobs(self, messages: Conversation, options: Sequence[str]) -> list[float]:
        """The log-probability of each option as the continuation of one conversation."""
        self.stats.requests += 1
        key = self.option_key(messages, options)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return [float(x) for x in hit["logprobs"]]
        return await self._enqueue(("options", tuple(options)), messages, [key])

    async def _enqueue(self, group: _Group, messages: Conversation, keys: list[str]) -> Any:
        if self._dead is not None:
            raise self._dead
        # every key: two requests that differ only in how many samples they ask for differ here
        ident = keys[0] if len(keys) == 1 else "|".join(keys)
        if ident in self._inflight:  # the same request is already on its way
            return await asyncio.shield(self._inflight[ident])
        self._start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # a row that stopped waiting (the run is stopping) leaves its error unread: mark it read
        future.add_done_callback(_mark_retrieved)
        self._inflight[ident] = future
        self._queues.setdefault(group, []).append(_Pending(list(messages), keys, future))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await asyncio.shield(future)
        finally:
            self._inflight.pop(ident, None)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.cache.commit()  # answers are group-committed: none may wait for a loop that ends

    # ------------------------------------------------------------------ worker

    def _start(self) -> None:
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrency)
            self._worker = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queues:
                await self._slots.acquire()
                if self._dead is not None:  # send nothing more to a dead endpoint
                    self._fail_queued(self._dead)
                    self._slots.release()
                    break
                # give every row that is ready a chance to enqueue before the batch is cut
                for _ in range(3):
                    await asyncio.sleep(0)
                if self.whole_stages:
                    await self._settled()
                if not self._queues:
                    self._slots.release()
                    break
                group, batch = self._take_batch()
                task = asyncio.create_task(self._dispatch(group, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _settled(self) -> None:
        """Wait until no request has joined the queue for ``self.settle`` seconds."""
        quiet_since, seen = time.perf_counter(), -1
        while True:
            queued = sum(len(q) for q in self._queues.values())
            now = time.perf_counter()
            if queued != seen:
                quiet_since, seen = now, queued
            elif now - quiet_since >= self.settle:
                return
            await asyncio.sleep(min(0.02, self.settle / 5) if self.settle else 0)

    def _fail_queued(self, error: Exception) -> None:
        for queue in self._queues.values():
            for p in queue:
                if not p.future.done():
                    p.future.set_exception(error)
        self._queues.clear()

    def _take_batch(self) -> tuple[_Group, list[_Pending]]:
        # the group holding the oldest request goes first
        group = min(self._queues, key=lambda g: self._queues[g][0].enqueued)
        queue = self._queues[group]
        batch, rest = queue[: self.max_batch], queue[self.max_batch :]
        if rest:
            self._queues[group] = rest
        else:
            del self._queues[group]
        return group, batch

    async def _dispatch(self, group: _Group, batch: list[_Pending]) -> None:
        assert self._slots is not None
        started = time.perf_counter()
        kind, what = group
        conversations = [p.messages for p in batch]
        estimate, reserved = 0.0, False
        try:
            if self.budget is not None:  # max_cost: refused calls fail their rows, and the run
                estimate = self._estimate(kind, what, conversations)  # stops (engine/budget.py)
                self.budget.reserve(estimate)
                reserved = True
            self.stats.labeler_calls += 1
            if kind == "options":
                results = await self.labeler.option_logprobs(conversations, list(what))
            else:
                results = await self.labeler.generate(conversations, what)
        except asyncio.CancelledError:
            for p in batch:
                p.future.cancel()
            raise
        except Exception as e:  # every waiting row gets the error; the worker keeps going
            e = _row_error(e)
            if isinstance(e, LabelerCallError) and e.permanent and self._dead is None:
                self._dead = e
            _fail(batch, e)
            return
        finally:
            self._slots.release()
            if reserved:
                self.budget.release(estimate)
        try:
            self._finish(kind, batch, results, time.perf_counter() - started)
        except Exception as e:
            # storing or handing out the answers failed (the cache's disk, a backend that
            # answered the wrong number of conversations): the rows must hear of it, or the run
            # would wait for them forever
            if not isinstance(e, RlaifError):
                e = EngineError(f"labeler answers could not be handed out: {type(e).__name__}: {e}")
            _fail(batch, e)

    def _estimate(self, kind: str, what: Any, conversations: list[Any]) -> float:
        from rlaif.engine.budget import call_estimate

        if self.prices is None:  # a labeler that bills nothing
            return 0.0
        if kind == "options":
            return call_estimate(self.prices, conversations)
        return call_estimate(self.prices, conversations, what.n, what.max_tokens)

    def _finish(self, kind: str, batch: list[_Pending], results: list[Any], seconds: float) -> None:
        if len(results) != len(batch):
            raise EngineError(
                f"the labeler answered {len(results)} of {len(batch)} conversations in one call"
            )
        results = [_row_error(r) if isinstance(r, Exception) else r for r in results]
        self.stats.labeler_seconds += seconds
        if kind == "options":
            self._finish_options(batch, results, seconds)
            return
        entries = []
        for p, samples in zip(batch, results, strict=True):
            if isinstance(samples, Exception):  # this conversation alone failed
                continue
            if len(samples) != len(p.keys):
                raise EngineError(
                    f"asked for {len(p.keys)} samples, the labeler gave {len(samples)}"
                )
            for key, c in zip(p.keys, samples, strict=True):
                entries.append((key, {**_as_dict(c), "seconds": round(seconds, 4)}))
                self.stats.generated_tokens += c.completion_tokens
                self.stats.total_tokens += c.prompt_tokens + c.completion_tokens
        self.cache.put_many("generate", entries)
        _settle(batch, results)

    def _finish_options(
        self, batch: list[_Pending], results: list[list[float]], seconds: float
    ) -> None:
        entries = [
            (p.keys[0], {"logprobs": [float(x) for x in scores], "seconds": round(seconds, 4)})
            for p, scores in zip(batch, results, strict=True)
            if not isinstance(scores, Exception)
        ]
        self.cache.put_many("options", entries)
        _settle(batch, [r if isinstance(r, Exception) else [float(x) for x in r] for r in results])


def _more_samples(params: GenerateParams, n: int, first: int) -> GenerateParams:
    """Parameters for ``n`` more samples after the cached ones: with a seed, a seed moved by
    the index of the first missing sample, so the new samples are not the cached ones again."""
    seed = None if params.seed is None else params.seed + first
    return params.model_copy(update={"n": n, "seed": seed})


def _row_error(e: Exception) -> Exception:
    """A labeler's answer that could not be read (no option label among the top log-probs,
    fewer choices than asked, no vote naming an option) fails the rows that asked, like any
    failed call; it is not an input error that stops the run."""
    if isinstance(e, LabelerResponseError):
        return LabelerCallError(f"unusable answer: {e}", 1, retryable=False)
    return e


def _fail(batch: list[_Pending], error: Exception) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(error)


def _settle(batch: list[_Pending], results: list[Any]) -> None:
    """Hand each row its result; a result that is an exception fails that row only (a provider
    batch answers many conversations in one call, and some of them may fail)."""
    for p, result in zip(batch, results, strict=True):
        if p.future.done():
            continue
        if isinstance(result, Exception):
            p.future.set_exception(result)
        else:
            p.future.set_result(result)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _as_dict(c: Completion) -> dict[str, Any]:
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
    }


def _completion(d: dict[str, Any]) -> Completion:
    return Completion(d["text"], d["finish_reason"], d["prompt_tokens"], d["completion_tokens"])
