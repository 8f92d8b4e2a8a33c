import asyncio

import pytest

from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.labelers.base import GenerateParams

P = GenerateParams(max_tokens=8, temperature=0.0)


def conv(text):
    return [{"role": "user", "content": text}]


def test_requests_from_many_rows_share_batches(fake_labeler):
    lab = fake_labeler()  # max_batch_size 4
    sched = Scheduler(lab, Cache(None))

    async def row(i):
        a = await sched.generate(conv(f"first {i}"), P)
        b = await sched.generate(conv(f"second {i} {a[0].text}"), P)
        return b[0].text

    async def main():
        out = await asyncio.gather(*(row(i) for i in range(10)))
        await sched.aclose()
        return out

    out = asyncio.run(main())
    assert len(out) == 10
    assert sum(lab.batches) == 20 and max(lab.batches) == 4
    assert len(lab.batches) <= 6  # 20 requests in batches of 4, not 20 single calls
    assert sched.stats.labeler_calls == len(lab.batches)
    # rows at different stages share a batch: first requests of late rows ride with second
    # requests of early ones
    assert any({c.split()[0] for c in batch} == {"first", "second"} for batch in lab.batch_contents)


def test_cache_answers_a_rerun_without_calls(fake_labeler):
    cache = Cache(None)

    async def run(lab):
        sched = Scheduler(lab, cache)
        res = await asyncio.gather(*(sched.generate(conv(f"q{i}"), P) for i in range(5)))
        await sched.aclose()
        return [r[0].text for r in res], sched.stats

    first_lab, second_lab = fake_labeler(), fake_labeler(lambda c, p, i: "DIFFERENT")
    first, _ = asyncio.run(run(first_lab))
    second, stats = asyncio.run(run(second_lab))
    assert second == first and second_lab.calls == []
    assert stats.cache_hits == 5 and stats.labeler_calls == 0


def test_identical_requests_in_flight_are_sent_once(fake_labeler):
    lab = fake_labeler()
    sched = Scheduler(lab, Cache(None))

    async def main():
        out = await asyncio.gather(*(sched.generate(conv("same"), P) for _ in range(3)))
        await sched.aclose()
        return out

    out = asyncio.run(main())
    assert len(lab.calls) == 1 and out[0] == out[1] == out[2]


def test_n_samples_are_cached_per_sample_index(fake_labeler):
    lab = fake_labeler(lambda c, p, i: f"s{i}")
    cache = Cache(None)
    sched = Scheduler(lab, cache)
    params = GenerateParams(n=3, temperature=1.0, seed=1)
    keys = sched.keys_for(conv("x"), params)
    assert len(set(keys)) == 3
    out = asyncio.run(sched.generate(conv("x"), params))
    assert len(out) == 3 and all(cache.get(k) is not None for k in keys)


def test_api_style_backend_gets_bounded_concurrency(fake_labeler):
    active, peak = 0, 0

    class Slow(fake_labeler):
        max_batch_size = 1
        max_concurrency = 3

        async def generate(self, conversations, params):
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return await super().generate(conversations, params)

    lab = Slow()
    sched = Scheduler(lab, Cache(None))

    async def main():
        await asyncio.gather(*(sched.generate(conv(f"q{i}"), P) for i in range(9)))
        await sched.aclose()

    asyncio.run(main())
    assert lab.batches == [1] * 9 and peak == 3


def test_labeler_errors_reach_the_waiting_rows(fake_labeler):
    class Broken(fake_labeler):
        async def generate(self, conversations, params):
            raise RuntimeError("backend down")

    sched = Scheduler(Broken(), Cache(None), EngineStats())

    async def main():
        with pytest.raises(RuntimeError, match="backend down"):
            await sched.generate(conv("x"), P)
        await sched.aclose()

    asyncio.run(main())


def test_option_scores_are_batched_and_cached(fake_labeler, tmp_path):
    seen = []

    def score(conv, options):
        seen.append(conv[-1]["content"])
        return [-1.0, -float(len(conv[-1]["content"]))]

    async def run(lab, cache):
        sched = Scheduler(lab, cache, EngineStats())
        try:
            out = await asyncio.gather(
                *(sched.option_logprobs(conv(f"q{i}"), [" (A)", " (B)"]) for i in range(6))
            )
            return out, sched.stats
        finally:
            await sched.aclose()

    cache = Cache(tmp_path / "c.sqlite")
    out, stats = asyncio.run(run(fake_labeler(logprobs=score), cache))
    assert out == [[-1.0, -2.0]] * 6 and len(seen) == 6
    assert stats.labeler_calls == 2  # 6 conversations in batches of 4
    out2, stats2 = asyncio.run(run(fake_labeler(logprobs=score), cache))
    assert out2 == out and stats2.labeler_calls == 0 and stats2.cache_hits == 6
    assert len(seen) == 6
    # other options are another request
    other = asyncio.run(
        Scheduler(fake_labeler(logprobs=score), cache).option_logprobs(conv("q0"), [" A", " B"])
    )
    assert other == [-1.0, -2.0] and len(seen) == 7


