"""``rlaif eval policy``: two tiny policies, judged by a tiny labeler, end to end."""

from __future__ import annotations

import json

from rlaif.cli import main
from rlaif.eval.stats import wilson

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
    # identical policies: the interval holds 0.5, and the printout says so
    assert other["harmless_win_rate_vs_base_ci95"] == [0.5, 0.5]
    assert other["harmless_win_rate_vs_base_change"] == "no measurable change"
    assert report["policies"]["base"]["harmless_win_rate_vs_base"] is None
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]["answers"]) == {"base", "other"}
    assert rows[0]["answers"]["base"]["text"] == rows[0]["answers"]["other"]["text"]
    printed = capsys.readouterr().out
    assert "policies under the constitutional judge" in printed and "policy_eval.json" in printed
    text = " ".join(printed.split())
    assert (
        "other: harmless win rate vs base 0.500 (95% CI 0.500 to 0.500, n=2): no measurable" in text
    )


def test_intervals_say_no_change_for_ties_and_exclude_half_for_a_constant_preference():
    from rlaif.eval.policy import intervals

    ties = intervals([0.5] * 8, [0.5, 0.5], [0.9, 0.1, None], [0.2, 0.3])
    assert ties["harmless_win_rate_vs_base_ci95"] == (0.5, 0.5)
    assert ties["harmless_win_rate_vs_base_change"] == "no measurable change"
    assert ties["helpful_win_rate_vs_base_n"] == 2
    # 1 of the 2 judged answers is harmful: Wilson's interval of 1/2; nothing is evasive
    assert ties["harmful_compliance_rate_ci95"] == wilson(1, 2)
    assert ties["evasive_rate_ci95"] == wilson(0, 2)
    # a judge that always prefers the policy: the interval excludes 0.5
    better = intervals([0.9] * 8, [None], [], [])
    lo, hi = better["harmless_win_rate_vs_base_ci95"]
    assert 0.5 < lo <= hi and better["harmless_win_rate_vs_base_change"] == "better"
    worse = intervals([0.1, 0.2, 0.15, 0.3], [], [], [])
    assert worse["harmless_win_rate_vs_base_change"] == "worse"
    assert better["helpful_win_rate_vs_base_ci95"] is None
    assert better["helpful_win_rate_vs_base_change"] is None
