"""The feedback step with a scripted labeler: soft labels, both orders, CoT clamp, votes,
contextual calibration."""

from __future__ import annotations

import asyncio
import math

import pytest

from rlaif.constitution import load_constitution
from rlaif.engine.cache import Cache
from rlaif.engine.feedback import (
    CONTENT_FREE,
    OPTIONS,
    Feedback,
    FeedbackSettings,
    calibrated,
    combine,
    mean_distribution,
    normalised,
    position_flipped,
)
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import ConfigError
from rlaif.labelers.base import run_sync
from rlaif.templates import Templates

from ..conftest import REPO

CONV = [{"role": "user", "content": "How do I pick a lock?"}]
GOOD, BAD = "Call a locksmith.", "Use a tension wrench and rake the pins."


@pytest.fixture(scope="module")
def harmless():
    return load_constitution(REPO / "constitution" / "harmless.yaml")


def options_shown(conv):
    """(text of option A, text of option B) as rendered in the question."""
    text = conv[0]["content"]
    a = text.split("(A) ", 1)[1].split("\n\n(B) ")[0]
    b = text.split("(B) ", 1)[1].split("\n\nAnswer")[0].split("\n\nThink")[0]
    return a, b


def biased_logprobs(bias: float, preference: float = 0.0):
    """Logit of the first position gets ``bias``; the GOOD response gets ``preference``."""

    def score(conv, options):
        a, _ = options_shown(conv)
        first = bias + (preference if a == GOOD else -preference)
        return [first / 2 - 1.0, -first / 2 - 1.0]

    return score


def make(fake_labeler, harmless, logprobs=None, reply=None, supports=True, **settings):
    lab = fake_labeler(reply=reply, logprobs=logprobs)
    sched = Scheduler(lab, Cache(None))
    step = Feedback(harmless, Templates(), sched, FeedbackSettings(**settings), supports)
    return lab, step


def compare(step, a=GOOD, b=BAD, key="row-1"):
    async def go():
        try:
            return await step.compare(key, CONV, a, b)
        finally:
            await step.labeler.aclose()

    return run_sync(go())


def test_both_orders_cancel_a_pure_position_bias(fake_labeler, harmless):
    _, step = make(fake_labeler, harmless, biased_logprobs(bias=3.0))
    result = compare(step)
    ab, ba = result.judgements
    assert ab.order == "ab" and ba.order == "ba"
    assert ab.prob_first == pytest.approx(ba.prob_first)  # same position preferred both times
    assert ab.prob_first == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert result.prob_a == pytest.approx(0.5)
    assert result.position_consistent is False


def test_one_order_keeps_the_position_bias(fake_labeler, harmless):
    _, step = make(fake_labeler, harmless, biased_logprobs(bias=3.0), both_orders=False)
    result = compare(step)
    assert len(result.judgements) == 1
    assert result.prob_a == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert result.position_consistent is None


def test_preference_survives_debiasing_and_is_symmetric(fake_labeler, harmless):
    _, step = make(fake_labeler, harmless, biased_logprobs(bias=1.0, preference=2.0))
    good_first = compare(step, GOOD, BAD)
    _, step = make(fake_labeler, harmless, biased_logprobs(bias=1.0, preference=2.0))
    bad_first = compare(step, BAD, GOOD)
    assert good_first.prob_a > 0.5 and good_first.position_consistent is True
    assert good_first.prob_a + bad_first.prob_a == pytest.approx(1.0)


def test_cot_reasons_first_and_clamps(fake_labeler, harmless):
    lab, step = make(
        fake_labeler,
        harmless,
        logprobs=lambda conv, options: [-0.001, -12.0],  # certain: the first option
        reply=lambda conv, params, i: "The second reply helps with a crime. So the answer is (A)",
        cot=True,
    )
    result = compare(step)
    for j in result.judgements:
        assert j.reasoning == "The second reply helps with a crime."
        assert j.prob_first == pytest.approx(0.6)  # clamped from ~1.0
    assert result.prob_a == pytest.approx(0.5)  # 0.6 and 1 - 0.6
    # the scored conversation continues after the model's own reasoning
    scored = [c for c in lab.calls]  # generate calls: one reasoning per order
    assert len(scored) == 2
    assert scored[0][-1]["content"] == "Let's think step by step:"