def test_minus_infinity_survives_the_cache(fake_labeler):
    import math

    lab = fake_labeler(logprobs=lambda conv, options: [0.0, -math.inf])
    cache = Cache(None)

    async def main():
        sched = Scheduler(lab, cache)
        first = await sched.option_logprobs(conv("x"), [" (A)", " (B)"])
        second = await sched.option_logprobs(conv("x"), [" (A)", " (B)"])
        await sched.aclose()
        return first, second, sched.stats.cache_hits

    first, second, hits = asyncio.run(main())
    assert first == second == [0.0, -math.inf] and hits == 1


def test_after_a_permanent_failure_nothing_more_is_sent(fake_labeler):
    from rlaif.errors import LabelerCallError

    class DeadEndpoint(fake_labeler):
        max_batch_size = 1
        max_concurrency = 2

        async def generate(self, conversations, params):
            self.batches.append(len(conversations))
            await asyncio.sleep(0.01)
            raise LabelerCallError("HTTP 401 from http://x: bad key", 1, False, permanent=True)

    lab = DeadEndpoint()
    sched = Scheduler(lab, Cache(None))

    async def main():
        out = await asyncio.gather(
            *(sched.generate(conv(f"q{i}"), P) for i in range(10)), return_exceptions=True
        )
        with pytest.raises(LabelerCallError, match="bad key"):  # a new request fails at once
            await sched.generate(conv("later"), P)
        await sched.aclose()
        return out

    out = asyncio.run(main())
    assert all(isinstance(e, LabelerCallError) and e.permanent for e in out)
    assert lab.batches == [1, 1]  # the 2 in flight when the first failed; the other 8 never sent


@pytest.mark.parametrize("whole_stages", [True, False])
def test_a_backend_that_prefers_whole_stages_gets_each_stage_in_one_call(
    fake_labeler, whole_stages
):
    """Rows that reach a stage at different times (here 10 ms apart, as rows whose first step came
    from the cache or from a slower answer) go out together when the backend asks for whole
    stages; otherwise the first rows go out at once."""

    class Batchy(fake_labeler):
        max_batch_size = 1000
        prefers_whole_stages = whole_stages

    lab = Batchy()
    sched = Scheduler(lab, Cache(None), settle=0.1)

    async def row(i):
        await asyncio.sleep(0.01 * i)
        a = await sched.generate(conv(f"first {i}"), P)
        b = await sched.generate(conv(f"second {i} {a[0].text}"), P)
        return b[0].text

    async def main():
        out = await asyncio.gather(*(row(i) for i in range(8)))
        await sched.aclose()
        return out

    out = asyncio.run(main())
    assert len(out) == 8
    stages = [sorted({c.split()[0] for c in batch}) for batch in lab.batch_contents]
    if whole_stages:
        assert lab.batches == [8, 8] and stages == [["first"], ["second"]]
    else:
        assert len(lab.batches) > 2


def test_an_exception_in_a_result_fails_only_that_row(fake_labeler):
    """A backend answering many conversations in one call (a provider batch) may fail some of
    them: those rows get the error, the others their answers, and only answers are cached."""
    from rlaif.errors import LabelerCallError

    class PartlyFailing(fake_labeler):
        max_batch_size = 100

        async def generate(self, conversations, params):
            out = await super().generate(conversations, params)
            return [
                LabelerCallError("item 2 errored", 1, False) if "2" in c[-1]["content"] else r
                for c, r in zip(conversations, out, strict=True)
            ]

        async def option_logprobs(self, conversations, options):
            out = await super().option_logprobs(conversations, options)
            return [
                LabelerCallError("no votes", 1, False) if "1" in c[-1]["content"] else r
                for c, r in zip(conversations, out, strict=True)
            ]

    lab = PartlyFailing()
    cache = Cache(None)
    sched = Scheduler(lab, cache)

    async def main():
        got = await asyncio.gather(
            *(sched.generate(conv(f"row {i}"), P) for i in range(4)), return_exceptions=True
        )
        scores = await asyncio.gather(
            *(sched.option_logprobs(conv(f"q {i}"), ["(A)", "(B)"]) for i in range(3)),
            return_exceptions=True,
        )
        await sched.aclose()
        return got, scores

    got, scores = asyncio.run(main())
    assert [type(g).__name__ for g in got] == ["list", "list", "LabelerCallError", "list"]
    assert got[2].reason == "item 2 errored" and got[0][0].text.startswith("reply")
    assert scores[0] == [-1.0, -1.0] and scores[2] == [-1.0, -1.0]
    assert isinstance(scores[1], LabelerCallError)
    assert cache.get_many(sched.keys_for(conv("row 2"), P)) == {}
    assert len(cache.get_many(sched.keys_for(conv("row 3"), P))) == 1
    assert cache.get(sched.option_key(conv("q 1"), ["(A)", "(B)"])) is None


