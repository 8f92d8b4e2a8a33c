"""``rlaif generate prefs`` and ``rlaif eval labeler`` from the command line."""

from __future__ import annotations

import json

from rlaif.cli import main
from rlaif.data.provenance import read_rows

from ..conftest import FIXTURES


def test_generate_prefs_flags_and_summary(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "prefs"
    code = main([
        "generate", "prefs", "--prompts", str(FIXTURES / "prompts.txt"), "--limit", "2",
        "--labeler", f"transformers:{tiny_llama_dir}", "--max-tokens", "6",
        "--principles", "2", "--cot", "--clamp", "0.3", "0.7", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    rows = read_rows(out / "preferences.jsonl")
    assert len(rows) == 2
    fb = rows[0]["provenance"]["feedback"]
    assert fb["principles"] == 2 and fb["cot"] and (fb["clamp_low"], fb["clamp_high"]) == (0.3, 0.7)
    for r in rows:
        assert len(r["judgements"]) == 4
        assert all(0.3 <= j["prob_first"] <= 0.7 for j in r["judgements"])
        assert all(isinstance(j["reasoning"], str) for j in r["judgements"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2 rows (0 resumed)" in text and "preference_prob: mean" in text
    assert "wrote" in text and "preference_prob.png" in text.replace(" ", "")


def test_generate_prefs_config_file_feedback_section(tiny_llama_dir, tmp_path):
    cfg = tmp_path / "prefs.yaml"
    cfg.write_text(
        f"prompts: {FIXTURES / 'prompts.txt'}\nlimit: 1\n"
        f"labeler: transformers:{tiny_llama_dir}\nmax_tokens: 4\n"
        "feedback:\n  principles: 3\n  both_orders: false\n"
        f"out: {tmp_path / 'o'}\n"
    )
    assert main(["generate", "prefs", "--config", str(cfg), "--principles", "2"]) == 0
    row = json.loads((tmp_path / "o" / "preferences.jsonl").read_text().splitlines()[0])
    assert len(row["judgements"]) == 2  # the flag won over the file, the file's order setting held


def test_generate_prefs_typo_in_feedback_section(tmp_path, capsys):
    cfg = tmp_path / "prefs.yaml"
    cfg.write_text("prompts: x.txt\nfeedback:\n  principels: 3\n")
    assert main(["generate", "prefs", "--config", str(cfg)]) == 2
    assert f"{cfg}:3: in feedback: unknown key 'principels'" in capsys.readouterr().err


def test_eval_labeler_prints_the_metrics(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", "labeler", "--gold", str(FIXTURES / "gold_pairs.jsonl"),
            "--labeler", f"transformers:{tiny_llama_dir}", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("agreement with the human label", "ECE", "position-bias rate", "parse failures"):
        assert name in text
    report = json.loads((out / "labeler_eval.json").read_text())["metrics"]
    assert report["rows"] == 3 and report["scored"] == 3
    lo, hi = report["agreement_ci95"]
    assert lo <= report["agreement"] <= hi
    assert f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%, n=3)" in text
    assert 0.0 <= report["agreement"] <= 1.0 and 0.0 <= report["position_bias_rate"] <= 1.0
    assert (out / "reliability.png").is_file()
    assert main([*args, "--limit", "2"]) == 0  # a smaller rerun: all from the cache
    assert json.loads((out / "labeler_eval.json").read_text())["metrics"]["labeler_calls"] == 0


def test_eval_labeler_bad_gold_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "gold.jsonl"
    bad.write_text('{"question": "?"}\n')
    assert main(["eval", "labeler", "--gold", str(bad)]) == 2
    assert f"{bad}:1: cannot tell the gold format" in capsys.readouterr().err


def test_shipped_prefs_recipe_is_a_valid_config():
    from rlaif.cli import build_parser
    from rlaif.cli.generate import config_from_args
    from rlaif.engine.prefs import PrefsConfig

    from ..conftest import REPO

    args = build_parser().parse_args(
        ["generate", "prefs", "--config", str(REPO / "recipes" / "prefs.yaml"), "--cot"]
    )
    cfg = config_from_args(args, model=PrefsConfig)
    assert cfg.responses == 2 and cfg.feedback.both_orders and cfg.feedback.cot
    assert (REPO / cfg.prompts).is_file() and (REPO / cfg.constitution).is_file()


def test_generate_prefs_calibrate_keeps_the_raw_probability_beside(tiny_llama_dir, tmp_path):
    out = tmp_path / "prefs"
    code = main([
        "generate", "prefs", "--prompts", str(FIXTURES / "prompts.txt"), "--limit", "2",
        "--labeler", f"transformers:{tiny_llama_dir}", "--max-tokens", "4",
        "--calibrate", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    rows = read_rows(out / "preferences.jsonl")
    assert rows[0]["provenance"]["feedback"]["calibrate"] is True
    for r in rows:
        for j in r["judgements"]:
            prior = j["prior"]
            assert len(prior) == 2 and abs(sum(prior) - 1) < 1e-6
            # the calibrated first-position probability is the raw one with the prior divided out
            raw = j["prob_first_raw"]
            w = [raw / prior[0], (1 - raw) / prior[1]]
            assert abs(j["prob_first"] - w[0] / sum(w)) < 1e-6
