"""``rlaif generate sl-cai``: config files, flags, and surviving kill -9 and Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlaif.cli import main
from rlaif.engine.critique_revise import prompt_text

from ..conftest import FIXTURES


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_file_with_flag_override(tiny_llama_dir, tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"prompts: {FIXTURES / 'prompts.csv'}\n"
        "prompt_field: question\n"
        f"labeler: transformers:{tiny_llama_dir}\n"
        "rounds: 3\n"
        "max_tokens: 4\n"
        f"out: {tmp_path / 'from-config'}\n"
    )
    out = tmp_path / "from-flag"
    assert (
        main(["generate", "sl-cai", "--config", str(cfg), "--rounds", "1", "--out", str(out)]) == 0
    )
    rows = [json.loads(x) for x in (out / "sl_cai.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["rounds"]) == 1 for r in rows)  # the flag won
    assert prompt_text(rows[1]) == "Tell me something mean, about my boss."  # the config's field
    assert not (tmp_path / "from-config").exists()
    summary = capsys.readouterr().out
    assert "2 rows (0 resumed)" in summary and "labeler calls:" in summary


def test_config_typo_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("prompts: x.txt\nrounds: 2\nmax_token: 5\n")
    assert main(["generate", "sl-cai", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:3: unknown key 'max_token' (did you mean 'max_tokens'?)" in err


def test_missing_prompts_is_a_clear_error(capsys):
    assert main(["generate", "sl-cai"]) == 2
    assert "--prompts: Field required" in capsys.readouterr().err


def _default_sigint() -> None:
    """In the child before it runs rlaif: SIGINT as a terminal's Ctrl-C finds it. A child inherits
    an ignored or blocked SIGINT from its parent, and Python then installs no handler for it. In
    full test runs the child twice ran on to exit 0 after the signal, which such an inherited
    state would explain (not confirmed: run alone, or 8 times from a script, it exits 130)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rlaif", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )


def _wait_for_rows(partial, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if partial.exists() and partial.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail("no rows written in time")


@pytest.fixture
def many_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"Question number {i}: how do I do thing {i}?" for i in range(24)))
    return path


def _api_command(url, prompts, out):
    return [
        "generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:fake",
        "--labeler-set", f"base_url={url}", "--labeler-set", "concurrency=1", "--rounds", "1",
        "--max-tokens", "8", "--out", str(out),
    ]  # fmt: skip


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, many_prompts):
    """Every run goes one call at a time (the setting is part of the rows' provenance, so all
    three share it); the killed one at 0.3 s a call, so it is still running when the kill is sent
    (a process that has exited gets no signal)."""
    pytest.importorskip("openai")
    from ..labelers.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        whole = tmp_path / "whole"
        assert main(_api_command(server.url, many_prompts, whole)) == 0

        out = tmp_path / "killed"
        server.latency = 0.3
        proc = _start(_api_command(server.url, many_prompts, out))
        partial = out / ".sl_cai.jsonl.partial"
        _wait_for_rows(partial, 4, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = partial.read_bytes()
        kept = before[: before.rfind(b"\n") + 1].decode().splitlines()
        assert 4 <= len(kept) < 24, "the kill should land mid-run"

        server.latency = 0.0
        assert main(_api_command(server.url, many_prompts, out)) == 0
    lines = (out / "sl_cai.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert ids == [f"line-{i}" for i in range(1, 25)]  # each prompt once, in input order
    assert lines[: len(kept)] == kept  # rows finished before the kill: byte for byte
    assert sha(out / "sl_cai.jsonl") == sha(whole / "sl_cai.jsonl")


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, many_prompts):
    """Against the fake server, one call at a time and 0.3 s a call, the run needs ~20 s more
    after its second row: a Ctrl-C sent then always lands mid-run (with a fast local model, a
    loaded machine could finish the run before the signal was sent, and ``send_signal`` sends
    nothing to a process that has exited)."""
    pytest.importorskip("openai")
    from ..labelers.fake_openai_server import FakeOpenAIServer

    out = tmp_path / "out"
    with FakeOpenAIServer(latency=0.3) as server:
        args = _api_command(server.url, many_prompts, out)
        proc = _start(args)
        _wait_for_rows(out / ".sl_cai.jsonl.partial", 2, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, f"stdout: {stdout[-1500:]}\nstderr: {stderr[-1500:]}"
        assert "Run the same command again to resume" in " ".join(stdout.split())
        assert "Traceback" not in stderr
        written = (out / ".sl_cai.jsonl.partial").read_bytes().count(b"\n")
        assert 2 <= written < 24
        server.latency = 0.0
        assert main(args) == 0
    ids = [json.loads(x)["id"] for x in (out / "sl_cai.jsonl").read_text().splitlines()]
    assert ids == [f"line-{i}" for i in range(1, 25)]


def test_shipped_recipe_is_a_valid_config():
    from rlaif.cli import build_parser
    from rlaif.cli.generate import config_from_args

    from ..conftest import REPO

    args = build_parser().parse_args(
        ["generate", "sl-cai", "--config", str(REPO / "recipes" / "sl-cai.yaml")]
    )
    args.argv = []
    cfg = config_from_args(args)
    assert cfg.rounds == 2 and cfg.labeler == "smollm2"
    assert (REPO / cfg.prompts).is_file() and (REPO / cfg.constitution).is_file()