def test_an_unreadable_answer_fails_its_row_not_the_run(fake_labeler):
    """A labeler that raises ``LabelerResponseError`` (no option label among the top log-probs)
    fails the rows that asked with a ``LabelerCallError``, which the jobs count as a failed row."""
    from rlaif.errors import LabelerCallError, LabelerResponseError

    class NoLabel(fake_labeler):
        async def option_logprobs(self, conversations, options):
            if any("bad" in c[-1]["content"] for c in conversations):
                raise LabelerResponseError("none of the options ['A', 'B'] appeared")
            return await super().option_logprobs(conversations, options)

    sched = Scheduler(NoLabel(), Cache(None))

    async def main():
        got = await asyncio.gather(
            sched.option_logprobs(conv("bad"), ["(A)", "(B)"]),
            return_exceptions=True,
        )
        ok = await sched.option_logprobs(conv("good"), ["(A)", "(B)"])
        await sched.aclose()
        return got[0], ok

    failed, ok = asyncio.run(main())
    assert isinstance(failed, LabelerCallError) and not failed.permanent
    assert failed.reason == "unusable answer: none of the options ['A', 'B'] appeared"
    assert ok == [-1.0, -1.0]


def test_a_cache_that_cannot_write_stops_the_rows_in_seconds(fake_labeler, tmp_path):
    """The cache's commit fails after the labeler answered (a locked or full disk): the rows
    get a ``CacheError`` naming the file at once, instead of waiting forever."""
    import sqlite3

    from rlaif.errors import CacheError

    cache = Cache(tmp_path / "cache.sqlite", commit_items=1)

    def broken_commit():
        raise sqlite3.OperationalError("database or disk is full")

    real = cache._db
    cache._db = type("Db", (), {"execute": lambda self, *a: broken_commit(), "close": real.close})()
    sched = Scheduler(fake_labeler(), cache)

    async def main():
        with pytest.raises(CacheError) as err:
            await asyncio.wait_for(sched.generate(conv("x"), P), timeout=5)
        return err.value

    error = asyncio.run(main())
    assert str(tmp_path / "cache.sqlite") in str(error)
    assert "database or disk is full" in str(error)


def test_a_wrong_number_of_answers_reaches_the_rows(fake_labeler):
    from rlaif.errors import EngineError

    class Short(fake_labeler):
        async def generate(self, conversations, params):
            return []

    sched = Scheduler(Short(), Cache(None))

    async def main():
        with pytest.raises(EngineError, match="answered 0 of 1 conversations"):
            await asyncio.wait_for(sched.generate(conv("x"), P), timeout=5)

    asyncio.run(main())


def test_requests_differing_only_in_n_are_not_merged(fake_labeler):
    lab = fake_labeler(lambda c, p, i: f"s{i}")
    sched = Scheduler(lab, Cache(None))

    async def main():
        two, four = await asyncio.gather(
            sched.generate(conv("x"), GenerateParams(n=2, temperature=1.0, seed=3)),
            sched.generate(conv("x"), GenerateParams(n=4, temperature=1.0, seed=3)),
        )
        await sched.aclose()
        return two, four

    two, four = asyncio.run(main())
    assert len(two) == 2 and len(four) == 4


def test_a_partial_cache_hit_asks_only_for_the_missing_samples(fake_labeler):
    asked = []

    class Recording(fake_labeler):
        async def generate(self, conversations, params):
            asked.append((params.n, params.seed))
            return await super().generate(conversations, params)

    cache = Cache(None)
    lab = Recording(lambda c, p, i: f"call {i}")

    async def run(n):
        sched = Scheduler(lab, cache)
        out = await sched.generate(conv("x"), GenerateParams(n=n, temperature=1.0, seed=7))
        await sched.aclose()
        return [c.text for c in out]

    first = asyncio.run(run(2))
    raised = asyncio.run(run(5))
    again = asyncio.run(run(5))
    # the two cached samples are kept; three new ones, with the seed moved past the cached two
    assert asked == [(2, 7), (3, 9)]
    assert first == ["call 0"] * 2 and raised == ["call 0"] * 2 + ["call 1"] * 3
    assert again == raised
