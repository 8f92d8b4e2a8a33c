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
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0 and r["steps"] == 2
    assert "tokens/s" in proc.stdout and "peak GiB" in proc.stdout
