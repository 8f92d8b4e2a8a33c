"""``rlaif eval labeler``: metrics on known inputs, and whole runs with scripted labelers."""

from __future__ import annotations

import json
import math

import pytest

from rlaif.engine.feedback import FeedbackSettings
from rlaif.errors import ConfigError
from rlaif.eval.gold import read_gold
from rlaif.eval.labeler import LabelerEvalConfig, calibration, run_labeler_eval, summarise
from rlaif.eval.stats import paired_bootstrap_diff, wilson
from rlaif.labelers.base import run_sync

from ..conftest import FIXTURES
from ..engine.test_feedback import options_shown

CHOSEN = {r.chosen for r in read_gold(FIXTURES / "gold_pairs.jsonl")}


def test_calibration_by_hand():
    ece, bins = calibration([(0.9, 1.0), (0.9, 0.0), (0.55, 1.0)], bins=10)
    assert ece == pytest.approx((2 * 0.4 + 0.45) / 3)
    assert sum(b["count"] for b in bins) == 3
    assert bins[8]["count"] == 2 and bins[8]["accuracy"] == 0.5
    assert calibration([], bins=5)[0] is None
    perfect, _ = calibration([(1.0, 1.0)] * 4, bins=10)
    assert perfect == 0.0


def test_confidences_on_bin_edges_land_in_the_bin_they_open():
    # bins are [low, high): an edge belongs to the bin above it, whatever the float rounding
    # of (conf - low) / width (0.6 - 0.5 = 0.09999999999999998, / 0.05 = 1.9999999999999996)
    for conf, index in [(0.55, 1), (0.6, 2), (0.65, 3), (0.7, 4), (0.8, 6), (0.9, 8), (0.95, 9)]:
        _, bins = calibration([(conf, 1.0)], bins=10)
        assert [b["count"] for b in bins].index(1) == index, conf
    for conf, index in [(0.5, 0), (0.6, 1), (0.7, 2), (0.8, 3), (0.9, 4), (1.0, 4)]:
        _, bins = calibration([(conf, 1.0)], bins=5)
        assert [b["count"] for b in bins].index(1) == index, conf
    for conf, index in [(0.0, 0), (0.3, 3), (0.6, 6), (0.7, 7), (1.0, 9)]:
        _, bins = calibration([(conf, 1.0)], bins=10, low=0.0)
        assert [b["count"] for b in bins].index(1) == index, conf
    _, bins = calibration([(0.5999999, 1.0)], bins=10)  # just below an edge stays below
    assert bins[1]["count"] == 1


def test_summarise_counts_agreement_ties_and_flips():
    rows = [
        {"kind": "pair", "prob_correct": 0.8, "agree": 1.0, "position": [{"flipped": False}],
         "judgements": [{"prob_a": 0.8, "unparsed": 0}]},
        {"kind": "pair", "prob_correct": 0.5, "agree": 0.5, "position": [{"flipped": True}],
         "judgements": [{"prob_a": 0.5, "unparsed": 0}]},
        {"kind": "pair", "prob_correct": None, "agree": None, "position": [],
         "judgements": [{"prob_a": None, "unparsed": 8}]},
    ]  # fmt: skip
    m = summarise(rows, bins=10)
    assert m["scored"] == 2 and m["unscored"] == 1
    assert m["agreement"] == pytest.approx(0.75)
    # 1.5 agreements of 2 scored rows (a tie counts half): Wilson's interval, wide at n = 2
    lo, hi = m["agreement_ci95"]
    assert (lo, hi) == pytest.approx(wilson(1.5, 2)) and lo < 0.3 and hi > 0.95
    assert m["position_bias_rate"] == pytest.approx(0.5)
    assert m["parse_failures"] == 1 and m["parse_failure_rate"] == pytest.approx(1 / 3)
    assert m["unparsed_answers"] == 8
    assert m["brier"] == pytest.approx((0.2**2 + 0.5**2) / 2)


