"""Batch mode pieces: custom ids, the ledger, splitting, the runner's retries, and the backends'
batch calls against the fake batch server (real HTTP, real SDKs)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from rlaif.errors import ConfigError, LabelerCallError
from rlaif.labelers.base import GenerateParams, create_labeler
from rlaif.labelers.batch_ledger import BatchLedger
from rlaif.labelers.batches import (
    BatchRunner,
    BatchSettings,
    BatchState,
    ItemResult,
    custom_id,
    job_key,
    split_items,
)
from rlaif.labelers.reliability import ApiCaller, ApiSettings, RetrySettings, Verdict

from .fake_batch_server import FakeBatchServer

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_custom_ids_come_from_the_content_and_fit_anthropic_rules():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    same = {"max_tokens": 8, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert custom_id(body) == custom_id(same)  # key order does not matter
    assert custom_id(body, 0) != custom_id(body, 1)
    assert custom_id(body) != custom_id({**body, "max_tokens": 9})
    ids = [custom_id(body, i) for i in (0, 7, 99_999)]
    assert all(ANTHROPIC_ID.match(i) for i in ids), ids
    assert ids[2].endswith("-99999") and len(ids[2]) <= 64


def test_job_keys_name_the_items_not_their_order():
    assert job_key("openai", "u m", ["a", "b"]) == job_key("openai", "u m", ["b", "a"])
    assert job_key("openai", "u m", ["a", "b"]) != job_key("openai", "u m", ["a"])
    assert job_key("openai", "u m", ["a"]) != job_key("openai", "v m", ["a"])


def test_the_ledger_survives_a_reopen_and_forgets_dead_batches(tmp_path):
    path = tmp_path / "batches.sqlite"
    ledger = BatchLedger(path)
    ledger.submitted("k1", "openai", "u m", "batch_1", "validating", ["a", "b", "c"])
    ledger.submitted("k2", "openai", "u m", "batch_2", "in_progress", ["d", "e"])
    ledger.status("k2", "expired", finished=True)
    ledger.close()  # as a kill would leave it: the rows were committed at once

    again = BatchLedger(path)
    entry = again.live("k1")
    assert entry is not None and (entry.batch_id, entry.items) == ("batch_1", 3)
    assert again.live("k2") is None  # ended expired: not re-attached
    assert again.live("k3") is None
    assert [(e.batch_id, e.status, e.finished is not None) for e in again.entries()] == [
        ("batch_1", "validating", False),
        ("batch_2", "expired", True),
    ]
    # items are found whatever call asks for them; dead batches and other endpoints do not count
    found = again.covering("openai", "u m", ["b", "c", "d", "x"])
    assert {k: (e.batch_id, sorted(ids)) for k, (e, ids) in found.items()} == {
        "k1": ("batch_1", ["b", "c"])
    }
    assert again.covering("openai", "v m", ["b"]) == {}
    assert again.covering("openai", "u m", ["b"], exclude={"batch_1"}) == {}
    again.close()
    assert again.live("k1") is not None  # opened again on use

    in_memory = BatchLedger(None)
    in_memory.submitted("k", "anthropic", "u m", "msgbatch_1", "in_progress", ["a"])
    assert in_memory.live("k").batch_id == "msgbatch_1"


def test_items_are_split_at_both_limits():
    items = [(f"id{i}", {"n": i}) for i in range(7)]
    by_count = split_items(items, 3, 10**9, lambda cid, body: 1)
    assert [[cid for cid, _ in part] for part in by_count] == [
        ["id0", "id1", "id2"],
        ["id3", "id4", "id5"],
        ["id6"],
    ]
    by_bytes = split_items(items, 100, 25, lambda cid, body: 10)
    assert [len(p) for p in by_bytes] == [2, 2, 2, 1]
    assert split_items([], 3, 10, lambda c, b: 1) == []


class Scripted:
    """A provider in memory: ``answer(cid, seen)`` decides each item's result."""

    name = "scripted"
    endpoint = "memory m"
    max_bytes = 10**9

    def __init__(self, answer, max_items=1000, dead=False):
        self.answer = answer
        self.max_items = max_items
        self.dead = dead
        self.batches: list[list[str]] = []
        self.keys: list[str] = []  # the job key of each batch created
        self.create_fails = 0
        self.hold: set[str] = set()  # batch ids that never finish
        self.seen: Counter[str] = Counter()

    def item_size(self, cid, body):
        return 1

    async def prepare(self, items):
        return items

    async def create(self, items, key=None):
        self.batches.append([cid for cid, _ in items])
        self.keys.append(key)
        if self.create_fails:  # created, but the call fails (a timeout after the upload)
            self.create_fails -= 1
            raise TimeoutError("no answer from the create call")
        return f"b{len(self.batches) - 1}", "in_progress"

    async def find(self, key, items, since):
        return [(f"b{i}", "in_progress") for i, k in enumerate(self.keys) if k == key]

    async def state(self, batch_id):
        if batch_id in self.hold:  # still in progress, however long one waits
            return BatchState("in_progress", False, False, {})
        if self.dead:
            return BatchState("failed", False, True, {}, "batch failed: bad input line 3")
        return BatchState("completed", True, False, {"total": 1})

    async def results(self, batch_id):
        out = {}
        for cid in self.batches[int(batch_id[1:])]:
            out[cid] = self.answer(cid, self.seen[cid])
            self.seen[cid] += 1
        return out


