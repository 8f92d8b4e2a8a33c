"""The JSON transport of the openai backend: what it sends, and how each failure is told apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlaif.errors import LabelerCallError
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync
from rlaif.labelers.http import HttpError, classify_http_error

from .fake_openai_server import FakeOpenAIServer

pytest.importorskip("aiohttp")

CONV = [{"role": "user", "content": "hello there"}]
ONE_TRY = {"max_retries": 0, "base_delay": 0.01, "max_delay": 0.05, "timeout": 0.5}


def test_sends_the_key_as_bearer_and_the_organisation_and_project_headers(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-7")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-9")
    with FakeOpenAIServer() as server:
        lab = create_labeler("openai:m", base_url=server.url)
        assert run_sync(lab.generate([CONV], GenerateParams()))[0][0].text == "echo: hello there"
    sent = server.headers[0]
    assert sent["authorization"] == "Bearer sk-test-123"
    assert sent["openai-organization"] == "org-7" and sent["openai-project"] == "proj-9"
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"].startswith("rlaif/")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", "unparsable response from {url}/chat/completions: the body is not JSON"),
        ("hang", "timed out: {url}/chat/completions"),
        ("500", 'HTTP 500 from {url}/chat/completions: {{"message":"boom"}}'),
    ],
)
def test_each_failure_is_named_with_its_url(fault, reason):
    with FakeOpenAIServer(script=[fault], hang_seconds=2.0) as server:
        lab = create_labeler("openai:m", base_url=server.url, retry=ONE_TRY)
        with pytest.raises(LabelerCallError) as err:
            run_sync(lab.generate([CONV], GenerateParams()))
    assert err.value.reason == reason.format(url=server.url)
    assert not err.value.permanent


def test_verdicts_for_status_codes_follow_the_sdk_rules():
    def status(code: int, headers=None):
        return classify_http_error(HttpError("status", "http://h/v1", "", code, headers or {}))

    assert status(429, {"retry-after": "3"}).retryable and status(429).retry_after is None
    assert status(429, {"retry-after": "3"}).retry_after == 3.0
    assert status(503).retryable and not status(503).permanent
    assert not status(400).retryable
    for code in (401, 403, 404):
        assert status(code).permanent and not status(code).retryable
    refused = classify_http_error(HttpError("connect", "http://h/v1", "refused"))
    assert refused.permanent and refused.reason == "cannot connect to http://h/v1: refused"


def test_online_requests_do_not_load_the_openai_sdk():
    """The SDK's import alone costs more start-up than the rest of rlaif: online runs skip it."""
    code = (
        "import sys\n"
        "from rlaif.labelers.base import GenerateParams, create_labeler, run_sync\n"
        "lab = create_labeler('openai:m', base_url=sys.argv[1])\n"
        "out = run_sync(lab.generate([[{'role': 'user', 'content': 'hi'}]], GenerateParams()))\n"
        "print(out[0][0].text, 'openai' in sys.modules)\n"
    )
    with FakeOpenAIServer() as server:
        done = subprocess.run(
            [sys.executable, "-c", code, server.url], capture_output=True, text=True, check=True
        )
    assert done.stdout.split() == ["echo:", "hi", "False"]
