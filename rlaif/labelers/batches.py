"""Provider batch APIs (OpenAI Batch API, Anthropic Message Batches): half the price, hours late.

A provider batch is a job: requests go in as one upload, the provider answers within a day, and
each item is billed at about half the online price. The engine sees none of this: a backend in
batch mode says ``prefers_whole_stages``, the scheduler hands it a whole stage in one call, and
the backend turns that call into one or more provider batches through ``BatchRunner`` and
returns one result per conversation, as online.

What this module owns, shared by both backends (each backend supplies a ``BatchProvider`` that
speaks its API):

- **Custom ids from content.** An item's ``custom_id`` is a hash of its canonical request body
  plus a sample index (``custom_id``), so the same request always has the same id, identical items
  in one call are sent once, and ids fit Anthropic's ``^[a-zA-Z0-9_-]{1,64}$``. Prompt cache hints
  (a ``cache_control`` breakpoint, a ``prompt_cache_key``) are left out of the hash: they depend
  on what the process sent before, and the same request must keep its id on a rerun. Items carry
  the hints as online requests do, and both providers bill cached tokens in a batch at the batch
  price.
- **Money is never spent twice.** A batch's id, and the custom ids of the items it carries, go into
  a small SQLite ledger (``labelers/batch_ledger.py``: ``batches.sqlite`` in ``state_dir``, the
  run's output folder) and are committed right after the create call returns, before the first
  poll. Before submitting anything, the runner looks its items up there: items that a live batch of
  the same provider and endpoint already carries are collected from that batch (re-attached), and
  only the rest go out in new batches. A killed run asks for the same pending requests again on the
  rerun (nothing of them reached the cache), so it pays nothing twice, however the rerun's stage is
  cut into calls. A batch that ended failed, expired or cancelled is not re-attached. Without a
  ``state_dir`` the ledger lives in memory and protects only the running process. Each batch row
  also has a job key (a hash of the provider, the endpoint and its sorted custom ids).
- **Splitting** at the providers' limits (items and bytes per batch); the parts go out at once.
- **Errored and expired items** are resubmitted in a new batch (``batch_errors="resubmit"``) or
  sent online (``"online"``), as often as the retry settings allow; an item that still fails, or
  fails in a way a retry cannot fix (an invalid request), becomes a ``LabelerCallError`` for its
  conversation only, with the provider's message (keys redacted) as the reason.
- **Creating a batch is retried only when it surely did not happen** (429, 529, no connection at
  all): a timeout or a 500 after the upload may have created a batch that is paid for, and
  submitting again would pay twice. So every creation is written to the ledger before the call
  (``attempts``), and OpenAI batches carry their job key in ``metadata``; when the call fails,
  and again on a rerun while the attempt is unconfirmed, the runner lists the provider's recent
  batches and collects the one that the attempt made (by its key; for Anthropic, whose batches
  keep no metadata, the one batch of the same size created since, if exactly one). Uploads get a
  timeout sized to their bytes. Polls and downloads are retried as usual.
- **A rerun retries what failed.** When a batch answers an item with an error, the ledger stops
  counting that batch as carrying it, so a rerun submits the item again instead of re-reading the
  old error. When a round is followed by another (resubmitted items), the answers it did get are
  kept in the ledger at once: a kill during the later round, which may last hours, loses none of
  what was paid for, and the rerun submits only the items that never completed.
- **Progress**: one log line per submission, status change (with the request counts) and
  completion on the ``rlaif.batches`` logger; never the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rlaif.errors import LabelerCallError, LabelerResponseError
from rlaif.labelers.batch_ledger import LEDGER_FILE, BatchLedger
from rlaif.labelers.caching import without_cache_hints
from rlaif.labelers.reliability import ApiCaller, Verdict, redact, with_retries

log = logging.getLogger("rlaif.batches")

T = TypeVar("T")

BATCH_PRICE_FACTOR = 0.5  # both providers bill batch items at half the online price
JOB_METADATA = "rlaif_job"  # the metadata key that tags a batch with its job key (OpenAI)
FIND_WINDOW = 600.0  # seconds before a failed creation that a batch it made may be dated


class BatchSettings(BaseModel):
    """The settings of batch mode; API backends' settings models inherit them."""

    model_config = ConfigDict(extra="forbid")

    batch: bool = Field(default=False, description="send each stage as a provider batch job")
    batch_poll: float = Field(default=30.0, gt=0.0, description="seconds between status polls")
    batch_errors: Literal["resubmit", "online"] = Field(
        default="resubmit", description="what to do with errored or expired items"
    )
    state_dir: Path | None = Field(
        default=None, description="where the batch ledger lives (the run's output folder)"
    )