SECRET = "sk-PLANTED-runner-key-77aa66"


def runner(provider, tmp_path=None, max_retries=2, errors="resubmit", online=None):
    settings = BatchSettings(batch=True, batch_poll=0.01, batch_errors=errors, state_dir=tmp_path)
    api = ApiSettings(model="m", retry=RetrySettings(max_retries=max_retries, base_delay=0.0))
    caller = ApiCaller(api, lambda e: Verdict(False, str(e)), (SECRET,))
    return BatchRunner(provider, settings, caller, online)


ITEMS = {f"id{i}": {"i": i} for i in range(4)}


def test_the_runner_resubmits_what_may_succeed_and_fails_the_rest_with_the_reason():
    def answer(cid, seen):
        if cid == "id1" and seen == 0:
            return ItemResult(None, "the item was expired", True)
        if cid == "id2":
            return ItemResult(None, f"HTTP 500: boom (key {SECRET})", True)
        if cid == "id3":
            return ItemResult(None, "HTTP 400: invalid request", False)
        return ItemResult({"answer": cid})

    provider = Scripted(answer)
    r = runner(provider, max_retries=2)
    got, online = asyncio.run(r.run(ITEMS))
    # id1 and id2 again; then id2 once more (3 tries in all); id3 never again
    assert provider.batches == [["id0", "id1", "id2", "id3"], ["id1", "id2"], ["id2"]]
    assert got["id0"] == {"answer": "id0"} and got["id1"] == {"answer": "id1"}
    assert isinstance(got["id2"], LabelerCallError) and got["id2"].attempts == 3
    assert got["id2"].reason == "scripted batch item: HTTP 500: boom (key [redacted])"
    assert isinstance(got["id3"], LabelerCallError) and not got["id3"].retryable
    assert got["id3"].reason == "scripted batch item: HTTP 400: invalid request"
    assert online == set() and r.created == 3 and r.caller.retries == 3


def test_errored_items_go_online_when_asked():
    sent = []

    async def online(body):
        sent.append(body)
        return {"online": body["i"]}

    provider = Scripted(
        lambda cid, seen: ItemResult(None, "boom") if cid == "id3" else ItemResult({"batch": cid})
    )
    got, online_ids = asyncio.run(runner(provider, errors="online", online=online).run(ITEMS))
    assert provider.batches == [["id0", "id1", "id2", "id3"]]
    assert sent == [{"i": 3}] and got["id3"] == {"online": 3} and online_ids == {"id3"}
    assert got["id0"] == {"batch": "id0"}


def test_parts_go_out_as_separate_batches_and_a_rerun_reattaches_to_each(tmp_path):
    provider = Scripted(lambda cid, seen: ItemResult({"a": cid}), max_items=3)
    first = runner(provider, tmp_path)
    got, _ = asyncio.run(first.run({f"id{i}": {} for i in range(7)}))
    assert [len(b) for b in provider.batches] == [3, 3, 1] and len(got) == 7
    first.close()

    again = runner(provider, tmp_path)  # same items, same state_dir: found in the ledger
    got_again, _ = asyncio.run(again.run({f"id{i}": {} for i in range(7)}))
    assert len(provider.batches) == 3 and again.created == 0 and again.reattached == 3
    assert got_again == got


