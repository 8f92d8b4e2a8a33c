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
    assert lab.retries == sum(n for k, n in server.served.items() if k != "ok") > 0
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
