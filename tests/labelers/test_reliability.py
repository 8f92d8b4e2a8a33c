import asyncio
import time
from email.utils import formatdate

import pytest

from rlaif.errors import LabelerCallError
from rlaif.labelers.reliability import (
    RateLimiter,
    RetrySettings,
    Verdict,
    backoff_delay,
    parse_retry_after,
    with_retries,
)


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_3s = formatdate(time.time() + 3, usegmt=True)
    assert 1.5 <= parse_retry_after(in_3s) <= 3.5


def test_backoff_is_capped_full_jitter_and_honours_retry_after():
    s = RetrySettings(base_delay=1.0, max_delay=4.0)
    delays = [backoff_delay(10, s, None) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100  # jittered, capped
    assert max(backoff_delay(0, s, None) for _ in range(200)) <= 1.0
    assert backoff_delay(3, s, 7.0) == 7.0


def test_with_retries_retries_transient_and_stops_on_permanent():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return "ok"

    fast = RetrySettings(max_retries=5, base_delay=0.001, max_delay=0.002, timeout=1)
    seen = []
    out = asyncio.run(with_retries(flaky, fast, lambda e: Verdict(True, "t"), seen.append))
    assert out == "ok" and len(calls) == 3 and len(seen) == 2

    async def broken():
        raise RuntimeError("no")

    with pytest.raises(LabelerCallError) as err:
        asyncio.run(with_retries(broken, fast, lambda e: Verdict(False, "HTTP 400")))
    assert err.value.attempts == 1 and not err.value.retryable


def test_timeouts_are_retried_then_fail():
    async def slow():
        await asyncio.sleep(1)

    s = RetrySettings(max_retries=1, base_delay=0.001, max_delay=0.001, timeout=0.05)
    with pytest.raises(LabelerCallError, match="timed out") as err:
        asyncio.run(with_retries(slow, s, lambda e: Verdict(False, "x")))
    assert err.value.attempts == 2


def test_rate_limiter_requests_per_minute():
    async def go():
        limiter = RateLimiter(requests_per_minute=120, tokens_per_minute=None)  # 2/s, burst 120
        start = time.perf_counter()
        for _ in range(120):
            await limiter.acquire()
        burst = time.perf_counter() - start
        await limiter.acquire()  # the 121st waits for the bucket to refill (0.5 s)
        return burst, time.perf_counter() - start

    burst, total = asyncio.run(go())
    assert burst < 0.2 and 0.4 <= total < 1.0


def test_rate_limiter_tokens_per_minute():
    async def go():
        limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600)  # 10 tokens/s
        start = time.perf_counter()
        await limiter.acquire(600)
        await limiter.acquire(5)  # needs 0.5 s of refill
        return time.perf_counter() - start

    assert 0.4 <= asyncio.run(go()) < 1.0


def test_no_limits_means_no_waiting():
    async def go():
        limiter = RateLimiter(None, None)
        start = time.perf_counter()
        for _ in range(1000):
            await limiter.acquire(10_000)
        return time.perf_counter() - start

    assert asyncio.run(go()) < 0.1


def test_retry_after_ms_wins_and_server_waits_are_capped():
    from rlaif.labelers.reliability import retry_after_from

    assert retry_after_from({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after_from({"retry-after": "3"}) == 3.0
    assert retry_after_from({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0
    assert retry_after_from({}) is None
    s = RetrySettings(max_retry_after=5.0)
    assert backoff_delay(0, s, 3600.0) == 5.0 and backoff_delay(0, s, 2.0) == 2.0


def test_a_permanent_transient_failure_gets_only_connect_retries():
    calls = []

    async def refused():
        calls.append(1)
        raise ConnectionRefusedError("nothing listens")

    s = RetrySettings(max_retries=6, connect_retries=2, base_delay=0.001, max_delay=0.002)
    verdict = Verdict(True, "cannot connect to http://x", permanent=True)
    with pytest.raises(LabelerCallError) as err:
        asyncio.run(with_retries(refused, s, lambda e: verdict))
    assert len(calls) == 3 and err.value.attempts == 3
    assert err.value.permanent and err.value.reason == "cannot connect to http://x"


def test_redact_and_server_body():
    from rlaif.labelers.reliability import redact, server_says

    said = server_says({"error": {"message": "bad key sk-abcdef123456", "code": "x"}})
    assert said == '{"error":{"message":"bad key sk-abcdef123456","code":"x"}}'
    assert redact(said) == '{"error":{"message":"bad key [redacted]","code":"x"}}'
    assert redact("key MYSECRET0 rejected", ("MYSECRET0",)) == "key [redacted] rejected"
    assert redact("Authorization: Bearer abc.def") == "Authorization: [redacted]"
    assert redact("task-abcdefgh failed") == "task-abcdefgh failed"  # only key-shaped words
    assert redact("GET /v1/x?key=AIzaXYZ&y=1") == "GET /v1/x?key=[redacted]&y=1"
    assert server_says(None, "line one\n  line two") == "line one line two"
    assert server_says("x" * 600) == "x" * 497 + "..."


def test_prompt_tokens_are_estimated_from_characters():
    from rlaif.labelers.reliability import estimate_tokens

    messages = [{"role": "system", "content": "a" * 10}, {"role": "user", "content": "b" * 30}]
    assert estimate_tokens(messages) == 10 + 8  # ceil(40 / 4) + 4 per message


def test_cached_reads_and_cache_writes_are_priced_apart_and_default_to_the_input_price():
    from rlaif.labelers.reliability import ApiCaller, ApiSettings

    def cost(**prices):
        caller = ApiCaller(ApiSettings(model="m", **prices), lambda e: None)
        caller.record(1000, 100, cached_tokens=600, cache_write_tokens=300)
        caller.record(1000, 100, cached_tokens=900, price_factor=0.5)  # a batch item
        return caller, caller.cost

    caller, unset = cost(price_input_per_million=2.0, price_output_per_million=10.0)
    assert (caller.prompt_tokens, caller.cached_tokens, caller.cache_write_tokens) == (
        2000,
        1500,
        300,
    )
    assert unset == pytest.approx((1000 * 2.0 + 100 * 10.0 + 500 * 2.0 + 50 * 10.0) / 1e6)
    _, priced = cost(
        price_input_per_million=2.0,
        price_output_per_million=10.0,
        price_cached_input_per_million=0.2,
        price_cache_write_per_million=2.5,
    )
    billed = (100 * 2.0 + 600 * 0.2 + 300 * 2.5 + 100 * 10.0) + 0.5 * (
        100 * 2.0 + 900 * 0.2 + 100 * 10.0
    )
    assert priced == pytest.approx(billed / 1e6)
    assert cost()[1] is None  # no prices, no cost