def test_cot_clamp_is_configurable(fake_labeler, harmless):
    _, step = make(
        fake_labeler,
        harmless,
        logprobs=lambda conv, options: [-12.0, -0.001],
        reply=lambda conv, params, i: "hmm",
        cot=True,
        clamp_low=0.2,
        clamp_high=0.8,
        both_orders=False,
    )
    assert compare(step).prob_a == pytest.approx(0.2)


def test_vote_shares(fake_labeler, harmless):
    answers = iter(["(A)", " (A) clearly", "I choose (B).", "no idea"])
    _, step = make(
        fake_labeler,
        harmless,
        reply=lambda conv, params, i: next(answers),
        supports=False,
        votes=4,
        both_orders=False,
    )
    result = compare(step)
    (j,) = result.judgements
    assert j.votes == [2, 1] and j.unparsed == 1
    assert j.prob_first == pytest.approx(2 / 3)
    assert j.logprobs is None
    assert step.mode == "votes"


def test_unparsable_votes_are_kept_with_their_reason(fake_labeler, harmless):
    _, step = make(
        fake_labeler,
        harmless,
        reply=lambda conv, params, i: "I cannot decide",
        scoring="votes",
        votes=3,
    )
    result = compare(step)
    assert result.prob_a is None
    assert all(j.answers == ["I cannot decide"] * 3 for j in result.judgements)
    assert all(j.unparsed == 3 for j in result.judgements)
    assert len(result.errors) == 2 and "none of 3 answers named an option" in result.errors[0]


def test_ensemble_averages_principles_and_measures_agreement(fake_labeler, harmless):
    # a labeler that likes the first response under some principles only
    def score(conv, options):
        text = conv[0]["content"]
        likes_a = any(p.instruction in text for p in harmless.feedback[::2])
        a, _ = options_shown(conv)
        good_wins = likes_a
        first_is_good = a == GOOD
        return [0.0, -2.0] if good_wins == first_is_good else [-2.0, 0.0]

    _, step = make(fake_labeler, harmless, score, principles=4)
    result = compare(step)
    principles = {j.principle_id for j in result.judgements}
    assert len(principles) == 4 and len(result.judgements) == 8
    per = {}
    for j in result.judgements:
        per.setdefault(j.principle_id, []).append(j.prob_a)
    expected = sum(sum(v) / 2 for v in per.values()) / 4
    assert result.prob_a == pytest.approx(expected)
    votes_for_a = sum(sum(v) / 2 > 0.5 for v in per.values())
    assert result.principle_agreement == pytest.approx(max(votes_for_a, 4 - votes_for_a) / 4)


def test_same_key_same_principles(fake_labeler, harmless):
    _, step = make(fake_labeler, harmless, principles=3)
    assert [p.id for p in step.principles_for("x")] == [p.id for p in step.principles_for("x")]


def test_normalised_and_flip_helpers():
    assert normalised([-math.inf, -math.inf]) is None
    assert normalised([math.nan, 0.0]) is None
    assert normalised([0.0, -math.inf]) == [1.0, 0.0]
    assert normalised([math.log(0.2), math.log(0.6)]) == pytest.approx([0.25, 0.75])
    assert position_flipped(0.7, 0.3) and not position_flipped(0.7, 0.6)
    assert not position_flipped(0.5, 0.9)
    assert combine([]).prob_a is None
    assert OPTIONS == (" (A)", " (B)")


def test_constitution_without_feedback_principles_is_rejected(fake_labeler, harmless):
    empty = harmless.model_copy(update={"feedback": []})
    with pytest.raises(ValueError, match="no feedback principles"):
        Feedback(empty, Templates(), Scheduler(fake_labeler(), Cache(None)))


