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


def test_an_edited_gold_label_is_judged_again_not_resumed(scripted, tmp_path, capsys):
    """Resume is keyed on the gold file's content: flip one label, rerun the same command into
    the same folder, and the agreement changes (the old rows are not reused)."""
    gold = tmp_path / "gold.jsonl"
    lines = (FIXTURES / "gold_pairs.jsonl").read_text().splitlines()
    gold.write_text("\n".join(lines) + "\n")
    args = ["eval", "labeler", "--gold", str(gold), "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    first = json.loads((tmp_path / "ev" / "labeler_eval.json").read_text())["metrics"]
    row = json.loads(lines[0])
    row["chosen"], row["rejected"] = row["rejected"], row["chosen"]  # one label edited
    gold.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    assert main(args) == 0
    second = json.loads((tmp_path / "ev" / "labeler_eval.json").read_text())["metrics"]
    assert first["agreement"] == 1.0 and second["agreement"] == pytest.approx(2 / 3)


def test_unscored_rows_are_reported_and_counted_as_wrong_beside(monkeypatch, tmp_path, capsys):
    import math

    def no_probability_for_the_insult(conv, options):
        if "insult" in conv[-2]["content"]:
            return [-math.inf, -math.inf]
        return prior_towards_a(conv, options)

    async def run(cfg, on_row=None, on_start=None):
        lab = FakeLabeler(logprobs=no_probability_for_the_insult)
        return await run_labeler_eval(cfg, on_row, on_start, lab)

    monkeypatch.setattr(cli_eval, "run_labeler_eval", run)
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl")]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "labeler_eval.json").read_text())["metrics"]
    assert (m["scored"], m["unscored"]) == (2, 1)
    assert m["agreement"] == 1.0 and m["agreement_all"] == pytest.approx(2 / 3)
    text = " ".join(capsys.readouterr().out.split())
    assert "agreement, unscored as wrong │ 66.7% (95% CI" in text
