"""Provider batch mode through the CLI, against a fake batch server for both providers: the same
rows as online mode, one batch per stage, errored items retried, a killed run re-attaches."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.data.provenance import read_rows

from ..labelers.fake_batch_server import FakeBatchServer

pytest.importorskip("openai")
pytest.importorskip("anthropic")

REPO = Path(__file__).resolve().parents[2]
KEYS = {"openai": "sk-PLANTED-batch-openai-1a2b3c", "anthropic": "sk-PLANTED-batch-anthr-4d5e6f"}
FAST = ["--labeler-set", "batch_poll=0.05"]
RETRY = "retry={max_retries: 2, base_delay: 0.01, max_delay: 0.05, timeout: 10}"


@pytest.fixture(autouse=True)
def planted_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEYS["openai"])
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEYS["anthropic"])


def url(server, provider):
    return server.url if provider == "openai" else server.root_url


def prompts(tmp_path, n):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(n)))
    return path


def sl_cai(server, provider, tmp_path, out, batch, n=4, rounds=2, extra=()):
    where = f"base_url={url(server, provider)}"
    args = ["generate", "sl-cai", "--prompts", str(prompts(tmp_path, n)),
            "--labeler", f"{provider}:fake", "--labeler-set", where, "--labeler-set", RETRY,
            "--rounds", str(rounds), "--out", str(tmp_path / out)]  # fmt: skip
    if batch:
        args += ["--labeler-set", "batch=true", *FAST]
    return [*args, *extra]


def rows(path):
    """Rows without what says how they were computed (``batch`` in provenance, timings)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("batch", "seconds")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return [strip(row) for row in read_rows(path)]