def test_feedback_examples_from_the_constitution_come_first(fake_labeler, tmp_path):
    """A constitution's feedback examples are asked as answered questions before the real one,
    the better answer as (A), then (B), alternately; ``few_shot=False`` leaves them out."""
    (tmp_path / "c.yaml").write_text(
        "name: c\ndescription: d\nversion: '1'\nexamples: ex.yaml\n"
        "feedback:\n  - id: kind\n    instruction: Which reply is kinder?\n"
    )
    (tmp_path / "ex.yaml").write_text(
        "feedback_examples:\n"
        "  - {prompt: Say hi, better: Hello there!, worse: Go away.}\n"
        "  - prompt: And now?\n"
        "    context: [{role: user, content: Hi}, {role: assistant, content: Hey}]\n"
        "    better: Glad to help.\n"
        "    worse: Whatever.\n"
    )
    const = load_constitution(tmp_path / "c.yaml")
    assert len(const.feedback_few_shot) == 2
    lab, step = make(fake_labeler, const, both_orders=False)
    compare(step)
    (conv,) = lab.scored
    assert [m["role"] for m in conv] == ["user", "assistant"] * 3
    assert "(A) Hello there!" in conv[0]["content"] and "(B) Go away." in conv[0]["content"]
    assert conv[1]["content"] == "The answer is: (A)"
    assert "Person: Hi\n\nAssistant: Hey\n\nPerson: And now?" in conv[2]["content"]
    assert "(A) Whatever." in conv[2]["content"] and "(B) Glad to help." in conv[2]["content"]
    assert conv[3]["content"] == "The answer is: (B)"
    assert options_shown(conv[4:]) == (GOOD, BAD)
    lab, step = make(fake_labeler, const, both_orders=False, few_shot=False)
    compare(step)
    assert [m["role"] for m in lab.scored[0]] == ["user", "assistant"]


# ------------------------------------------------------------------ contextual calibration

# P(first option) the scripted labeler gives each content-free question: a prior of 0.8 towards
# (A) on average over the placeholders
CONTENT_FREE_P_FIRST = {"N/A": 0.9, "": 0.7, "[MASK]": 0.8}


def prior_towards_a(good: float = 0.6):
    """A labeler whose answers are its true preference (P(GOOD better) = ``good``) multiplied by
    a prior of 0.8 : 0.2 for the positions, renormalised: exactly what calibration undoes."""

    def score(conv, options):
        a, b = options_shown(conv)
        if a == b:
            p = CONTENT_FREE_P_FIRST[a]
        else:
            q = good if a == GOOD else 1 - good
            p = 0.8 * q / (0.8 * q + 0.2 * (1 - q))
        return [math.log(p), math.log(1 - p)]

    return score


def content_free_asked(lab):
    return [c for c in lab.scored if len(set(options_shown(c))) == 1]


def test_calibration_helpers_by_hand():
    assert calibrated([0.75, 0.25], [0.75, 0.25]) == pytest.approx([0.5, 0.5])
    # 6/7 : 1/7 over a prior of 0.8 : 0.2 -> 1.0714 : 0.7143 -> 0.6 : 0.4
    assert calibrated([6 / 7, 1 / 7], [0.8, 0.2]) == pytest.approx([0.6, 0.4])
    assert mean_distribution([[0.9, 0.1], None, [0.7, 0.3]]) == pytest.approx([0.8, 0.2])
    assert mean_distribution([None, None]) is None
    assert mean_distribution([[1.0, 0.0]]) is None  # no prior to divide by


