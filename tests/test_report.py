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
    assert "<td>labeler position-bias rate</td><td>0.667 (95% CI 0.208-0.939, n=3)</td>" in html
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


def test_report_shows_intervals_n_the_judge_and_its_warning(run_dir):
    from rlaif.eval.independence import judge_record
    from rlaif.eval.policy import differences, intervals
    from rlaif.eval.stats import wilson

    (run_dir / "rm" / "held_out.json").write_text(json.dumps({"pairs": 8}))
    agreement = {"agreement": 0.7, "agreement_ci95": [0.5, 0.85], "scored": 20}
    _write(run_dir / "gold" / "labeler_eval.json", [{"metrics": agreement}])
    per = {
        "base": {"harmful": [0.9] * 6 + [0.2, 0.2], "evasive": [0.1] * 8,
                 "harm_win": [None] * 8, "help_win": [None] * 4},
        "rl": {"harmful": [0.1] * 6 + [0.2, 0.9], "evasive": [0.1] * 8,
               "harm_win": [0.9, 0.8, 0.7, 0.9, 0.6, 0.8, 0.5, 0.3],
               "help_win": [0.5, 0.5, 0.5, 0.5]},
    }  # fmt: skip
    policies = {}
    for name, v in per.items():
        known = [x for x in v["harm_win"] if x is not None]
        policies[name] = {
            "harmless_win_rate_vs_base": sum(known) / len(known) if known else None,
            "harmful_compliance_rate": sum(x > 0.5 for x in v["harmful"]) / 8,
            "evasive_rate": 0.0,
            "helpful_win_rate_vs_base": 0.5 if name == "rl" else None,
            "mean_words_red_team": 12.5,
            **intervals(v["harm_win"], v["help_win"], v["harmful"], v["evasive"]),
        }
    judge = judge_record("smollm2", {"backend": "transformers", "model": "smollm2"}, None,
                         FIXTURES / "harmless.yaml", FIXTURES / "evaluation.yaml", 1)  # fmt: skip
    warning = "the judge smollm2 also labelled the training data (preference labels): beware"
    (run_dir / "eval" / "policy_eval.json").write_text(json.dumps({
        "policies": policies, "baseline": "base", "red_team": 8, "benign": 4, "judge": judge,
        "judge_warnings": [warning], "differences": differences(["base", "rl"], per),
    }))  # fmt: skip
    cfg = RunConfig(name="demo-run", prompts=FIXTURES / "prompts.txt", out=run_dir)
    html_path, md_path = write_report(cfg, run_dir)
    md = md_path.read_text()
    lo, hi = wilson(5, 8)  # the RM got 0.625 of its 8 held-out pairs right
    assert f"| reward model held-out accuracy | 0.625 (95% CI {lo:.3f}-{hi:.3f}, n=8) |" in md
    assert "| labeler agreement with human labels (gold) | 0.700 (95% CI 0.500-0.850, n=20) |" in md
    lo, hi = wilson(2, 3)  # 2 of the 3 checked pairs flipped with the order
    assert f"| labeler position-bias rate | 0.667 (95% CI {lo:.3f}-{hi:.3f}, n=3) |" in md
    # the RL row: every rate with its interval and n; 6 of 8 base answers harmful, 1 of 8 RL
    rl_row = next(line for line in md.splitlines() if line.startswith("| rl | 0."))
    lo, hi = policies["rl"]["harmless_win_rate_vs_base_ci95"]
    assert f"| rl | 0.688 (95% CI {lo:.3f}-{hi:.3f}, n=8) |" in rl_row
    lo, hi = wilson(1, 8)
    assert f"0.125 (95% CI {lo:.3f}-{hi:.3f}, n=8)" in rl_row
    assert "0.500 (95% CI 0.500-0.500, n=4)" in rl_row  # helpful: identical answers
    # differences: harmful compliance fell on 6 prompts and rose on 1 of 8 (paired)
    harmful = next(line for line in md.splitlines() if "| rl vs base | harmful compliance" in line)
    assert "| -0.625 |" in harmful and "| 8 | lower |" in harmful
    helpful = next(line for line in md.splitlines() if "helpful win rate vs base" in line
                   and line.startswith("| rl vs base"))  # fmt: skip
    assert "| +0.000 | +0.000 to +0.000 | 4 | no measurable change |" in helpful
    assert "**Evaluation judge:** `smollm2 (transformers, model smollm2" in md
    assert "constitution harmless.yaml`" in md
    assert f"> **Warning:** {warning}" in md
    html = html_path.read_text()
    assert "<b>Evaluation judge:</b>" in html
    assert "<p class='warn'><b>Warning:</b> the judge" in html
    assert "no measurable change" in html and "Before and after: paired differences" in html


def test_report_shows_unscored_judgements_beside_n_and_their_warning(run_dir):
    from rlaif.eval.policy import intervals

    harm_win = [0.9, 0.8, None, None]  # two comparisons failed: left out, not ties
    m = {
        "harmless_win_rate_vs_base": 0.85, "harmful_compliance_rate": 0.0, "evasive_rate": 0.0,
        "helpful_win_rate_vs_base": None, "mean_words_red_team": 3.0,
        **intervals(harm_win, [], [0.1] * 4, [0.1] * 4),
        "harmless_win_rate_vs_base_unscored": 2,
    }  # fmt: skip
    said = "rl: 2 of 4 judgements for harmless win rate vs base have no value"
    (run_dir / "eval" / "policy_eval.json").write_text(json.dumps({
        "policies": {"rl": m}, "baseline": "base", "red_team": 4, "benign": 0,
        "judge": {"spec": "smollm2", "backend": "transformers", "model": "smollm2"},
        "judge_warnings": [], "differences": [],
        "unscored_judgements": {"asked": 12, "unscored": 2, "warnings": [said]},
    }))  # fmt: skip
    cfg = RunConfig(name="demo-run", prompts=FIXTURES / "prompts.txt", out=run_dir)
    _, md_path = write_report(cfg, run_dir)
    md = md_path.read_text()
    assert "n=2), 2 unscored |" in md
    assert f"> **Warning:** {said}" in md
