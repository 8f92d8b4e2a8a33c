"""The anthropic backend over real HTTP against the in-process fake server."""

from __future__ import annotations

import math

import pytest

from rlaif.errors import LabelerCallError
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync

from .fake_openai_server import FakeOpenAIServer

pytest.importorskip("anthropic")

FAST_RETRY = {"max_retries": 6, "base_delay": 0.01, "max_delay": 0.05, "timeout": 0.5}
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "hello there"}
PREFILL = {"role": "assistant", "content": "The answer is:"}


def labeler(server, **kw):
    settings = {"base_url": server.root_url, "retry": FAST_RETRY, **kw}
    return create_labeler("anthropic:fake-claude", **settings)


def test_generate_system_param_temperature_in_body_and_n_requests():
    with FakeOpenAIServer() as server:
        lab = labeler(server)
        out = run_sync(
            lab.generate([[SYSTEM, USER]], GenerateParams(n=3, temperature=0.3, max_tokens=5))
        )
    assert [c.text for c in out[0]] == ["echo: hello there"] * 3
    assert len(server.requests) == 3
    sent = server.requests[0]
    assert sent["system"] == "Be brief." and sent["messages"] == [USER]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 5
    assert out[0][0].prompt_tokens == 2 and out[0][0].finish_reason == "stop"


def test_echoed_prefill_is_stripped():
    with FakeOpenAIServer() as server:
        server.echo_prefill = True
        out = run_sync(labeler(server).generate([[USER, PREFILL]], GenerateParams(max_tokens=8)))
    assert out[0][0].text == "(A)"


def test_votes_give_option_probabilities():
    with FakeOpenAIServer() as server:
        lab = labeler(server, votes=8)
        scores = run_sync(lab.option_logprobs([[USER, PREFILL]], [" (A)", " (B)"]))[0]
    assert [math.exp(s) for s in scores] == pytest.approx([0.75, 0.25])
    assert lab.describe()["votes"] == 8 and len(server.requests) == 8
    assert all(r["temperature"] == 1.0 for r in server.requests)


def test_faults_are_retried_and_permanent_ones_fail():
    with FakeOpenAIServer(fault_rate=0.4, seed=5, faults=("429", "500", "garbage")) as server:
        lab = labeler(server, concurrency=8)
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(20)]
        out = run_sync(lab.generate(convs, GenerateParams(max_tokens=8)))
    assert [o[0].text for o in out] == [f"echo: q{i}" for i in range(20)]
    faults = sum(n for k, n in server.served.items() if k != "ok")
    # an answer that reaches a loaded client after its 0.5 s timeout is retried as well
    assert faults > 0 and lab.retries >= sum(server.served.values()) - 20 >= faults
    with FakeOpenAIServer() as server:
        server.permanent = "500"
        lab = labeler(server, retry={**FAST_RETRY, "max_retries": 1})
        with pytest.raises(LabelerCallError, match="HTTP 500"):
            run_sync(lab.generate([[USER]], GenerateParams()))


def test_feedback_step_votes_over_http():
    """Engine-side votes (the anthropic backend has no log-probs): 8 sampled answers per
    question, split 6:2 by the fake server, whatever the order: a pure position bias."""
    from rlaif.constitution import load_constitution
    from rlaif.engine.cache import Cache
    from rlaif.engine.feedback import Feedback, FeedbackSettings
    from rlaif.engine.scheduler import Scheduler
    from rlaif.resources import default_constitution
    from rlaif.templates import Templates

    with FakeOpenAIServer() as server:
        lab = labeler(server, concurrency=4)
        step = Feedback(
            load_constitution(default_constitution()),
            Templates(),
            Scheduler(lab, Cache(None)),
            FeedbackSettings(votes=8),
            lab.supports_logprobs,
        )
        result = run_sync(step.compare("row-1", [USER], "first reply", "second reply"))
    assert step.mode == "votes"
    assert [j.votes for j in result.judgements] == [[6, 2], [6, 2]]
    assert [j.prob_first for j in result.judgements] == [0.75, 0.75]
    assert result.prob_a == pytest.approx(0.5) and result.position_consistent is False
    assert len(server.requests) == 16


def test_a_rejected_key_is_permanent_with_the_servers_message_and_no_key(monkeypatch):
    secret = "sk-ant-PLANTED-key-0011"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    with FakeOpenAIServer() as server:
        server.permanent = "401"
        lab = labeler(server)
        with pytest.raises(LabelerCallError) as err:
            run_sync(lab.generate([[USER]], GenerateParams()))
    assert len(server.requests) == 1 and err.value.permanent
    assert err.value.reason.startswith(f"HTTP 401 from {server.root_url}/v1/messages: ")
    assert "Incorrect API key provided: [redacted]." in err.value.reason
    assert secret not in str(err.value)


def test_a_refused_connection_is_permanent():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = create_labeler(
        "anthropic:fake-claude", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY
    )
    with pytest.raises(LabelerCallError) as err:
        run_sync(lab.generate([[USER]], GenerateParams()))
    assert err.value.permanent and err.value.attempts == 3  # connect_retries 2, not max_retries 6
    assert err.value.reason.startswith(f"cannot connect to http://127.0.0.1:{port}/v1/messages: ")


# --------------------------------------------------------------------------- prompt caching

# a static prefix of about 1,300 tokens (4 characters a token): a system turn and few-shot turns
FEW_SHOT = [
    {"role": "system", "content": "Answer as a careful critic. " * 20},
    {"role": "user", "content": "An example request, with its context. " * 50},
    {"role": "assistant", "content": "An example critique of the response. " * 50},
]


