"""The openai backend over real HTTP against an in-process server with injected faults."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from rlaif.errors import ConfigError, LabelerCallError
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync

from .fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")

CONV = [{"role": "user", "content": "hello there"}]
FAST_RETRY = {"max_retries": 6, "base_delay": 0.01, "max_delay": 0.05, "timeout": 0.5}


def labeler(url, **kw):
    return create_labeler("openai:fake-model", **{"base_url": url, "retry": FAST_RETRY, **kw})


def test_generate_n_choices_usage_and_finish_reason():
    with FakeOpenAIServer() as server:
        lab = labeler(server.url)
        out = run_sync(lab.generate([CONV], GenerateParams(n=2, max_tokens=2, seed=5)))
    assert [c.text for c in out[0]] == ["echo: hello #0", "echo: hello #1"]
    assert all(c.finish_reason == "length" and c.prompt_tokens == 2 for c in out[0])
    sent = server.requests[0]
    assert sent["n"] == 2 and sent["seed"] == 5 and sent["max_tokens"] == 2
    assert sent["messages"] == CONV and sent["model"] == "fake-model"


def test_transient_faults_are_retried_until_success():
    with FakeOpenAIServer(fault_rate=0.4, seed=1, hang_seconds=1.0) as server:
        lab = labeler(server.url, concurrency=8)
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(30)]
        out = run_sync(lab.generate(convs, GenerateParams(max_tokens=8)))
    assert [o[0].text for o in out] == [f"echo: q{i}" for i in range(30)]
    faults = sum(n for kind, n in server.served.items() if kind != "ok")
    # an answer that reaches a loaded client after its 0.5 s timeout is retried as well
    assert faults > 0 and lab.retries >= sum(server.served.values()) - 30 >= faults
    assert {"429", "500", "garbage"} <= set(server.served)


def test_retry_after_is_honoured():
    with FakeOpenAIServer(script=["429", "ok"], retry_after="0.3") as server:
        lab = labeler(server.url)
        start = time.perf_counter()
        run_sync(lab.generate([CONV], GenerateParams()))
        waited = time.perf_counter() - start
    assert waited >= 0.3 and lab.retries == 1


def test_permanent_500_fails_after_the_last_retry_keeps_the_body_and_is_not_permanent():
    """A 500 is the server's trouble, not the endpoint's: retried, then the row fails with the
    server's error body, and the run goes on (not ``permanent``)."""
    with FakeOpenAIServer() as server:
        server.permanent = "500"
        lab = labeler(server.url, retry={**FAST_RETRY, "max_retries": 2})
        with pytest.raises(LabelerCallError) as err:
            run_sync(lab.generate([CONV], GenerateParams()))
    assert err.value.attempts == 3 and "HTTP 500" in err.value.reason
    assert len(server.requests) == 3
    assert not err.value.permanent
    assert err.value.reason == f'HTTP 500 from {server.url}/chat/completions: {{"message":"boom"}}'


def test_client_errors_are_not_retried():
    with FakeOpenAIServer() as server:
        server.permanent = "400"
        lab = labeler(server.url)
        with pytest.raises(LabelerCallError) as err:
            run_sync(lab.generate([CONV], GenerateParams()))
    assert len(server.requests) == 1 and lab.retries == 0
    assert err.value.retryable is False and "HTTP 400" in err.value.reason


def test_requests_are_spread_over_servers_by_load():
    with FakeOpenAIServer(latency=0.05) as a, FakeOpenAIServer(latency=0.05) as b:
        lab = labeler([a.url, b.url], concurrency=8)
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(16)]
        run_sync(lab.generate(convs, GenerateParams()))
    assert len(a.requests) + len(b.requests) == 16
    assert abs(len(a.requests) - len(b.requests)) <= 2


def test_option_logprobs_from_top_logprobs():
    with FakeOpenAIServer() as server:
        lab = labeler(server.url)
        scores = run_sync(lab.option_logprobs([CONV, CONV], [" (A)", " (B)"]))
    assert scores[0] == pytest.approx([-0.3133, -1.3133])
    p_a = math.exp(scores[0][0]) / sum(math.exp(s) for s in scores[0])
    assert p_a == pytest.approx(0.731, abs=1e-3)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 20


def test_api_key_from_env_or_file_never_in_describe(tmp_path, monkeypatch):
    secret = "sk-test-PLANTED-SECRET-1234"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAIServer() as server:
        lab = labeler(server.url)
        run_sync(lab.generate([CONV], GenerateParams()))
    assert server.headers[0]["authorization"] == f"Bearer {secret}"
    assert secret not in json.dumps(lab.describe())
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    with FakeOpenAIServer() as server:
        run_sync(labeler(server.url, api_key_file=key_file).generate([CONV], GenerateParams()))
    assert server.headers[0]["authorization"] == "Bearer sk-from-file"