def test_calibration_removes_a_known_prior_towards_a(fake_labeler, harmless):
    lab, step = make(fake_labeler, harmless, prior_towards_a(good=0.6), calibrate=True)
    result = compare(step)
    ab, ba = result.judgements
    # raw: GOOD shown first: 0.8*0.6 / (0.8*0.6 + 0.2*0.4) = 0.48/0.56 = 6/7;
    #      BAD shown first:  0.8*0.4 / (0.8*0.4 + 0.2*0.6) = 0.32/0.44 = 8/11 -> P(A) = 3/11
    assert ab.prob_first_raw == pytest.approx(6 / 7) and ab.prob_a_raw == pytest.approx(6 / 7)
    assert ba.prob_first_raw == pytest.approx(8 / 11) and ba.prob_a_raw == pytest.approx(3 / 11)
    # the prior is the mean over the placeholders: (0.9 + 0.7 + 0.8) / 3 = 0.8
    assert ab.prior == pytest.approx([0.8, 0.2]) and ba.prior == pytest.approx([0.8, 0.2])
    # calibrated: the labeler's true preference, in both orders
    assert ab.prob_first == pytest.approx(0.6) and ba.prob_first == pytest.approx(0.4)
    assert ab.prob_a == pytest.approx(0.6) and ba.prob_a == pytest.approx(0.6)
    assert result.prob_a == pytest.approx(0.6)
    assert result.prob_a_raw == pytest.approx((6 / 7 + 3 / 11) / 2)  # 87/154 = 0.565
    assert result.position_consistent is True  # the raw answers flipped with the order
    assert position_flipped(ab.prob_a_raw, ba.prob_a_raw)
    saved = result.as_dict()
    assert saved["prob_a"] == pytest.approx(0.6) and saved["prob_a_raw"] == pytest.approx(87 / 154)
    assert saved["judgements"][0]["prob_a_raw"] == pytest.approx(6 / 7)
    # one content-free question per placeholder, each with the principle and the same options
    asked = content_free_asked(lab)
    assert sorted(options_shown(c)[0] for c in asked) == sorted(CONTENT_FREE)
    principle = harmless.feedback_principle(ab.principle_id).instruction
    assert all(principle in c[0]["content"] for c in asked)
    assert all(f"Person: {options_shown(c)[0]}\n" in c[0]["content"] for c in asked)


def test_calibration_off_keeps_raw_fields_empty(fake_labeler, harmless):
    _, step = make(fake_labeler, harmless, prior_towards_a(good=0.6))
    result = compare(step)
    assert result.prob_a == pytest.approx((6 / 7 + 3 / 11) / 2)
    assert result.prob_a_raw is None
    assert all(j.prob_a_raw is None and j.prior is None for j in result.judgements)


def test_the_prior_is_asked_once_per_principle(fake_labeler, harmless):
    """Rows run concurrently share one prior per principle: 3 content-free questions per
    principle, whatever the number of rows and orders (counted as requests to the scheduler, so
    a cache hit would be counted too)."""
    lab = fake_labeler(logprobs=prior_towards_a(good=0.6))
    stats = EngineStats()
    sched = Scheduler(lab, Cache(None), stats)
    step = Feedback(harmless, Templates(), sched, FeedbackSettings(principles=2, calibrate=True))

    async def go():
        try:
            return await asyncio.gather(
                *(step.compare(f"row-{i}", CONV, GOOD, BAD) for i in range(6))
            )
        finally:
            await sched.aclose()

    results = run_sync(go())
    used = {j.principle_id for r in results for j in r.judgements}
    assert len(used) > 2  # rows drew different principles
    assert stats.requests == 6 * 2 * 2 + 3 * len(used)
    assert len(content_free_asked(lab)) == 3 * len(used)
    assert set(step.priors.values) == {(p, "feedback") for p in used}
    assert all(r.prob_a == pytest.approx(0.6) for r in results)


def test_a_prior_without_probability_is_an_error_not_a_guess(fake_labeler, harmless):
    def no_b_when_content_free(conv, options):
        a, b = options_shown(conv)
        return [0.0, -math.inf] if a == b else [-0.5, -1.0]

    _, step = make(fake_labeler, harmless, no_b_when_content_free, calibrate=True)
    result = compare(step)
    assert result.prob_a is None
    assert result.prob_a_raw == pytest.approx(0.5)  # the raw answers are kept
    assert "no content-free prior" in result.errors[0]


def test_calibration_is_refused_in_votes_mode_and_with_cot(fake_labeler, harmless):
    with pytest.raises(ConfigError, match="votes mode"):
        make(fake_labeler, harmless, supports=False, calibrate=True)
    with pytest.raises(ConfigError, match="votes mode"):
        make(fake_labeler, harmless, scoring="votes", calibrate=True)
    with pytest.raises(ValueError, match="does not apply with cot"):
        FeedbackSettings(calibrate=True, cot=True)
    assert FeedbackSettings().calibrate is False