def asking(question):
    return [*FEW_SHOT, {"role": "user", "content": question}]


def marked(request):
    """Where the request's cache breakpoints are: ("system" or a message index)."""
    found = []
    system = request.get("system")
    if isinstance(system, list) and any("cache_control" in b for b in system):
        found.append("system")
    for i, m in enumerate(request["messages"]):
        if isinstance(m["content"], list) and any("cache_control" in b for b in m["content"]):
            found.append(i)
    return found


def test_the_static_prefix_is_marked_from_its_second_use_and_read_from_the_cache():
    prices = {
        "price_input_per_million": 3.0,
        "price_output_per_million": 15.0,
        "price_cached_input_per_million": 0.3,
        "price_cache_write_per_million": 3.75,
    }
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server, model="claude-sonnet-4-5", **prices)
        params = GenerateParams(max_tokens=8)
        out = [run_sync(lab.generate([asking(f"question {i}")], params))[0][0] for i in range(3)]
    # the first use goes out unmarked (a prefix that never repeats pays no write premium); the
    # breakpoint is on the last few-shot turn, the varying question after it
    assert [marked(r) for r in server.requests] == [[], [1], [1]]
    sent = server.requests[1]["messages"]
    assert sent[1]["content"][0]["text"] == FEW_SHOT[2]["content"]
    assert sent[2] == {"role": "user", "content": "question 1"}
    usages = server.answered_usage
    assert usages[0]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"] == 0
    assert usages[1]["cache_creation_input_tokens"] > 1024
    assert usages[2]["cache_read_input_tokens"] == usages[1]["cache_creation_input_tokens"]
    # prompt_tokens is every input token, although Anthropic's input_tokens leaves cached out
    total = [u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
             for u in usages]  # fmt: skip
    assert [c.prompt_tokens for c in out] == total
    usage = lab.usage
    assert usage.input_tokens == sum(total)
    assert usage.cached_tokens == usages[2]["cache_read_input_tokens"]
    assert usage.cache_write_tokens == usages[1]["cache_creation_input_tokens"]
    uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    expected = (uncached * 3.0 + usage.cached_tokens * 0.3 + usage.cache_write_tokens * 3.75
                + usage.output_tokens * 15.0) / 1e6  # fmt: skip
    assert lab.cost == pytest.approx(expected)


def test_the_samples_of_one_call_are_one_sighting_of_their_prefix():
    """n samples go out together: marking n - 1 of them would pay n - 1 cache writes that none
    of them can read. They count as one sighting, so a prefix seen in one call is never marked
    (a multi-turn prompt's own earlier turns), and the next call's samples all are."""
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server, model="claude-sonnet-4-5")
        run_sync(lab.generate([asking("first")], GenerateParams(n=3, max_tokens=4)))
        assert [marked(r) for r in server.requests] == [[]] * 3
        run_sync(lab.generate([asking("second")], GenerateParams(n=2, max_tokens=4)))
    assert [marked(r) for r in server.requests[3:]] == [[1], [1]]


def test_a_short_prefix_or_caching_off_sends_no_breakpoint():
    short = [{"role": "user", "content": "example"}, {"role": "assistant", "content": "reply"}]
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server, model="claude-sonnet-4-5")
        for _ in range(3):
            run_sync(lab.generate([[*short, USER]], GenerateParams(max_tokens=4)))
        off = labeler(server, model="claude-sonnet-4-5", prompt_caching=False)
        for _ in range(3):
            run_sync(off.generate([asking("q")], GenerateParams(max_tokens=4)))
    assert [marked(r) for r in server.requests] == [[]] * 6
    assert off.describe()["prompt_caching"] is False and "prompt_caching" not in lab.describe()
    assert off.usage.cached_tokens == 0 and off.usage.input_tokens > 3 * 1024


def test_the_models_minimum_decides_what_is_worth_marking():
    from rlaif.labelers.anthropic import cache_minimum

    assert cache_minimum("claude-haiku-4-5") == 4096 and cache_minimum("claude-opus-4-6") == 4096
    assert cache_minimum("claude-3-5-haiku-20241022") == 2048
    assert cache_minimum("claude-sonnet-4-5") == 1024 and cache_minimum("claude-x") == 1024
    with FakeOpenAIServer(caching=True) as server:
        lab = labeler(server, model="claude-haiku-4-5")  # a 1,300-token prefix is too short
        for _ in range(3):
            run_sync(lab.generate([asking("q")], GenerateParams(max_tokens=4)))
        low = labeler(server, model="claude-haiku-4-5", cache_min_tokens=1000)
        for _ in range(2):
            run_sync(low.generate([asking("q")], GenerateParams(max_tokens=4)))
    assert [marked(r) for r in server.requests] == [[], [], [], [], [1]]
    # the server does not cache under its own minimum either: the breakpoint writes nothing
    assert server.answered_usage[4]["cache_creation_input_tokens"] == 0


def test_a_server_that_refuses_cache_control_gets_the_request_without_it():
    with FakeOpenAIServer(caching=True) as server:
        server.refuse_fields = {"cache_control"}
        lab = labeler(server, model="claude-sonnet-4-5")
        params = GenerateParams(max_tokens=4)
        out = [run_sync(lab.generate([asking(f"q{i}")], params)) for i in range(4)]
    assert [o[0][0].text for o in out] == [f"echo: q{i}" for i in range(4)]
    assert server.refused == ["cache_control"]  # once; nothing marked after it
    assert [marked(r) for r in server.requests] == [[], [1], [], [], []]
    assert lab.retries == 0
