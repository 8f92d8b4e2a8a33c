"""The prepared GPU check runs end to end on CPU with a tiny model (so it cannot rot unseen)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_gpu_check_script_on_cpu_tiny(smollm2_tokenizer, tmp_path):
    tok = tmp_path / "tokenizer"
    smollm2_tokenizer.save_pretrained(tok)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tokenizer", str(tok),
         "--size", "tiny", "--steps", "2", "--batch", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    names = [r["trainer"] for r in report["results"]]
    assert names == ["sft", "rm (soft labels)", "dpo", "grpo", "rloo", "online-dpo", "ppo (ours)"]
    check_accounting(report)
    assert "tokens/s" in proc.stdout and "peak GiB" in proc.stdout


def check_accounting(report):
    """tokens/s means the same for every trainer: the tokens of a step (each sequence once) over
    the wall time between step ends, the first step untimed."""
    assert report["steps"] == 2 and report["batch"] == 4
    by_name = {r["trainer"]: r for r in report["results"]}
    for r in by_name.values():
        assert r["status"] == "ok", r
        assert r["steps"] == 2 and r["timed_steps"] == 1, r
        assert 0 < r["timed_s"] < r["wall_s"]
        rate = r["tokens_per_step"] / r["timed_s"]  # both rounded in the report, as is the rate
        assert r["tokens_per_s"] == pytest.approx(rate, rel=1e-3, abs=0.1)
    # the online trainers all train on 4 completions of `gen` tokens after the same prompts:
    # the same tokens per step, whatever passes (PPO epochs) the optimisation makes over them
    online = [by_name[n] for n in ("grpo", "rloo", "online-dpo", "ppo (ours)")]
    assert len({r["tokens_per_step"] for r in online}) == 1
    # counted through the chat template: every prompt is more than 10 tokens
    assert online[0]["tokens_per_step"] > 4 * (report["gen"] + 10)
    # a step trains on 4 pairs (RM, DPO) or 4 conversations (SFT): a pair has two sides
    assert by_name["rm (soft labels)"]["tokens_per_step"] == by_name["dpo"]["tokens_per_step"]
    assert by_name["dpo"]["tokens_per_step"] > by_name["sft"]["tokens_per_step"] > 4 * 10
    # PPO's step is timed whole: its rollout (generation, scoring) as well as its optimisation
    ppo = by_name["ppo (ours)"]
    assert 0 < ppo["optimise_s_per_step"] < ppo["s_per_step"]