def test_the_real_openai_endpoint_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        create_labeler("openai:gpt-4o-mini")


def test_concurrency_is_bounded_by_the_scheduler():
    from rlaif.engine.cache import Cache
    from rlaif.engine.scheduler import Scheduler

    with FakeOpenAIServer(latency=0.05) as server:
        lab = labeler(server.url, concurrency=4)
        sched = Scheduler(lab, Cache(None))

        async def main():
            await asyncio.gather(
                *(sched.generate([{"role": "user", "content": f"q{i}"}], GenerateParams())
                  for i in range(12))
            )  # fmt: skip
            await sched.aclose()

        asyncio.run(main())
    assert len(server.requests) == 12 and server.peak_in_flight == 4


def test_the_token_limiter_is_charged_prompt_plus_max_tokens():
    charged = []
    with FakeOpenAIServer() as server:
        lab = labeler(server.url, tokens_per_minute=1_000_000)

        async def record(tokens=0):
            charged.append(tokens)

        lab._caller.limiter.acquire = record
        conv = [{"role": "user", "content": "x" * 2000}]
        run_sync(lab.generate([conv], GenerateParams(max_tokens=4)))
    assert charged == [2000 // 4 + 4 + 4]  # 500 prompt tokens + 4 for the message + max_tokens


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("401", "Incorrect API key provided: [redacted]."),
        ("403", "not allowed in your region"),
        ("404", "The model `fake-model` does not exist"),
    ],
)
def test_key_model_and_url_errors_are_permanent_with_the_servers_message(fault, said, monkeypatch):
    secret = "sk-PLANTED-openai-key-77aa"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAIServer() as server:
        server.permanent = fault
        lab = labeler(server.url)
        with pytest.raises(LabelerCallError) as err:
            run_sync(lab.generate([CONV], GenerateParams()))
    assert len(server.requests) == 1  # not retried
    assert err.value.permanent and not err.value.retryable
    assert err.value.reason.startswith(f"HTTP {fault} from {server.url}/chat/completions: ")
    assert said in err.value.reason and secret not in str(err.value)


def test_retry_after_ms_is_honoured_and_a_long_retry_after_is_capped():
    with FakeOpenAIServer(script=["429", "ok"], retry_after="30", retry_after_ms="50") as server:
        lab = labeler(server.url)
        start = time.perf_counter()
        run_sync(lab.generate([CONV], GenerateParams()))
        took = time.perf_counter() - start
    assert len(server.requests) == 2 and 0.05 <= took < 5  # waited 50 ms, not 30 s
    with FakeOpenAIServer(script=["429", "ok"], retry_after="3600") as server:
        lab = labeler(server.url, retry={**FAST_RETRY, "max_retry_after": 0.2})
        start = time.perf_counter()
        run_sync(lab.generate([CONV], GenerateParams()))
        took_capped = time.perf_counter() - start
    assert len(server.requests) == 2 and 0.2 <= took_capped < 5  # the cap, not an hour


def test_a_refused_connection_is_permanent_after_connect_retries():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"http://127.0.0.1:{port}/v1"
    lab = labeler(url, retry={**FAST_RETRY, "connect_retries": 2})
    with pytest.raises(LabelerCallError) as err:
        run_sync(lab.generate([CONV], GenerateParams()))
    assert err.value.permanent and err.value.attempts == 3  # not max_retries (6) + 1
    assert err.value.reason.startswith(f"cannot connect to {url}/chat/completions: ")


def test_a_labeler_used_under_several_event_loops_leaves_no_open_session(caplog):
    """A judge calls the labeler from synchronous code, one event loop per call, and may never
    close it: the HTTP clients of each loop are closed as that loop shuts down."""
    import gc

    with FakeOpenAIServer() as server:
        lab = labeler(server.url)
        for i in range(3):
            conv = [{"role": "user", "content": f"call {i}"}]
            assert run_sync(lab.generate([conv], GenerateParams()))[0][0].text == f"echo: call {i}"
        clients = lab._clients
        del lab
        gc.collect()
    assert len(server.requests) == 3
    assert all(c.is_closed() for c in clients)
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