# --------------------------------------------------------------------------- ids


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def custom_id(body: dict[str, Any], sample: int = 0) -> str:
    """A provider-safe id for one item: the same body and sample always give the same id. Prompt
    cache hints do not count (``without_cache_hints``): whether a request's prefix is marked
    depends on what this process has sent before, and a rerun must find the same items."""
    digest = hashlib.sha256(canonical(without_cache_hints(body)).encode("utf-8")).hexdigest()
    return f"r{digest[:48]}-{sample}"


def job_key(provider: str, endpoint: str, ids: Sequence[str]) -> str:
    """The ledger key of one batch: which provider and endpoint, and which items."""
    h = hashlib.sha256(f"{provider}\n{endpoint}\n".encode())
    for i in sorted(ids):
        h.update(i.encode("ascii") + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class BatchState:
    status: str  # the provider's own word for it
    done: bool  # results can be collected (some items may have errored or expired)
    dead: bool  # ended without results worth collecting (failed validation, cancelled)
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""  # why a dead batch died, in the provider's words


@dataclass(frozen=True)
class ItemResult:
    body: dict[str, Any] | None  # the response body of a succeeded item
    error: str = ""
    retryable: bool = True  # expired, 5xx, overloaded: worth another try


class BatchProvider(Protocol):
    """What a backend supplies: its API's batch calls, with plain values in and out."""

    name: str
    endpoint: str  # where requests go (the server URL), part of the ledger key
    max_items: int
    max_bytes: int

    def item_size(self, cid: str, body: dict[str, Any]) -> int: ...

    async def prepare(self, items: list[tuple[str, dict[str, Any]]]) -> Any:
        """Whatever ``create`` needs (OpenAI: an uploaded input file); safe to retry."""
        ...

    async def create(self, prepared: Any, key: str) -> tuple[str, str]:
        """Create the batch, tagged with the job ``key`` where the API keeps metadata; returns
        its id and status. Retried only when the failure says no batch was created
        (``submit_classify``)."""
        ...

    async def find(self, key: str, items: int, since: float) -> list[tuple[str, str]]:
        """Batches (id, status) that a creation of ``key`` (``items`` items, asked for at
        ``since``, a Unix time) may have made although the call failed: by the key in their
        metadata where the API keeps it, else by size and time."""
        ...

    async def state(self, batch_id: str) -> BatchState: ...

    async def results(self, batch_id: str) -> dict[str, ItemResult]: ...


def split_items(
    items: Sequence[tuple[str, dict[str, Any]]],
    max_items: int,
    max_bytes: int,
    size: Callable[[str, dict[str, Any]], int],
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Cut items, in the order given, into parts within both limits."""
    parts: list[list[tuple[str, dict[str, Any]]]] = []
    current: list[tuple[str, dict[str, Any]]] = []
    used = 0
    for cid, body in items:
        n = size(cid, body)
        if current and (len(current) >= max_items or used + n > max_bytes):
            parts.append(current)
            current, used = [], 0
        current.append((cid, body))
        used += n
    if current:
        parts.append(current)
    return parts


# --------------------------------------------------------------------------- runner

Online = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BatchRunner:
    """Turns a dict of items into answers through provider batches, with the ledger's guarantee."""

    def __init__(
        self,
        provider: BatchProvider,
        settings: BatchSettings,
        caller: ApiCaller,
        online: Online | None = None,
    ):
        self.provider = provider
        self.settings = settings
        self.caller = caller
        self.online = online
        path = settings.state_dir / LEDGER_FILE if settings.state_dir is not None else None
        self.ledger = BatchLedger(path)
        self.created = 0  # batches this process submitted
        self.reattached = 0  # batches this process found in the ledger and collected
        self.found = 0  # batches whose create call failed, found at the provider and collected
        self.stored: set[str] = set()  # items answered from the ledger's kept answers

    async def run(
        self, items: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any] | Exception], set[str]]:
        """An answer body, or a ``LabelerCallError``, for every custom id; and the ids that were
        answered online (at the full price) after errors in a batch."""
        answers: dict[str, dict[str, Any] | Exception] = {}
        online_ids: set[str] = set()
        collected: set[str] = set()  # batches read in this call: a retry needs a new one
        endpoint = self.provider.endpoint
        kept = self.ledger.answers(endpoint, list(items))  # paid for in an earlier, killed run
        answers.update(kept)
        self.stored.update(kept)
        pending = {cid: body for cid, body in items.items() if cid not in kept}
        retry = self.caller.settings.retry
        attempt = 0
        while pending:
            attempt += 1
            outcome = await self._round(sorted(pending.items()), collected)
            again: dict[str, dict[str, Any]] = {}
            fresh: dict[str, dict[str, Any]] = {}
            for cid, body in pending.items():
                got = outcome[cid]
                if got.body is not None:
                    answers[cid] = fresh[cid] = got.body
                elif got.retryable and attempt <= retry.max_retries:
                    again[cid] = body
                else:
                    answers[cid] = self.failure(got.error, attempt, got.retryable)
            if again and fresh:
                # another round follows: what this one answered is kept now, so that a kill
                # during it (hours, for a batch) costs none of it again
                self.ledger.keep_answers(endpoint, fresh)
            if again and self.settings.batch_errors == "online" and self.online is not None:
                name = self.provider.name
                log.info("%s batch: sending %d errored items online", name, len(again))
                sent = await asyncio.gather(
                    *(self.online(body) for body in again.values()), return_exceptions=True
                )
                for cid, got_online in zip(again, sent, strict=True):
                    if isinstance(got_online, BaseException):
                        if not isinstance(got_online, Exception):
                            raise got_online
                        answers[cid] = (
                            got_online
                            if isinstance(got_online, LabelerCallError)
                            else self.failure(str(got_online), attempt + 1, False)
                        )
                    else:
                        answers[cid] = got_online
                        online_ids.add(cid)
                again = {}
            if again:
                self.caller.retries += len(again)
                log.info(
                    "%s batch: resubmitting %d errored or expired items",
                    self.provider.name,
                    len(again),
                )
            pending = again
        return answers, online_ids

    def answer(
        self,
        got: tuple[dict[str, dict[str, Any] | Exception], set[str]],
        cid: str,
        read: Callable[[dict[str, Any]], tuple[T, tuple[int, ...]]],
    ) -> T | LabelerCallError:
        """One item of ``run``'s result as the backend reads it (``read``: the result and its
        prompt, completion, cached and cache-written tokens, as ``ApiCaller.record`` takes them),
        or the error that fails its row. The tokens, cached ones included, are charged
        at the batch price, or in full where the item was answered online."""
        answers, online = got
        body = answers[cid]
        if isinstance(body, Exception):
            return body  # type: ignore[return-value]
        try:
            result, usage = read(body)
        except (LabelerResponseError, ValueError) as e:
            return self.failure(f"unusable answer: {e}", 1, False)
        if cid not in self.stored:  # a kept answer was paid for, and counted, by an earlier run
            factor = 1.0 if cid in online else BATCH_PRICE_FACTOR
            self.caller.record(*usage, price_factor=factor)
        return result

    def failure(self, error: str, attempts: int, retryable: bool) -> LabelerCallError:
        reason = redact(f"{self.provider.name} batch item: {error}", self.caller.secrets)
        return LabelerCallError(reason, attempts, retryable)

    async def _round(
        self, items: list[tuple[str, dict[str, Any]]], collected: set[str]
    ) -> dict[str, ItemResult]:
        """One answer per item: from live batches in the ledger that carry it (a killed run's,
        however its stage was cut into calls), the rest from new batches."""
        p = self.provider
        known = self.ledger.covering(p.name, p.endpoint, [cid for cid, _ in items], collected)
        jobs = []
        covered: set[str] = set()
        for key, (entry, ids) in known.items():
            self.reattached += 1
            log.info("%s batch %s: re-attached (%d items)", p.name, entry.batch_id, len(ids))
            jobs.append(self._collect(key, entry.batch_id, entry.status, ids))
            covered.update(ids)
        rest = [(cid, body) for cid, body in items if cid not in covered]
        for part in split_items(rest, p.max_items, p.max_bytes, p.item_size):
            jobs.append(self._submit(part))
        merged: dict[str, ItemResult] = {}
        for batch_id, found in await asyncio.gather(*jobs):
            collected.add(batch_id)
            merged.update(found)
        return merged

    async def _submit(
        self, items: list[tuple[str, dict[str, Any]]]
    ) -> tuple[str, dict[str, ItemResult]]:
        p = self.provider
        ids = [cid for cid, _ in items]
        key = job_key(p.name, p.endpoint, ids)
        since = self.ledger.attempted(key)
        made = await self._find(key, len(ids), since) if since is not None else None
        if made is None:
            prepared = await self.caller.call(lambda: p.prepare(items))
            since = self.ledger.attempt(key, p.name, p.endpoint, len(ids))
            try:
                made = await with_retries(
                    lambda: p.create(prepared, key),
                    self.caller.settings.retry,
                    submit_classify(self.caller.classify),
                    enforce_timeout=False,
                    retry_timeouts=False,
                )
            except LabelerCallError:
                # the call failed, but the provider may have created the batch (a timeout
                # after the upload): look for it before giving up on its items
                made = await self._find(key, len(ids), since)
                if made is None:
                    raise
            else:
                self.created += 1
                log.info("%s batch %s: submitted %d items", p.name, made[0], len(items))
        batch_id, status = made
        self.ledger.submitted(key, p.name, p.endpoint, batch_id, status, ids)
        return await self._collect(key, batch_id, status, ids)

    async def _find(self, key: str, items: int, since: float) -> tuple[str, str] | None:
        """The batch an unconfirmed creation of ``key`` made, if the provider shows exactly one
        that no ledger entry already names."""
        p = self.provider
        try:
            candidates = await self.caller.call(lambda: p.find(key, items, since))
        except LabelerCallError as e:
            log.warning("%s batch: could not look for a batch created earlier: %s", p.name, e)
            return None
        known = {e.batch_id for e in self.ledger.entries()}
        fresh = [c for c in candidates if c[0] not in known]
        if len(fresh) != 1:
            if len(fresh) > 1:
                log.warning(
                    "%s batch: %d batches may be the one a failed creation made; none is used",
                    p.name,
                    len(fresh),
                )
            return None
        self.found += 1
        log.info("%s batch %s: found, created by an earlier call that failed", p.name, fresh[0][0])
        return fresh[0]

    async def _collect(
        self, key: str, batch_id: str, status: str, ids: list[str]
    ) -> tuple[str, dict[str, ItemResult]]:
        """Wait for the batch to end; the results of the items ``ids``."""
        p = self.provider
        state = await self._wait(key, batch_id, status)
        if state.dead:
            why = state.error or f"the batch ended {state.status}"
            retryable = state.status != "failed"  # failed validation fails again
            return batch_id, {cid: ItemResult(None, why, retryable) for cid in ids}
        got = await self.caller.call(lambda: p.results(batch_id))
        self.ledger.status(key, state.status, finished=True)
        log.info("%s batch %s: collected %d results", p.name, batch_id, len(got))
        missing = ItemResult(None, f"batch {batch_id} returned no result for the item")
        found = {cid: got.get(cid, missing) for cid in ids}
        # the batch no longer answers its errored items: a rerun submits them again
        self.ledger.forget(key, [cid for cid, r in found.items() if r.body is None])
        return batch_id, found

    async def _wait(self, key: str, batch_id: str, status: str) -> BatchState:
        p = self.provider
        seen = ""
        while True:
            state = await self.caller.call(lambda: p.state(batch_id))
            line = f"{state.status} {state.counts}"
            if line != seen:
                seen = line
                counts = " ".join(f"{k}={v}" for k, v in state.counts.items())
                log.info("%s batch %s: %s %s", p.name, batch_id, state.status, counts)
                if state.status != status:
                    status = state.status
                    self.ledger.status(key, status, finished=state.done or state.dead)
            if state.done or state.dead:
                return state
            await asyncio.sleep(self.settings.batch_poll)

    def close(self) -> None:
        self.ledger.close()


def upload_timeout(nbytes: int, base: float) -> float:
    """Seconds for a call that uploads ``nbytes``: the usual timeout plus a second per MB."""
    return base + nbytes / 1_000_000


def submit_classify(classify: Callable[[BaseException], Verdict]) -> Callable[..., Verdict]:
    """A classifier for create calls: retry only what surely created nothing (429, 529, no
    connection at all); anything else may have created a batch that is paid for."""

    def classify_submit(exc: BaseException) -> Verdict:
        v = classify(exc)
        status = getattr(exc, "status_code", None)
        if v.permanent or status in (429, 529):
            return v
        return Verdict(False, v.reason, v.retry_after, v.permanent)

    return classify_submit