def no_key_in(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for key in KEYS.values():
            assert key.encode() not in data, path
    return files


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_two_round_sl_cai_in_batch_mode_writes_the_online_rows(provider, tmp_path, capsys, caplog):
    with FakeBatchServer(delay=0.15) as server:
        assert main(sl_cai(server, provider, tmp_path, "online", batch=False)) == 0
        assert server.created == []
        online_requests = len(server.requests)
        assert main(sl_cai(server, provider, tmp_path, "batch", batch=True)) == 0
        # no online request in batch mode; one batch per stage: answers, then critiques and
        # revisions for each of 2 rounds, 4 rows in each
        assert len(server.requests) == online_requests
        assert server.created == [(provider, 4)] * 5
        assert server.headers[-1].get("authorization", server.headers[-1].get("x-api-key"))
    online, batch = tmp_path / "online" / "sl_cai.jsonl", tmp_path / "batch" / "sl_cai.jsonl"
    assert len(rows(batch)) == 4 and rows(batch) == rows(online)
    first = read_rows(batch)[0]
    assert first["provenance"]["critic"]["batch"] is True
    assert "state_dir" not in first["provenance"]["critic"]
    captured = capsys.readouterr()
    log = caplog.text  # the rlaif.batches progress lines
    assert f"{provider} batch" in log and "submitted 4 items" in log
    assert "collected 4 results" in log
    files = no_key_in(tmp_path / "batch")
    assert "batches.sqlite" in {p.name for p in files}
    for key in KEYS.values():
        assert key not in captured.out + captured.err + log
    with sqlite3.connect(tmp_path / "batch" / "batches.sqlite") as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM batches")]
    assert statuses == ["completed" if provider == "openai" else "ended"] * 5


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_prefs_in_batch_mode_writes_the_online_rows(provider, tmp_path):
    """Samples, then scores: log-probs for OpenAI, 8 votes a comparison for Anthropic (its policy
    is the openai fake here, whose samples differ; the fake Anthropic's would all be equal)."""

    def args(out, batch):
        on = ["batch=true", "batch_poll=0.05"] if batch else []
        sets = [x for s in [f"base_url={url(server, provider)}", *on] for x in ("--labeler-set", s)]
        policy = [x for s in [f"base_url={server.url}", *on] for x in ("--policy-set", s)]
        return ["generate", "prefs", "--prompts", str(prompts(tmp_path, 3)),
                "--labeler", f"{provider}:fake", *sets, "--policy", "openai:fake", *policy,
                "--out", str(tmp_path / out)]  # fmt: skip

    with FakeBatchServer(delay=0.1) as server:
        assert main(args("online", False)) == 0
        assert main(args("batch", True)) == 0
    # 3 prompts x 2 samples in one request each; 3 pairs judged in both orders: 6 comparisons,
    # each one request with log-probs (OpenAI) or 8 votes (Anthropic)
    scores = 6 if provider == "openai" else 6 * 8
    assert server.created == [("openai", 3), (provider, scores)]
    online = rows(tmp_path / "online" / "preferences.jsonl")
    assert len(online) == 3 and all(r["chosen"] != r["rejected"] for r in online)
    assert rows(tmp_path / "batch" / "preferences.jsonl") == online
    if provider == "anthropic":
        assert [j["votes"] for j in online[0]["judgements"]] != [None, None]
    else:  # the fake prefers the "#1" response with P = 0.8, in whichever position it stands
        for row in rows(tmp_path / "batch" / "preferences.jsonl"):
            assert row["chosen"][0]["content"].endswith("#1")
            assert row["preference_prob"] == pytest.approx(0.8)
            assert [j["prob_first"] for j in row["judgements"]] == pytest.approx([0.2, 0.8])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_errored_and_expired_items_are_resubmitted_and_a_lasting_error_fails_its_row(
    provider, tmp_path, caplog, capsys
):
    def fault(body, seen):
        text = json.dumps(body["messages"])
        if "prompt number 1" in text and seen == 0:
            return "expired"
        if "prompt number 2" in text and seen == 0:
            return "error"
        if "prompt number 3" in text:
            return "error"  # every time
        return None

    with FakeBatchServer(delay=0.05) as server:
        assert main(sl_cai(server, provider, tmp_path, "online", batch=False, rounds=1)) == 0
        server.item_fault = fault
        assert main(sl_cai(server, provider, tmp_path, "batch", batch=True, rounds=1)) == 3
        created = list(server.created)
    # answers: 4 items, then the 3 that failed, then the one that still fails (max_retries 2);
    # critiques and revisions of the 3 good rows, the items of prompts 1 and 2 failing once
    assert created == [(provider, n) for n in (4, 3, 1, 3, 2, 3, 2)]
    good = rows(tmp_path / "batch" / "sl_cai.jsonl")
    assert [r["id"] for r in good] == ["line-1", "line-2", "line-3"]
    assert good == rows(tmp_path / "online" / "sl_cai.jsonl")[:3]
    failed = rows(tmp_path / "batch" / "sl_cai.failed.jsonl")
    assert [r["id"] for r in failed] == ["line-4"]
    said = (
        'HTTP 500: {"message":"boom","type":"server_error"}'
        if provider == "openai"
        else '{"message":"boom","type":"api_error"}'
    )
    assert failed[0]["failed"]["reason"] == f"{provider} batch item: {said}"
    assert "resubmitting 3 errored or expired items" in caplog.text
    assert "8 calls retried" in " ".join(capsys.readouterr().out.split())


def test_errored_items_can_go_online_instead(tmp_path):
    with FakeBatchServer() as server:
        server.item_fault = lambda body, seen: "error" if seen == 0 else None
        extra = ["--labeler-set", "batch_errors=online"]
        args = sl_cai(server, "openai", tmp_path, "batch", batch=True, n=2, rounds=1, extra=extra)
        assert main(args) == 0
        # every item errored once in its batch and was then sent online
        assert server.created == [("openai", 2)] * 3
        assert len(server.requests) == 3 * 2
    assert len(rows(tmp_path / "batch" / "sl_cai.jsonl")) == 2


def test_batch_items_cost_half_the_online_price(tmp_path, capsys):
    price = ["--labeler-set", "price_input_per_million=1000000",
             "--labeler-set", "price_output_per_million=2000000"]  # fmt: skip
    costs = []
    with FakeBatchServer() as server:
        for mode in ("online", "batch"):
            args = sl_cai(server, "openai", tmp_path, mode, mode == "batch", rounds=1, extra=price)
            assert main(args) == 0
            out = " ".join(capsys.readouterr().out.split())
            costs.append(float(out.split("cost by the price table: $")[1].split()[0]))
    assert costs[0] > 0 and costs[1] == pytest.approx(costs[0] / 2, abs=1e-4)
    assert f"${costs[1]:.4f}" in (tmp_path / "batch" / "README.md").read_text()


def test_a_batch_creation_is_retried_only_when_it_surely_did_not_happen(tmp_path, capsys):
    with FakeBatchServer() as server:
        server.create_faults = ["429"]  # rate limited: nothing was created, try again
        assert main(sl_cai(server, "openai", tmp_path, "a", batch=True, n=2, rounds=1)) == 0
        assert server.create_calls == 4 and len(server.created) == 3
        server.create_faults = ["500"]  # may have created a batch: do not pay twice
        assert main(sl_cai(server, "openai", tmp_path, "b", batch=True, n=3, rounds=1)) == 3
        assert server.create_calls == 5 and len(server.created) == 3
    assert "HTTP 500" in rows(tmp_path / "b" / "sl_cai.failed.jsonl")[0]["failed"]["reason"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_killed_run_reattaches_to_its_batch_and_pays_nothing_twice(provider, tmp_path):
    with FakeBatchServer(delay=600) as server:
        args = sl_cai(server, provider, tmp_path, "batch", batch=True, n=3, rounds=1)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ledger = tmp_path / "batch" / "batches.sqlite"
        deadline = time.time() + 60
        while time.time() < deadline and (not server.created or server.polls < 2):
            time.sleep(0.05)  # submitted and polled: the batch is in progress
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert server.created == [(provider, 3)]
        with sqlite3.connect(ledger) as db:
            (batch_id, status), *_ = db.execute("SELECT batch_id, status FROM batches")
        assert batch_id in server.batches and status == "in_progress"

        server.delay = 0.05  # the provider finishes the batch while nobody watches
        assert main(args) == 0
        # the rerun collected the killed run's batch: 0 new batches for the answers; one each
        # for critiques and revisions
        assert server.created == [(provider, 3)] * 3
        assert main(sl_cai(server, provider, tmp_path, "online", batch=False, n=3, rounds=1)) == 0
    assert rows(tmp_path / "batch" / "sl_cai.jsonl") == rows(tmp_path / "online" / "sl_cai.jsonl")
    no_key_in(tmp_path / "batch")


def test_a_ledger_entry_the_provider_does_not_know_stops_the_run_with_its_message(tmp_path, capsys):
    from rlaif.labelers.batch_ledger import BatchLedger

    with FakeBatchServer() as server:
        first = sl_cai(server, "openai", tmp_path, "first", batch=True, n=1, rounds=1)
        assert main(first) == 0
        with sqlite3.connect(tmp_path / "first" / "batches.sqlite") as db:
            (answer_id,) = db.execute("SELECT custom_id FROM items ORDER BY rowid").fetchone()
        # a ledger that says the answer went out in a batch the provider does not know
        ledger = BatchLedger(tmp_path / "batch" / "batches.sqlite")
        where = f"{server.url} fake"
        ledger.submitted("k", "openai", where, "batch_gone", "in_progress", [answer_id])
        ledger.close()
        created = len(server.created)
        assert main(sl_cai(server, "openai", tmp_path, "batch", batch=True, n=1, rounds=1)) == 4
        assert len(server.created) == created  # nothing submitted
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "No batch found with id 'batch_gone'" in err


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_call_that_times_out_after_the_batch_exists_creates_no_second(
    provider, tmp_path, caplog
):
    """The provider creates the batch but answers the create call only after the client's
    timeout: the run finds that batch among the provider's batches (OpenAI: by the job key in
    its metadata; Anthropic: by size and time) and collects it; nothing is created twice."""
    with FakeBatchServer(delay=0.05) as server:
        server.create_hang = 1.5
        timeout = ["--labeler-set", "retry={max_retries: 2, base_delay: 0.01, timeout: 0.5}"]
        args = sl_cai(server, provider, tmp_path, "batch", batch=True, n=3, rounds=1, extra=timeout)
        assert main(args) == 0
        # answers, critiques, revisions: one batch each, and one create call each
        assert server.created == [(provider, 3)] * 3 and server.create_calls == 3
    assert "found, created by an earlier call that failed" in caplog.text
    assert len(rows(tmp_path / "batch" / "sl_cai.jsonl")) == 3
    if provider == "openai":
        tags = [b["metadata"] for b in server.batches.values()]
        assert all(set(t) == {"rlaif_job"} and len(t["rlaif_job"]) == 64 for t in tags)


def test_a_rerun_submits_an_item_whose_row_failed_again(tmp_path):
    """Run 1: one item errors in every batch that carries it (exit 3). Run 2, with the
    provider answering again, submits that item once more and the row completes."""
    broken = True

    def fault(body, seen):
        return "error" if broken and "prompt number 2" in json.dumps(body["messages"]) else None

    with FakeBatchServer(delay=0.05) as server:
        server.item_fault = fault
        args = sl_cai(server, "openai", tmp_path, "batch", batch=True, n=3, rounds=1)
        assert main(args) == 3
        before = list(server.created)
        broken = False
        # one retry on the rerun: re-reading the batches that answered the item with an error
        # would use it up and fail the row again
        once = ["--labeler-set", "retry={max_retries: 1, base_delay: 0.01, timeout: 10}"]
        assert main([*args, *once]) == 0
        # the failed row's answer, then its critique and revision: one item each
        assert server.created[len(before) :] == [("openai", 1)] * 3
    assert [r["id"] for r in rows(tmp_path / "batch" / "sl_cai.jsonl")] == [
        "line-1",
        "line-2",
        "line-3",
    ]