def test_openai_base_url_from_the_environment_serves_online_and_batch_mode(tmp_path, monkeypatch):
    """No base_url setting: $OPENAI_BASE_URL, as the SDK reads it, for online requests and for
    batches alike (online used to go to OpenAI's API while batches went to the variable's)."""
    from .fake_batch_server import FakeBatchServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeBatchServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        online = create_labeler("openai:fake", retry={"max_retries": 0, "timeout": 5})
        assert run_sync(online.generate([CONV], GenerateParams(max_tokens=4)))[0][0].text
        assert len(server.requests) == 1 and online.describe()["base_url"] == server.url
        batch = create_labeler(
            "openai:fake", batch=True, batch_poll=0.01, state_dir=tmp_path,
            retry={"max_retries": 0, "timeout": 5},
        )  # fmt: skip
        assert run_sync(batch.generate([CONV], GenerateParams(max_tokens=4)))[0][0].text
        assert server.created == [("openai", 1)]


def test_the_transport_honours_proxy_settings(monkeypatch):
    """HTTPS_PROXY/HTTP_PROXY/NO_PROXY as the SDKs honour them: a proxy on loopback sees the
    request."""
    with FakeOpenAIServer() as proxy:  # answers whatever it is asked, as a forwarding proxy would
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        lab = create_labeler("openai:fake", base_url="http://upstream.invalid/v1",
                             retry={"max_retries": 0, "timeout": 5})  # fmt: skip
        out = run_sync(lab.generate([CONV], GenerateParams(max_tokens=4)))
    assert out[0][0].text.startswith("echo:") and len(proxy.requests) == 1


# --------------------------------------------------------------------------- prompt caching

# a static prefix of about 1,300 tokens: few-shot turns before the final person's turn
FEW_SHOT = [
    {"role": "user", "content": "An example request, with its context. " * 70},
    {"role": "assistant", "content": "An example critique of the response. " * 70},
]


def asking(question, few_shot=FEW_SHOT):
    return [*few_shot, {"role": "user", "content": question}]


def test_a_prompt_cache_key_per_static_prefix_and_cached_tokens_are_counted():
    other = [{**FEW_SHOT[0], "content": "Another principle's example. " * 90}, FEW_SHOT[1]]
    prices = {"price_input_per_million": 2.0, "price_cached_input_per_million": 0.5}
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server.url, **prices)
        convs = [asking("question one"), asking("question two"), asking("q", other)]
        for conv in convs:
            run_sync(lab.generate([conv], GenerateParams(max_tokens=4)))
        run_sync(lab.option_logprobs([asking("(A) x\n\n(B) y")], [" (A)", " (B)"]))
        short = run_sync(lab.generate([[{"role": "user", "content": "hi"}]], GenerateParams()))
    keys = [r.get("prompt_cache_key") for r in server.requests]
    # one key per static prefix (a template under one principle), whatever the question after it
    assert keys[0] == keys[1] == keys[3] and keys[2] != keys[0] and keys[4] is None
    assert keys[0].startswith("rlaif-") and len(keys[0]) <= 64
    usages = server.answered_usage
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usages]
    assert cached[0] == 0 and cached[2] == 0 and cached[4] == 0
    assert cached[1] >= 1024 and cached[1] % 128 == 0 and cached[3] == cached[1]
    usage = lab.usage
    assert usage.cached_tokens == sum(cached) and usage.cache_write_tokens == 0
    assert usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    assert short[0][0].prompt_tokens == usages[4]["prompt_tokens"]
    uncached = usage.input_tokens - usage.cached_tokens
    assert lab.cost == pytest.approx((uncached * 2.0 + usage.cached_tokens * 0.5) / 1e6)


def test_unset_cache_prices_bill_cached_tokens_like_other_input():
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server.url, price_input_per_million=2.0)
        for q in ("one", "two"):
            run_sync(lab.generate([asking(q)], GenerateParams(max_tokens=4)))
    assert lab.usage.cached_tokens > 0
    assert lab.cost == pytest.approx(lab.usage.input_tokens * 2.0 / 1e6)


def test_a_server_that_refuses_prompt_cache_key_gets_requests_without_it():
    with FakeOpenAIServer(caching=True) as server:
        server.refuse_fields = {"prompt_cache_key"}  # as vLLM does with fields it does not know
        lab = labeler(server.url)
        out = [run_sync(lab.generate([asking(f"q{i}")], GenerateParams())) for i in range(3)]
    assert [o[0][0].text for o in out] == [f"echo: q{i}" for i in range(3)]
    assert server.refused == ["prompt_cache_key"]  # once: the key is dropped for the run
    assert ["prompt_cache_key" in r for r in server.requests] == [True, False, False, False]
    assert lab.retries == 0


def test_caching_off_sends_no_key():
    with FakeOpenAIServer() as server:
        lab = labeler(server.url, prompt_caching=False)
        run_sync(lab.generate([asking("q")], GenerateParams()))
    assert "prompt_cache_key" not in server.requests[0]
    assert lab.describe()["prompt_caching"] is False