def test_a_rerun_that_cuts_its_stage_differently_still_pays_nothing_twice(tmp_path):
    provider = Scripted(lambda cid, seen: ItemResult({"a": cid}))
    killed = runner(provider, tmp_path)
    killed.ledger.submitted("k", provider.name, provider.endpoint, "b0", "in_progress", ["a", "b"])
    provider.batches.append(["a", "b"])  # what the killed run had submitted
    r = runner(provider, tmp_path)
    got, _ = asyncio.run(r.run({"b": {}, "c": {}}))
    # b comes from the killed run's batch; only c goes out
    assert provider.batches == [["a", "b"], ["c"]]
    assert got == {"b": {"a": "b"}, "c": {"a": "c"}}
    assert (r.created, r.reattached) == (1, 1)


def test_a_failed_batch_fails_its_items_and_is_not_reattached(tmp_path):
    provider = Scripted(lambda cid, seen: ItemResult({}), dead=True)
    r = runner(provider, tmp_path)
    got, _ = asyncio.run(r.run({"x": {}}))
    assert isinstance(got["x"], LabelerCallError)
    assert got["x"].reason == "scripted batch item: batch failed: bad input line 3"
    assert len(provider.batches) == 1  # a failed validation is not worth resubmitting
    assert [e.status for e in r.ledger.entries()] == ["failed"]
    provider.dead = False
    got, _ = asyncio.run(runner(provider, tmp_path).run({"x": {}}))
    assert len(provider.batches) == 2 and got["x"] == {}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_settings_in_the_backends(provider, tmp_path):
    with FakeBatchServer() as server:
        url = server.url if provider == "openai" else server.root_url
        lab = create_labeler(f"{provider}:m", base_url=url, batch=True, state_dir=tmp_path)
        plain = create_labeler(f"{provider}:m", base_url=url)
    assert lab.prefers_whole_stages and not plain.prefers_whole_stages
    assert lab.max_batch_size >= 50_000 and plain.max_batch_size == 1
    assert lab.max_concurrency == 4 and plain.max_concurrency == plain.settings.concurrency
    assert lab.describe()["batch"] is True and "batch" not in plain.describe()
    assert str(tmp_path) not in str(lab.describe())
    with pytest.raises(ConfigError, match="batch_pol"):
        create_labeler(f"{provider}:m", base_url="http://x/v1", batch_pol=1)
    with pytest.raises(ConfigError, match="batch_errors"):
        create_labeler(f"{provider}:m", base_url="http://x/v1", batch_errors="ignore")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_identical_conversations_in_one_call_are_sent_once(provider, tmp_path):
    params = GenerateParams(max_tokens=8, temperature=0.3, top_p=0.9, n=2, stop=("###",))
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    other = [{"role": "user", "content": "other"}]
    with FakeBatchServer() as server:
        url = server.url if provider == "openai" else server.root_url
        lab = create_labeler(
            f"{provider}:m", base_url=url, batch=True, batch_poll=0.01, state_dir=tmp_path
        )

        async def go():
            try:
                return await lab.generate([conv, other, conv], params)
            finally:
                await lab.aclose()

        got = asyncio.run(go())
        (batch,) = server.batches.values()
    assert got[0] == got[2] and got[0] != got[1] and len(got[0]) == 2
    bodies = [body for _, body in batch["items"]]
    hello = next(b for b in bodies if b["messages"][-1]["content"] == "hello")
    if provider == "openai":  # n samples in one request, as online
        assert len(bodies) == 2 and hello["n"] == 2 and hello["stop"] == ["###"]
        assert hello["messages"][0] == {"role": "system", "content": "be brief"}
    else:  # one item per sample; the SDK passes sampling settings through to the provider
        assert len(bodies) == 4 and hello["system"] == "be brief"
        assert (hello["temperature"], hello["top_p"]) == (0.3, 0.9)
        assert hello["stop_sequences"] == ["###"]
    assert got[0][0].text == "echo: hello" + (" #0" if provider == "openai" else "")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_call_over_the_providers_limit_goes_out_as_several_batches(provider, monkeypatch):
    import rlaif.labelers.anthropic as anthropic_backend
    import rlaif.labelers.openai as openai_backend

    monkeypatch.setattr(openai_backend.OpenAIBatches, "max_items", 3)
    monkeypatch.setattr(anthropic_backend._AnthropicBatches, "max_items", 3)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(7)]
    params = GenerateParams(max_tokens=8, temperature=0.0)
    with FakeBatchServer() as server:
        url = server.url if provider == "openai" else server.root_url
        lab = create_labeler(f"{provider}:m", base_url=url, batch=True, batch_poll=0.01)
        online = create_labeler(f"{provider}:m", base_url=url)

        async def go():
            try:
                return await lab.generate(convs, params), await online.generate(convs, params)
            finally:
                await lab.aclose()
                await online.aclose()

        got, expected = asyncio.run(go())
    assert sorted(n for _, n in server.created) == [1, 3, 3]
    assert got == expected and got[6][0].text == "echo: question 6"


