"""SL-CAI through the openai backend against a faulty server: retries, failed rows, rerun."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main

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
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_twenty_percent_faults_still_give_every_row(tmp_path, capsys):
    with FakeOpenAIServer(fault_rate=0.2, seed=3, hang_seconds=1.0) as server:
        cfg = write_job(tmp_path, server.url, 40, retries=8)
        assert main(["generate", "sl-cai", "--config", str(cfg)]) == 0
    got = rows(tmp_path)
    assert [r["id"] for r in got] == [f"line-{i}" for i in range(1, 41)]
    faults = sum(n for kind, n in server.served.items() if kind != "ok")
    out = " ".join(capsys.readouterr().out.split())
    assert faults > 0 and f"{faults} calls retried" in out


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
        assert all("HTTP 500" in r["failed"]["reason"] for r in failed)
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
