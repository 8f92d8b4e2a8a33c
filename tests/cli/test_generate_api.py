"""SL-CAI through the openai backend against a faulty server: retries, failed rows, rerun."""

from __future__ import annotations

import json
import re

import pytest

from rlaif.cli import main
from rlaif.data.provenance import read_rows

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")


def write_job(tmp_path, url, n, retries=3):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(n)))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"prompts: {prompts}\n"
        "labeler: openai:fake-model\n"
        "labeler_settings:\n"
        f"  base_url: {url}\n"
        "  concurrency: 16\n"
        f"  retry: {{max_retries: {retries}, base_delay: 0.01, max_delay: 0.05, timeout: 0.5}}\n"
        "rounds: 1\n"
        "max_tokens: 32\n"
        f"out: {tmp_path / 'out'}\n"
    )
    return cfg


def rows(tmp_path, name="sl_cai.jsonl"):
    path = tmp_path / "out" / name
    return read_rows(path) if path.exists() else []


def test_twenty_percent_faults_still_give_every_row(tmp_path, capsys):
    with FakeOpenAIServer(fault_rate=0.2, seed=3, hang_seconds=1.0) as server:
        cfg = write_job(tmp_path, server.url, 40, retries=8)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
    got = rows(tmp_path)
    assert [r["id"] for r in got] == [f"line-{i}" for i in range(1, 41)]
    faults = sum(n for kind, n in server.served.items() if kind != "ok")
    out = " ".join(capsys.readouterr().out.split())
    retried = re.search(r"(\d+) calls retried", out)
    assert faults > 0 and retried, out
    # Every attempt past the 120 distinct calls is a retry. On a loaded machine an answer the
    # server sent can still arrive after the client's 0.5 s timeout: that call is retried too,
    # so the count can exceed the faults served, never fall short of them.
    assert int(retried.group(1)) >= sum(server.served.values()) - 120 >= faults


def test_permanent_failures_mark_rows_failed_and_a_rerun_fills_exactly_them(tmp_path, capsys):
    def broken(request):  # the server cannot answer anything about prompts 3 and 7
        text = json.dumps(request["messages"])
        return "prompt number 3" in text or "prompt number 7" in text

    with FakeOpenAIServer() as server:
        server.fail_if = broken
        cfg = write_job(tmp_path, server.url, 10, retries=2)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 3
        assert "2 rows failed" in " ".join(capsys.readouterr().out.split())
        good = rows(tmp_path)
        failed = rows(tmp_path, "sl_cai.failed.jsonl")
        assert [r["id"] for r in failed] == ["line-4", "line-8"]
        # the reason keeps the server's own error body
        reason = f'HTTP 500 from {server.url}/chat/completions: {{"message":"boom"}}'
        assert [r["failed"]["reason"] for r in failed] == [reason, reason]
        assert len(good) == 8 and "line-4" not in {r["id"] for r in good}

        server.fail_if = None  # the server recovers
        before = len(server.requests)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
        # exactly the failed rows were redone: 3 requests each (answer, critique, revision)
        assert len(server.requests) - before == 2 * 3
    final = rows(tmp_path)
    assert [r["id"] for r in final] == [f"line-{i}" for i in range(1, 11)]
    assert {r["id"]: r for r in final}["line-1"] == {r["id"]: r for r in good}["line-1"]
    assert not (tmp_path / "out" / "sl_cai.failed.jsonl").exists()