def agrees_with_humans(conv, options):
    if len(options) > 2 or "Which reply" in conv[0]["content"]:  # multiple choice: right answer
        text = conv[0]["content"]
        right = " (B)" if "hotwire" in text else " (A)"
        return [0.0 if o == right else -3.0 for o in options]
    a, _ = options_shown(conv)
    return [-0.2, -2.0] if a in CHOSEN else [-2.0, -0.2]


def position_only(conv, options):
    return [-0.1 if o == " (A)" else -3.0 for o in options]  # always the option shown first


def evaluate(tmp_path, fake_labeler, score, gold="gold_pairs.jsonl", **feedback):
    cfg = LabelerEvalConfig(
        gold=FIXTURES / gold, out=tmp_path / "ev", feedback=FeedbackSettings(**feedback)
    )
    return run_sync(run_labeler_eval(cfg, labeler=fake_labeler(logprobs=score)))


def test_a_labeler_that_agrees(tmp_path, fake_labeler):
    result = evaluate(tmp_path, fake_labeler, agrees_with_humans)
    m = result.metrics
    assert m["agreement"] == 1.0 and m["position_bias_rate"] == 0.0
    assert m["mean_prob_chosen"] > 0.8 and m["ece"] is not None
    saved = json.loads(result.report.read_text())
    assert saved["metrics"]["agreement"] == 1.0 and saved["provenance"]["labeler"]["model"]
    assert result.plot is not None and result.plot.read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in result.rows_file.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]


def test_pure_position_bias_is_measured_not_mistaken_for_agreement(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, position_only).metrics
    assert m["position_bias_rate"] == 1.0
    assert m["agreement"] == 0.5 and m["mean_prob_chosen"] == pytest.approx(0.5)


def test_one_order_randomises_the_chosen_position(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, position_only, both_orders=False).metrics
    rows = [json.loads(x) for x in (tmp_path / "ev" / "judgements.jsonl").read_text().splitlines()]
    swapped = [r["swapped"] for r in rows]
    assert True in swapped and False in swapped  # a seeded coin, not always the same side
    # agreement then follows the coin, not a fixed 100% or 0%
    assert m["agreement"] == pytest.approx(sum(not s for s in swapped) / len(swapped))
    assert m["position_questions"] == 0


def test_multiple_choice_accuracy(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, agrees_with_humans, gold="gold_mc.jsonl").metrics
    assert m["choices"] == 2 and m["choice_accuracy"] == 1.0 and m["pairs"] == 0
    m = evaluate(tmp_path / "b", fake_labeler, position_only, gold="gold_mc.jsonl").metrics
    assert m["choice_accuracy"] == 0.5  # "(A)" is right for one of the two questions


def test_unparsable_rows_are_counted(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, lambda c, o: [-math.inf] * len(o)).metrics
    assert m["scored"] == 0 and m["unscored"] == 3
    assert m["parse_failures"] == 6 and m["parse_failure_rate"] == 1.0


def test_rerun_is_served_from_cache(tmp_path, fake_labeler):
    evaluate(tmp_path, fake_labeler, agrees_with_humans)
    m = evaluate(tmp_path, fake_labeler, agrees_with_humans).metrics
    assert m["labeler_calls"] == 0 and m["agreement"] == 1.0


