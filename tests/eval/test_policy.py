"""``rlaif eval policy``'s numbers: intervals and their verdicts (the end-to-end run of two
identical policies is in ``test_policy_judge.py``)."""

from __future__ import annotations

from rlaif.eval.stats import wilson


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