def test_a_batch_that_fails_validation_fails_its_rows_with_the_providers_message(tmp_path):
    with FakeBatchServer() as server:
        server.fail_validation = True
        lab = create_labeler(
            "openai:m", base_url=server.url, batch=True, batch_poll=0.01, state_dir=tmp_path
        )

        async def go():
            try:
                return await lab.generate([[{"role": "user", "content": "hi"}]], GenerateParams())
            finally:
                await lab.aclose()

        (got,) = asyncio.run(go())
    assert isinstance(got, LabelerCallError) and not got.retryable
    assert got.reason == (
        'openai batch item: batch failed: {"code":"invalid_request",'
        '"line":1,"message":"model is not allowed in batches"}'
    )
    assert len(server.created) == 1  # not resubmitted: it would fail the same way
    assert [e.status for e in BatchLedger(tmp_path / "batches.sqlite").entries()] == ["failed"]


def test_a_rerun_resubmits_an_item_that_failed_in_every_try_exactly_once(tmp_path):
    """Run 1: an item errors in every batch that carries it, and its row fails. Run 2 submits it
    again (once), instead of re-reading the batches that answered it with an error."""
    broken = True

    def answer(cid, seen):
        if cid == "id2" and broken:
            return ItemResult(None, "HTTP 500: boom", True)
        return ItemResult({"answer": cid})

    provider = Scripted(answer)
    first = runner(provider, tmp_path, max_retries=2)
    got, _ = asyncio.run(first.run(ITEMS))
    assert isinstance(got["id2"], LabelerCallError)
    assert provider.batches == [["id0", "id1", "id2", "id3"], ["id2"], ["id2"]]
    first.close()

    broken = False  # the provider answers it now
    again = runner(provider, tmp_path, max_retries=2)
    got, _ = asyncio.run(again.run({"id2": ITEMS["id2"]}))
    assert got["id2"] == {"answer": "id2"}
    assert provider.batches[3:] == [["id2"]] and again.created == 1 and again.reattached == 0


def test_answers_of_an_expired_batch_survive_a_kill_during_the_resubmission(tmp_path):
    """The first batch expires with three of four items done; the run is killed while the
    resubmitted item's batch is in progress. The rerun submits nothing for the three done ones."""

    def answer(cid, seen):
        if cid == "id1" and seen == 0:
            return ItemResult(None, "the item was expired", True)
        return ItemResult({"answer": cid})

    provider = Scripted(answer)
    provider.hold.add("b1")  # the resubmission's batch: still running when the run is killed
    killed = runner(provider, tmp_path)

    async def until_killed():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(killed.run(ITEMS), timeout=0.5)

    asyncio.run(until_killed())
    killed.close()
    assert provider.batches == [["id0", "id1", "id2", "id3"], ["id1"]]

    provider.hold.clear()  # the provider finishes the resubmitted batch meanwhile
    rerun = runner(provider, tmp_path)
    got, _ = asyncio.run(rerun.run(ITEMS))
    assert got == {cid: {"answer": cid} for cid in ITEMS}
    # id0, id2, id3 come from what the killed run kept; id1 from its in-progress batch
    assert len(provider.batches) == 2 and rerun.created == 0 and rerun.reattached == 1
    assert rerun.stored == {"id0", "id2", "id3"}


