"""Two CPU processes (gloo) through ``python -m torch.distributed.run``: SFT trains data-parallel,
saves one model, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.train import common
from rlaif.train.common import read_metrics

pytestmark = pytest.mark.slow


def torchrun(logs, recipe, *sets):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "--log-dir", str(logs), "--redirects", "3", "-m", "rlaif.train.sft",
            "--config", str(recipe), *(x for s in sets for x in ("--set", s))]  # fmt: skip


def descendants(pid):
    """Process ids under ``pid`` (the ranks run in sessions of their own, not the launcher's)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def kill_all(proc):
    """SIGKILL the launcher and every rank at once, like a machine that is lost."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped


def rank_output(logs, rank):
    """Both streams of one rank (torch.distributed.run writes logs/RUN/attempt_0/RANK/)."""
    files = sorted(logs.glob(f"*/attempt_*/{rank}/std*.log"))
    assert files, f"no log of rank {rank}"
    return "".join(f.read_text(errors="replace") for f in files)


@pytest.fixture
def recipe(tiny_llama_dir, sl_cai_file, tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(
        f"model: {tiny_llama_dir}\ndataset: {sl_cai_file}\nper_device_train_batch_size: 2\n"
        "use_cpu: true\nbf16: false\nreport_to: []\n"
    )
    return path


def test_two_processes_train_and_save_one_model(recipe, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    done = subprocess.run(torchrun(logs, recipe, f"output_dir={out}", "max_steps=2"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft: process 0 of 2 done" in rank_output(logs, 0)
    assert "sft: process 1 of 2 done" in rank_output(logs, 1)
    # one model, written once: no per-rank copies, no checkpoints left behind
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")) == [
        "model.safetensors"
    ]
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]  # logged once, by the main process
    # 6 rows, 2 per process and step: a step covers 4 rows, so the epoch is half done after one
    # (a single process would be at 1/3)
    assert rows[0]["epoch"] == 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2


def test_killed_two_process_run_resumes_from_its_checkpoint(recipe, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    sets = [f"output_dir={out}", "save_steps=1", "max_steps=12"]  # twice the same command
    first = subprocess.Popen(torchrun(logs / "1", recipe, *sets),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while common.last_checkpoint(out) is None or common.last_checkpoint(out).name in (
            "checkpoint-1",
        ):
            assert first.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint-2 within 180 s"
            time.sleep(0.05)
        ranks = descendants(first.pid)
        assert len(ranks) == 2, ranks  # the launcher started two processes
    finally:
        kill_all(first)
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in ranks)  # gone, not left training as orphans
    step = int(common.last_checkpoint(out).name.split("-")[1])
    assert 2 <= step < 12 and not (out / "model.safetensors").exists()

    done = subprocess.run(torchrun(logs / "2", recipe, *sets),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sft: resuming after step {step} from {out / f'checkpoint-{step}'}" in rank_output(
        logs / "2", 0
    )
    assert "sft: process 1 of 2 done" in rank_output(logs / "2", 1)
    # the rows of the killed run up to its checkpoint, then the resumed steps: none twice
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 13))
    assert common.checkpoints(out) == []
    assert (out / "model.safetensors").is_file()
