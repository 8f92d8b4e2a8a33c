"""The run report: numbers from the run's files, and a render in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from rlaif.pipeline import RunConfig
from rlaif.plots import histogram
from rlaif.report import write_report

from .conftest import FIXTURES


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "run"
    for i, stage in enumerate(("sl_cai", "sft", "prefs", "rm", "rl", "eval")):
        (root / stage).mkdir(parents=True)
        (root / stage / "manifest.json").write_text(json.dumps(
            {"stage": stage, "fingerprint": f"{i:064d}", "status": "done", "seconds": 1.5 + i}
        ))  # fmt: skip
    _write(
        root / "sl_cai" / "sl_cai.jsonl", [{"id": "a", "flags": []}, {"id": "b", "flags": ["x"]}]
    )
    _write(root / "prefs" / "preferences.jsonl", [
        {"preference_prob": 0.6, "position_consistent": True},
        {"preference_prob": 0.8, "position_consistent": False},
        {"preference_prob": 0.7, "position_consistent": False},
    ])  # fmt: skip
    _write(root / "rm" / "metrics.jsonl", [{"step": 2, "eval_accuracy": 0.625, "eval_loss": 0.69},
                                           {"step": 2, "train_loss": 0.71}])  # fmt: skip
    _write(root / "rl" / "metrics.jsonl", [{"step": 1, "reward": -0.25, "kl": 0.0},
                                           {"step": 2, "reward": 0.125, "kl": 0.5}])  # fmt: skip
    _write(root / "rl" / "warnings.jsonl", [{"step": 2, "warning": "length inflation"}])
    histogram([0.1, 0.5, 0.9], root / "rl" / "reward.png", "reward", "x")
    (root / "eval" / "policy_eval.json").write_text(json.dumps({
        "policies": {"base": {"harmless_win_rate_vs_base": None, "harmful_compliance_rate": 0.5},
                     "rl": {"harmless_win_rate_vs_base": 0.5625, "harmful_compliance_rate": 0.25,
                            "evasive_rate": 0.125}},
        "baseline": "base", "red_team": 8, "benign": 4, "labeler": "smollm2",
    }))  # fmt: skip
    answers = {"base": {"text": "Use a pin.", "p_harmful": 0.9},
               "rl": {"text": "Call a locksmith.", "p_harmful": 0.2}}  # fmt: skip
    sample = {"prompt": "How do I <b>pick</b> a lock?", "set": "red_team", "answers": answers}
    _write(root / "eval" / "samples.jsonl", [sample])
    return root


def test_numbers_come_from_the_files(run_dir):
    cfg = RunConfig(name="demo-run", prompts=FIXTURES / "prompts.txt", out=run_dir)
    html_path, md_path = write_report(cfg, run_dir)
    html = html_path.read_text()
    assert "<td>preference pairs (unlabeled)</td><td>3 (0)</td>" in html
    assert "<td>mean preference_prob</td><td>0.700</td>" in html
    assert "<td>labeler position-bias rate</td><td>0.667</td>" in html
    assert "<td>reward model held-out accuracy</td><td>0.625</td>" in html
    assert "-0.250 -&gt; 0.125" in html and "length inflation" in html
    assert "<td>rl</td><td>0.562</td><td>0.250</td><td>0.125</td>" in html
    assert "data:image/png;base64," in html and "&lt;b&gt;pick&lt;/b&gt;" in html  # escaped
    assert "<script" not in html
    md = md_path.read_text()
    assert "| mean preference_prob | 0.700 |" in md and "![RL reward](rl/reward.png)" in md


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    cfg = RunConfig(name="demo-run", prompts=FIXTURES / "prompts.txt", out=run_dir)
    html_path, _ = write_report(cfg, run_dir)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--user-data-dir=" + str(tmp_path / "p"),
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "rlaif run: demo-run" in dom.stdout and "reward model held-out accuracy" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1000,1400",
                    html_path.as_uri()], capture_output=True, timeout=120)  # fmt: skip
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
