"""PPO on two CPU processes (gloo), as a user runs it: the shipped tiny recipe as-is, launched
with ``torch.distributed.run``. Both ranks finish, one model is written, and it loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_two_cpu_processes_write_one_model(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ppo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks on this machine
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlaif.train.ppo", "--config", "recipes/train/ppo-tiny.yaml",
           "--set", f"output_dir={out}"]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process PPO did not finish in 300 s:\n{(e.stderr or b'')[-3000:]!r}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ppo: 2 process(es) on cpu" in proc.stdout  # one group, not two lone runs
    assert proc.stdout.count("ppo step 2/2") == 1  # the main process logs, once
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2
    weights = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert weights == ["model.safetensors"]
    assert not (out / "checkpoint").exists() and not list(out.glob(".checkpoint*"))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and (out / "value_head.pt").is_file()


@pytest.mark.slow
def test_killed_two_process_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL both ranks after a checkpoint, run the same command again: it resumes there and
    logs every step once."""
    import json
    import time

    from .test_distributed import descendants, kill_all

    out = tmp_path / "ppo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlaif.train.ppo", "--config", "recipes/train/ppo-tiny.yaml",
           "--set", f"output_dir={out}", "--set", "steps=8"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    state = out / "checkpoint" / "state.json"
    try:
        deadline = time.monotonic() + 180
        while not state.exists() or json.loads(state.read_text())["step"] < 2:
            assert first.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of step 2 within 180 s"
            time.sleep(0.05)
        assert len(descendants(first.pid)) == 2
    finally:
        kill_all(first)
    step = json.loads(state.read_text())["step"]
    assert 2 <= step < 8 and not (out / "model.safetensors").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"ppo: resuming after step {step} from {out / 'checkpoint'}" in done.stdout
    assert done.stdout.count("ppo step ") == 8 - step  # only the steps after the checkpoint
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        *range(1, 9)
    ]
    assert (out / "model.safetensors").is_file() and not (out / "checkpoint").exists()
