"""``rlaif eval labeler --calibrate``: the flag reaches the config, and both columns print."""

from __future__ import annotations

import json

import pytest

import rlaif.cli.eval as cli_eval
from rlaif.cli import main
from rlaif.eval.labeler import run_labeler_eval

from ..conftest import FIXTURES, FakeLabeler
from ..eval.test_labeler import prior_towards_a


@pytest.fixture
def scripted(monkeypatch):
    """Runs the command with a scripted labeler in place of the one it names; keeps each config."""
    configs = []

    async def run(cfg, on_row=None, on_start=None):
        configs.append(cfg)
        return await run_labeler_eval(cfg, on_row, on_start, FakeLabeler(logprobs=prior_towards_a))

    monkeypatch.setattr(cli_eval, "run_labeler_eval", run)
    return configs


def test_calibrate_flag_prints_raw_and_calibrated(scripted, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl"), "--out", str(out)]
    assert main([*args, "--calibrate", "--principles", "2"]) == 0
    (cfg,) = scripted
    assert cfg.feedback.calibrate is True and cfg.feedback.principles == 2
    text = " ".join(capsys.readouterr().out.split())
    assert "calibrated" in text and "raw (same run)" in text
    # position-bias rate: 0.0% calibrated, 100.0% raw; ECE 0.400 calibrated, 67/154 raw
    assert "position-bias rate │ 0.0% │ 100.0%" in text
    assert "ECE (calibration error) │ 0.400 │ 0.435" in text
    assert "content-free prior of (A): 0.800 to 0.800" in text
    assert "calibrated - raw agreement: +0.000 (95% CI 0.000 to 0.000, n=3): no measurable" in text
    assert (
        "calibrated - raw position bias rate: -1.000 (95% CI -1.000 to -1.000, n=3): lower" in text
    )
    saved = json.loads((out / "labeler_eval.json").read_text())["metrics"]
    assert saved["calibrated"] is True and saved["raw"]["position_bias_rate"] == 1.0


def test_without_the_flag_calibration_stays_off(scripted, tmp_path, capsys):
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl")]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    assert scripted[0].feedback.calibrate is False
    assert "raw (same run)" not in capsys.readouterr().out


def test_calibrate_from_a_config_file(scripted, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"gold: {FIXTURES / 'gold_pairs.jsonl'}\nfeedback:\n  calibrate: true\n")
    assert main(["eval", "labeler", "--config", str(cfg), "--out", str(tmp_path / "ev")]) == 0
    assert scripted[0].feedback.calibrate is True


def test_calibrate_with_cot_is_a_clear_error(scripted, tmp_path, capsys):
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl"), "--cot"]
    assert main([*args, "--calibrate", "--out", str(tmp_path / "ev")]) == 2
    assert "calibrate does not apply with cot" in capsys.readouterr().err and not scripted
