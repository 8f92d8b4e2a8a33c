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
