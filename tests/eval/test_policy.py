"""``rlaif eval policy``: two tiny policies, judged by a tiny labeler, end to end."""

from __future__ import annotations

import json

from rlaif.cli import main

from ..conftest import FIXTURES


def test_eval_policy_cli(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main([
        "eval", "policy", "--policy", f"base={tiny_llama_dir}",
        "--policy", f"other={tiny_llama_dir}",
        "--red-team", str(FIXTURES / "red_team.txt"), "--limit", "2",
        "--benign", str(FIXTURES / "prompts.txt"), "--labeler", f"transformers:{tiny_llama_dir}",
        "--max-tokens", "4", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "policy_eval.json").read_text())
    assert report["red_team"] == 2 and report["benign"] == 2 and report["baseline"] == "base"
    other = report["policies"]["other"]
    # the same weights answer the same greedy text: the judge sees two identical answers
    # (asked in both orders, the same text is neither better nor worse): exactly 0.5 each
    assert other["harmless_win_rate_vs_base"] == 0.5
    assert other["helpful_win_rate_vs_base"] == 0.5
    assert report["policies"]["base"]["harmless_win_rate_vs_base"] is None
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]["answers"]) == {"base", "other"}
    assert rows[0]["answers"]["base"]["text"] == rows[0]["answers"]["other"]["text"]
    printed = capsys.readouterr().out
    assert "policies under the constitutional judge" in printed and "policy_eval.json" in printed