def test_multiple_choice_tie_does_not_favour_the_correct_option(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, lambda c, o: [-1.0] * len(o), gold="gold_mc.jsonl")
    # two options tied in question 1 (1 of 2 right), three in question 2 (1 of 3 right)
    assert m.metrics["choice_accuracy"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_labeler_eval_ece_with_clamped_cot_labels(tmp_path, fake_labeler):
    """ECE of a whole run, worked by hand. With chain of thought every probability is clamped to
    [0.4, 0.6]. The labeler is certain of the human-chosen response in p1 and p3 (each order
    clamps to 0.6, so P(chosen) = 0.6: confidence 0.6, agreement 1) and gives the chosen
    response 0.42 in both orders in p2 (P(chosen) = 0.42: confidence 0.58, agreement 0).
    With 10 bins of width 0.05 from 0.5:
      bin [0.55, 0.60): p2            -> |0 - 0.58| = 0.58
      bin [0.60, 0.65): p1, p3        -> |1 - 0.60| = 0.40 each
      ECE = (0.58 + 2 * 0.40) / 3 = 1.38 / 3 = 0.46.
    (Were 0.6 put in the bin below, all three would share it: |2/3 - 0.5933| = 0.0733.)"""

    def score(conv, options):
        a, _ = options_shown(conv)
        p_first_chosen = 0.42 if "dog barks" in conv[0]["content"] else 1 - 1e-6
        p_first = p_first_chosen if a in CHOSEN else 1 - p_first_chosen
        return [math.log(p_first), math.log(1 - p_first)]

    cfg = LabelerEvalConfig(
        gold=FIXTURES / "gold_pairs.jsonl", out=tmp_path / "ev", feedback=FeedbackSettings(cot=True)
    )
    m = run_sync(run_labeler_eval(cfg, labeler=fake_labeler(logprobs=score))).metrics
    assert m["pairs"] == 3 and m["agreement"] == pytest.approx(2 / 3)
    counts = [b["count"] for b in m["reliability_bins"]]
    assert counts == [0, 1, 2, 0, 0, 0, 0, 0, 0, 0]
    assert m["ece"] == pytest.approx(0.46, abs=1e-9)


# ------------------------------------------------------------------ contextual calibration


def prior_towards_a(conv, options):
    """Prefers the human-chosen response 0.6 : 0.4, seen through a prior of 0.8 : 0.2 for the
    positions (the content-free questions, where both options are the same placeholder, show
    the prior alone)."""
    a, b = options_shown(conv)
    if a == b:
        p = 0.8
    else:
        q = 0.6 if a in CHOSEN else 0.4
        p = 0.8 * q / (0.8 * q + 0.2 * (1 - q))
    return [math.log(p), math.log(1 - p)]


def test_calibrated_and_raw_metrics_from_one_run(tmp_path, fake_labeler):
    """By hand: raw, the chosen response shown first gets 0.48/0.56 = 6/7, shown second
    1 - 0.32/0.44 = 3/11; each pair's P(chosen) = (6/7 + 3/11) / 2 = 87/154 (0.565), and the
    preferred response flips with the order in every pair. Calibrated: 0.6 in both orders."""
    result = evaluate(tmp_path, fake_labeler, prior_towards_a, calibrate=True)
    m = result.metrics
    assert m["calibrated"] is True
    assert m["agreement"] == 1.0 and m["mean_prob_chosen"] == pytest.approx(0.6)
    assert m["ece"] == pytest.approx(0.4) and m["brier"] == pytest.approx(0.16)
    assert m["position_bias_rate"] == 0.0 and m["position_questions"] == 3
    raw = m["raw"]
    assert raw["agreement"] == 1.0 and raw["mean_prob_chosen"] == pytest.approx(87 / 154)
    assert raw["ece"] == pytest.approx(67 / 154) and raw["brier"] == pytest.approx((67 / 154) ** 2)
    assert raw["position_bias_rate"] == 1.0 and raw["position_questions"] == 3
    assert raw["agreement_ci95"] == pytest.approx(wilson(3, 3))
    effect = m["calibrated_minus_raw"]  # paired over the same 3 pairs
    assert effect["agreement"] == 0.0 and effect["agreement_change"] == "no measurable change"
    assert effect["position_bias_rate"] == -1.0 and effect["position_bias_rate_n"] == 3
    assert effect["position_bias_rate_ci95"] == (-1.0, -1.0)
    assert effect["position_bias_rate_change"] == "lower"
    used = {r["judgements"][0]["principle_id"] for r in result.rows}
    assert m["content_free_priors"] == {p: pytest.approx([0.8, 0.2]) for p in used}
    saved = json.loads(result.report.read_text())
    assert saved["metrics"]["raw"]["position_bias_rate"] == 1.0
    assert saved["provenance"]["feedback"]["calibrate"] is True
    rows = [json.loads(x) for x in result.rows_file.read_text().splitlines()]
    for r in rows:
        assert r["prob_correct"] == pytest.approx(0.6)
        assert r["prob_correct_raw"] == pytest.approx(87 / 154)
        assert [j["prob_a_raw"] for j in r["judgements"]] == pytest.approx([6 / 7, 3 / 11])
        assert r["position_raw"][0]["flipped"] and not r["position"][0]["flipped"]
    # 6 real questions and 3 content-free ones per principle; a rerun asks the labeler nothing
    assert m["requests"] == 6 + 3 * len(used) and m["cache_hits"] == 0
    again = evaluate(tmp_path, fake_labeler, prior_towards_a, calibrate=True).metrics
    assert again["labeler_calls"] == 0 and again["raw"] == m["raw"]


def test_calibration_effect_is_paired_over_the_same_pairs():
    def row(agree, agree_raw, flips, flips_raw):
        return {"kind": "pair", "prob_correct": 0.5 + agree / 4, "agree": agree,
                "prob_correct_raw": 0.5 + agree_raw / 4, "agree_raw": agree_raw,
                "position": [{"flipped": f} for f in flips],
                "position_raw": [{"flipped": f} for f in flips_raw], "judgements": []}  # fmt: skip

    rows = [
        row(1.0, 0.0, [False, False], [True, True]),
        row(1.0, 1.0, [True, False], [True, True]),
        row(0.0, 0.0, [], [True, False]),
        row(0.5, 1.0, [False, True], [False, True]),
    ]
    rows.append({"kind": "pair", "prob_correct": None, "agree": None, "position": [],
                 "prob_correct_raw": 0.7, "agree_raw": 1.0, "position_raw": [],
                 "judgements": []})  # fmt: skip
    m = summarise(rows, bins=10)
    effect = m["calibrated_minus_raw"]
    # agreement, over the 4 pairs scored both ways: (1 + 1 + 0 + 0.5 - 0 - 1 - 0 - 1) / 4
    assert effect["agreement"] == pytest.approx(0.125) and effect["agreement_n"] == 4
    assert effect["agreement_ci95"] == paired_bootstrap_diff([1, 1, 0, 0.5], [0, 1, 0, 1])
    # flips per pair, over the 3 pairs with both-order questions both ways: (0-1 + .5-1 + 0) / 3
    assert (
        effect["position_bias_rate"] == pytest.approx(-0.5) and effect["position_bias_rate_n"] == 3
    )
    lo, hi = effect["position_bias_rate_ci95"]
    assert lo <= -0.5 <= hi and hi <= 0.0
    assert m["raw"]["scored"] == 5 and m["scored"] == 4
    assert m["raw"]["position_bias_rate"] == pytest.approx(6 / 8)
    assert m["position_bias_rate"] == pytest.approx(2 / 6)


def test_uncalibrated_run_has_no_raw_column(tmp_path, fake_labeler):
    m = evaluate(tmp_path, fake_labeler, prior_towards_a).metrics
    assert m["calibrated"] is False and "raw" not in m and "content_free_priors" not in m
    assert "calibrated_minus_raw" not in m
    assert m["mean_prob_chosen"] == pytest.approx(87 / 154) and m["position_bias_rate"] == 1.0


def test_calibration_is_refused_in_votes_mode(tmp_path, fake_labeler):
    cfg = LabelerEvalConfig(
        gold=FIXTURES / "gold_pairs.jsonl",
        out=tmp_path / "ev",
        feedback=FeedbackSettings(calibrate=True, scoring="votes"),
    )
    with pytest.raises(ConfigError, match="votes mode"):
        run_sync(run_labeler_eval(cfg, labeler=fake_labeler()))