def test_a_create_call_that_fails_after_creating_attaches_to_the_batch(tmp_path):
    provider = Scripted(lambda cid, seen: ItemResult({"a": cid}))
    provider.create_fails = 1  # the provider created it; the call timed out
    r = runner(provider, tmp_path)
    got, _ = asyncio.run(r.run(ITEMS))
    assert got == {cid: {"a": cid} for cid in ITEMS}
    assert len(provider.batches) == 1 and (r.created, r.found) == (0, 1)
    assert [e.batch_id for e in r.ledger.entries()] == ["b0"]


def test_a_rerun_after_an_unconfirmed_creation_looks_for_it_first(tmp_path):
    """A process killed during its create call leaves the attempt in the ledger; the rerun
    finds the batch the provider made and creates none."""
    provider = Scripted(lambda cid, seen: ItemResult({"a": cid}))
    ids = sorted(ITEMS)
    key = job_key(provider.name, provider.endpoint, ids)
    killed = runner(provider, tmp_path)
    killed.ledger.attempt(key, provider.name, provider.endpoint, len(ids))
    provider.batches.append(ids)  # what the provider made of the killed run's call
    provider.keys.append(key)
    killed.close()
    r = runner(provider, tmp_path)
    got, _ = asyncio.run(r.run(ITEMS))
    assert got == {cid: {"a": cid} for cid in ITEMS}
    assert len(provider.batches) == 1 and (r.created, r.found) == (0, 1)


# --------------------------------------------------------------------------- prompt caching

FEW_SHOT = [
    {"role": "system", "content": "Answer as a careful critic. " * 20},
    {"role": "user", "content": "An example request, with its context. " * 50},
    {"role": "assistant", "content": "An example critique of the response. " * 50},
]


def test_cache_hints_do_not_change_custom_ids():
    plain = {"model": "m", "system": "s", "messages": [{"role": "user", "content": "hi"}]}
    marked = {
        **plain,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    }
    keyed = {**plain, "prompt_cache_key": "rlaif-abc"}
    assert custom_id(plain) == custom_id(marked) == custom_id(keyed)
    assert custom_id(plain) != custom_id({**plain, "system": "t"})


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_items_carry_cache_hints_and_cached_tokens_cost_the_batch_price(provider, tmp_path):
    convs = [[*FEW_SHOT, {"role": "user", "content": f"question {i}"}] for i in range(4)]
    prices = {
        "price_input_per_million": 4.0,
        "price_cached_input_per_million": 0.4,
        "price_cache_write_per_million": 5.0,
    }
    with FakeBatchServer(caching=True) as server:
        url = server.url if provider == "openai" else server.root_url
        model = f"{provider}:" + ("claude-sonnet-4-5" if provider == "anthropic" else "gpt-4o")
        lab = create_labeler(model, base_url=url, batch=True, batch_poll=0.01, **prices)

        async def go():
            try:
                return await lab.generate(convs, GenerateParams(max_tokens=8))
            finally:
                await lab.aclose()

        got = asyncio.run(go())
        (batch,) = server.batches.values()
    assert [g[0].text for g in got] == [f"echo: question {i}" for i in range(4)]
    bodies = [body for _, body in batch["items"]]
    if provider == "openai":
        assert len({b["prompt_cache_key"] for b in bodies}) == 1
    else:  # the prefix repeats in the batch: every item marks it, on the last few-shot turn
        assert all(b["messages"][1]["content"][0]["cache_control"] for b in bodies)
    usage = lab.usage
    assert usage.cached_tokens > 0.5 * usage.input_tokens
    assert usage.cache_write_tokens == (0 if provider == "openai" else usage.cached_tokens // 3)
    rest = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    full = rest * 4.0 + usage.cached_tokens * 0.4 + usage.cache_write_tokens * 5.0
    assert lab.cost == pytest.approx(0.5 * full / 1e6)  # the batch price covers cached tokens
