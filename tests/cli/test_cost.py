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
    pytest.importorskip("bpe_openai")  # tiktoken's files, offline (the cost extra)
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
    pytest.importorskip("bpe_openai")  # tiktoken's files, offline (the cost extra)
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


def write_recipe(tmp_path, extra=""):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"question {i} about gardening" for i in range(20)))
    recipe = tmp_path / "run.yaml"
    recipe.write_text(
        f"name: costed\nbase_model: {tmp_path / 'no-such-model'}\n"
        "labeler: openai:gpt-4o-mini\n"
        "labeler_settings: {price_input_per_million: 0.15, price_output_per_million: 0.6}\n"
        f"prompts: {prompts}\ntrain_prompts: 10\niterations: 1\n"
        "sl_cai: {rounds: 2, max_tokens: 100}\nprefs: {responses: 2, max_tokens: 50}\n" + extra
    )
    return recipe


def test_run_estimate_covers_every_data_stage_of_the_recipe(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--estimate", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    steps = [
        line.split()[0] + " " + line.split()[2]
        for line in out.splitlines()
        if line.startswith(("sl_cai /", "prefs"))
    ]
    assert steps == [
        "sl_cai initial_response", "sl_cai critique", "sl_cai revision",
        "prefs responses", "prefs feedback", "prefs_2 responses", "prefs_2 feedback",
    ]  # fmt: skip
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total[1] == str(10 * (1 + 2 * 2) + 2 * (10 + 10 * 2))
    assert float(total[-2]) > 0  # the labeler's calls are priced; the local policy bills nothing
    assert not (tmp_path / "out").exists()


def test_run_budget_is_shared_by_the_data_stages(tmp_path):
    from rlaif.errors import BudgetExceededError
    from rlaif.pipeline import RunConfig, fingerprinted
    from rlaif.stages import StageBuilder

    cfg = RunConfig(name="x", prompts=tmp_path / "p.txt", max_cost=5.0)
    builder = StageBuilder(cfg, tmp_path)
    assert builder._budgeted({"seed": 0}) == {"seed": 0, "max_cost": 5.0}
    # a stage on local models bills nothing: it runs without the limit (a limit needs prices)
    local = {"labeler": "transformers:smollm2", "labeler_settings": {}}
    assert builder._budgeted(local) == local
    api_policy = {**local, "policy": "openai:gpt-4o-mini", "policy_settings": {}}
    assert builder._budgeted(api_policy)["max_cost"] == 5.0

    class Result:
        class stats:
            cost = 3.5

    builder._billed(Result())
    assert builder._budgeted({})["max_cost"] == pytest.approx(1.5)
    builder._billed(Result())
    with pytest.raises(BudgetExceededError) as e:
        builder._budgeted({})
    assert e.value.exit_code == 4
    # a limit never reruns a finished stage
    assert fingerprinted({"seed": 0, "max_cost": 3}) == {"seed": 0}