def test_a_planted_api_key_never_reaches_outputs_or_logs(tmp_path, monkeypatch, capsys):
    secret = "sk-PLANTED-do-not-leak-9f8e7d"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAIServer(fault_rate=0.3, faults=("429", "500"), seed=2) as server:
        cfg = write_job(tmp_path, server.url, 6, retries=8)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
        assert server.headers[0]["authorization"] == f"Bearer {secret}"  # it was used
    captured = capsys.readouterr()
    assert secret not in captured.out and secret not in captured.err
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"sl_cai.jsonl", "README.md", "cache.sqlite"}
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def test_labeler_settings_from_flags(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    with FakeOpenAIServer() as server:
        args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
                "--labeler-set", f"base_url={server.url}", "--labeler-set", "concurrency=2",
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(args) == 0
        assert len(server.requests) == 2 * 3
    row = rows(tmp_path)[0]
    assert row["provenance"]["critic"]["base_url"] == server.url
    assert row["provenance"]["critic"]["concurrency"] == 2


def test_bad_labeler_setting_is_a_clear_error(capsys):
    assert main(["generate", "sl-cai", "--prompts", "x.txt", "--labeler-set", "oops"]) == 2
    assert "--labeler-set expects KEY=VALUE" in capsys.readouterr().err


def test_cost_is_accounted_from_the_price_table(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one two\n")
    with FakeOpenAIServer() as server:
        args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
                "--labeler-set", f"base_url={server.url}",
                "--labeler-set", "price_input_per_million=1000000",
                "--labeler-set", "price_output_per_million=2000000",
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(args) == 0
        usage = [
            (
                len(r["messages"][-1]["content"].split()),
                len(r["messages"][-1]["content"].split()) + 1,
            )
            for r in server.requests
        ]  # the fake server's usage: prompt words, and "echo:" + prompt words (max_tokens 256)
    expected = sum(p * 1.0 + c * 2.0 for p, c in usage)
    out = " ".join(capsys.readouterr().out.split())
    assert f"cost by the price table: ${expected:.4f}" in out
    assert f"${expected:.4f}" in (tmp_path / "out" / "README.md").read_text()


def free_port():
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_endpoint_stops_the_run_within_seconds_with_one_line(tmp_path, capsys):
    import time

    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:x",
            "--labeler-set", f"base_url={url}", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 4
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert seconds < 10, seconds
    assert len(err) == 1, err
    assert err[0].startswith(f"rlaif: error: labeler endpoint unusable: cannot connect to {url}")
    assert "run the same command again" in err[0]


def test_a_rejected_key_stops_after_the_first_calls_with_the_servers_message(
    tmp_path, monkeypatch, capsys
):
    secret = "sk-PLANTED-rejected-key-4b3a2c"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAIServer() as server:
        server.permanent = "401"
        cfg = write_job(tmp_path, server.url, 200, retries=3)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 4
        assert server.headers[0]["authorization"] == f"Bearer {secret}"  # the key was sent
        calls = len(server.requests)
    # 200 rows, 16 in flight: the run stops with the first answers, not after 200 rows x 1 call
    assert 1 <= calls <= 16, calls
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert f"HTTP 401 from {server.url}/chat/completions" in err[0]
    assert "Incorrect API key provided: [redacted]" in err[0]  # the server's own message
    assert "invalid_api_key" in err[0]
    assert secret not in captured.out and secret not in captured.err
    for path in (p for p in (tmp_path / "out").rglob("*") if p.is_file()):
        assert secret.encode() not in path.read_bytes(), path
    assert rows(tmp_path) == []


def test_an_unknown_model_stops_the_run_and_a_rerun_after_the_fix_resumes(tmp_path, capsys):
    with FakeOpenAIServer() as server:
        server.script = ["ok"] * 12 + ["404"] * 1000  # 4 rows' 3 calls, then the model is gone
        cfg = write_job(tmp_path, server.url, 30, retries=2)
        cfg.write_text(cfg.read_text().replace("concurrency: 16", "concurrency: 1"))
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 4
        err = capsys.readouterr().err
        assert "HTTP 404" in err and "The model `fake-model` does not exist" in err
        # 12 answers, then the first 404 stopped it: nothing more was sent
        first = len(server.requests)
        assert first == 13
        server.script = []
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
        # the 12 answers came from the journal and the cache: only the other 78 calls were made
        assert len(server.requests) - first == 30 * 3 - 12
    assert [r["id"] for r in rows(tmp_path)] == [f"line-{i}" for i in range(1, 31)]


def test_the_circuit_breaker_stops_a_run_whose_rows_all_fail(tmp_path, capsys):
    with FakeOpenAIServer() as server:
        server.permanent = "500"
        cfg = write_job(tmp_path, server.url, 100, retries=1)
        cfg.write_text(
            cfg.read_text().replace("concurrency: 16", "concurrency: 2") + "breaker: 5\n"
        )
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 4
        err = capsys.readouterr().err
        assert "the last 5 rows all failed" in err and '"message":"boom"' in err
        # 5 rows failed (2 attempts each) plus at most the 2 calls in flight when it stopped
        assert 10 <= len(server.requests) <= 14, len(server.requests)
        server.permanent = None
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
    assert len(rows(tmp_path)) == 100


@pytest.mark.parametrize("command", ["prefs", "eval"])
def test_prefs_and_labeler_eval_stop_the_same_way(command, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    secret = "sk-PLANTED-prefs-eval-key-5e6f"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(100)))
    gold = Path(__file__).parent.parent / "fixtures" / "gold_pairs.jsonl"
    with FakeOpenAIServer() as server:
        server.permanent = "401"
        where = ["--labeler", "openai:fake", "--labeler-set", f"base_url={server.url}",
                 "--labeler-set", "concurrency=4", "--out", str(tmp_path / "out")]  # fmt: skip
        if command == "prefs":
            assert main(["generate", "prefs", "--prompts", str(prompts), *where]) == 4
        else:
            assert main(["eval", "labeler", "--gold", str(gold), *where]) == 4
        calls = len(server.requests)
    assert 1 <= calls <= 4, calls  # at most the 4 in flight when the first failed
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"HTTP 401 from {server.url}/chat/completions" in err[0], err
    assert "Incorrect API key provided: [redacted]" in err[0]
    assert secret not in captured.out + captured.err
    for path in (p for p in (tmp_path / "out").rglob("*") if p.is_file()):
        assert secret.encode() not in path.read_bytes(), path


def test_a_cache_that_cannot_commit_ends_the_run_in_seconds_with_one_line(
    tmp_path, monkeypatch, capsys
):
    """The cache's disk fills up mid-run: the command ends at once, exit 2, naming the file;
    rows written so far are kept (it used to wait forever for answers never handed out)."""
    import sqlite3
    import time

    from rlaif.engine.cache import Cache

    real = Cache._commit
    commits = {"n": 0}

    def fills_up(self):
        commits["n"] += 1
        if commits["n"] > 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self)

    monkeypatch.setattr(Cache, "_commit", fills_up)
    with FakeOpenAIServer(latency=0.01) as server:
        cfg = write_job(tmp_path, server.url, 200)
        started = time.perf_counter()
        code = main(["generate", "sl-cai", "--config", str(cfg)])
        seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and seconds < 20
    assert f"cache {tmp_path / 'out' / 'cache.sqlite'}: cannot write: database or disk is full" in (
        " ".join(err.split())
    )
    assert "Traceback" not in err and len(server.requests) < 600
