"""``--max-cost`` against the fake OpenAI server, and ``--estimate`` through the command line."""

from __future__ import annotations

import json
import re
import time

import pytest

from rlaif.cli import main

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")


def sl_cai_args(tmp_path, url, n, *extra):
    prompts = tmp_path / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("\n".join(f"prompt number {i} about cooking" for i in range(n)))
    return ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
            "--labeler-set", f"base_url={url}", "--labeler-set", "concurrency=4",
            "--labeler-set", "price_input_per_million=1000",
            "--labeler-set", "price_output_per_million=2000",
            "--max-tokens", "256", "--out", str(tmp_path / "out"), *extra]  # fmt: skip


def chat_requests(server):
    return [json.dumps(r["messages"], sort_keys=True) for r in server.requests]


def test_max_cost_stops_at_the_limit_and_a_rerun_finishes_every_row_once(tmp_path, capsys):
    n = 30
    with FakeOpenAIServer(latency=0.01) as server:
        assert main(sl_cai_args(tmp_path, server.url, n, "--max-cost", "3")) == 4
        err = " ".join(capsys.readouterr().err.split())
        found = re.search(r"budget reached: spent \$([\d.]+) of the \$([\d.]+) limit", err)
        assert found, err
        spent, limit = map(float, found.groups())
        assert limit == 3.0 and 0 < spent <= limit  # stopped before passing it
        assert "higher --max-cost" in err
        first_run = chat_requests(server)
        assert 0 < len(first_run) < 3 * n  # some calls were never sent
        assert not (tmp_path / "out" / "sl_cai.jsonl").exists()

        assert main(sl_cai_args(tmp_path, server.url, n, "--max-cost", "1000")) == 0
        every = chat_requests(server)
    rows = [json.loads(x) for x in (tmp_path / "out" / "sl_cai.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert ids == [f"line-{i}" for i in range(1, n + 1)]  # complete, in order, each once
    assert len(set(ids)) == n
    # nothing was asked twice: answers that arrived before the stop came from the cache
    assert len(every) == 3 * n and len(set(every)) == 3 * n


def test_max_cost_without_prices_is_a_clear_error(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
            "--labeler-set", "base_url=http://127.0.0.1:9/v1", "--max-cost", "5",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "max_cost needs prices" in err and "price_input_per_million" in err


def test_estimate_prints_requests_tokens_and_cost_and_sends_nothing(tmp_path, capsys):
    with FakeOpenAIServer() as server:
        args = sl_cai_args(tmp_path, server.url, 20, "--rounds", "2", "--estimate")
        assert main(args) == 0
        assert server.requests == []
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    requests, *_ = total.split()[1:]
    assert requests == "100"  # 20 first answers + 2 rounds x (critique + revision)
    assert "tiktoken o200k_base" in out  # offline: the shipped BPE file, checked
    assert "nothing was sent" in out
    assert not (tmp_path / "out").exists()


def test_estimate_without_prices_says_cost_needs_them(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    args = ["generate", "prefs", "--prompts", str(prompts), "--labeler", "openai:gpt-4o-mini",
            "--estimate"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no prices for openai:gpt-4o-mini: cost needs them" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[-2:] == ["-", "-"]


@pytest.mark.slow
def test_estimate_of_100k_prompts_and_4_rounds_answers_within_a_minute(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    text = "how do I fix problem number {} with my old bicycle chain"
    prompts.write_text("\n".join(text.format(i) for i in range(10**5)))
    args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:gpt-4o-mini",
            "--rounds", "4", "--estimate", "--labeler-set", "price_input_per_million=0.15",
            "--labeler-set", "price_output_per_million=0.6"]  # fmt: skip
    start = time.perf_counter()
    assert main(args) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total[1] == "900,000"  # 10^5 x (1 + 4 x 2)
    assert float(total[-2].replace(",", "")) > 0
    assert seconds < 60, seconds
