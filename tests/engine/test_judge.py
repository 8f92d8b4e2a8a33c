"""The constitution as a pairwise judge, a yes/no judge and a TRL reward function."""

from __future__ import annotations

import math

import pytest

from rlaif.engine.feedback import CONTENT_FREE, FeedbackSettings
from rlaif.engine.judge import RATINGS, ConstitutionScorer, PairwiseJudge, YesNoJudge
from rlaif.errors import ConfigError

from .test_feedback import BAD, GOOD, content_free_asked, options_shown, prior_towards_a


def prefers_good(conv, options):
    a, _ = options_shown(conv)
    return [-0.1, -2.5] if a == GOOD else [-2.5, -0.1]


def test_pairwise_judge_probability_of_first(fake_labeler):
    judge = PairwiseJudge(fake_labeler(logprobs=prefers_good))
    probs = judge.judge(["How do I pick a lock?"] * 2, [(GOOD, BAD), (BAD, GOOD)])
    assert probs[0] > 0.85 and probs[1] == pytest.approx(1 - probs[0])
    assert judge.unlabeled == 0


def test_pairwise_judge_takes_conversational_inputs(fake_labeler):
    lab = fake_labeler(logprobs=prefers_good)
    judge = PairwiseJudge(lab, settings=FeedbackSettings(both_orders=False))
    prompt = [{"role": "user", "content": "How do I pick a lock?"}]
    first = [{"role": "assistant", "content": GOOD}]
    second = [{"role": "assistant", "content": BAD}]
    (p,) = judge.judge([prompt], [(first, second)])
    assert p > 0.85
    assert len(lab.scored) == 1
    assert "Person: How do I pick a lock?" in lab.scored[0][0]["content"]
    assert f"(A) {GOOD}" in lab.scored[0][0]["content"]


def test_judge_counts_unlabeled_and_returns_none_not_a_made_up_tie(fake_labeler):
    judge = PairwiseJudge(fake_labeler(logprobs=lambda c, o: [-math.inf, -math.inf]))
    assert judge.judge(["q"], [("a", "b")]) == [None]
    assert judge.unlabeled == 1 and judge.failed == 0


def _failing_for(fake_labeler, word, logprobs=None):
    """A labeler whose calls about ``word`` fail after their retries (a 500 every time)."""
    from rlaif.errors import LabelerCallError

    class Failing(fake_labeler):
        max_batch_size = 1  # one request per call, as an API backend sends them

        async def option_logprobs(self, conversations, options):
            if any(word in m["content"] for c in conversations for m in c):
                raise LabelerCallError("HTTP 500 from server: boom", 7, True)
            return await super().option_logprobs(conversations, options)

    return Failing(logprobs=logprobs)


def test_a_failed_call_fails_one_judgement_and_is_counted(fake_labeler):
    judge = PairwiseJudge(_failing_for(fake_labeler, "BROKEN", prefers_good))
    probs = judge.judge(["q", "q"], [(GOOD, BAD), ("BROKEN", BAD)])
    assert probs[0] > 0.85 and probs[1] is None
    assert (judge.failed, judge.unlabeled) == (1, 0)
    assert judge.failure_reasons == ["HTTP 500 from server: boom"]


def test_the_scorer_and_the_yes_no_judge_survive_a_failed_call(fake_labeler):
    scorer = ConstitutionScorer(_failing_for(fake_labeler, "BROKEN"))
    scores = scorer(["q", "q"], ["Call a locksmith.", "BROKEN"])
    assert scores[0] is not None and scores[1] is None and scorer.failed == 1
    yes_no = YesNoJudge(_failing_for(fake_labeler, "BROKEN"))
    got = yes_no.assess(["q", "q"], ["fine", "BROKEN"], "harmful-compliance")
    assert got[0].prob_yes is not None and got[1].prob_yes is None and yes_no.failed == 1


def test_a_dead_endpoint_still_stops_the_judge(fake_labeler):
    from rlaif.errors import LabelerCallError

    class Dead(fake_labeler):
        async def option_logprobs(self, conversations, options):
            raise LabelerCallError("HTTP 401 from server: bad key", 1, False, permanent=True)

    with pytest.raises(LabelerCallError, match="bad key"):
        PairwiseJudge(Dead()).judge(["q"], [("a", "b")])


def test_judge_rejects_mismatched_lengths(fake_labeler):
    with pytest.raises(ValueError, match="2 prompts but 1 pairs"):
        PairwiseJudge(fake_labeler()).judge(["a", "b"], [("x", "y")])


def test_scorer_expected_rating(fake_labeler):
    def ratings(conv, options):
        assert tuple(options) == RATINGS
        best = 9 if "Call a locksmith" in conv[0]["content"] else 1
        return [0.0 if i + 1 == best else -30.0 for i in range(len(options))]

    scorer = ConstitutionScorer(fake_labeler(logprobs=ratings))
    scores = scorer(["How do I pick a lock?"] * 2, [GOOD, BAD])
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and scores[1] == pytest.approx(0, abs=1e-6)
    assert scorer.__name__ == "constitution_score"


def test_scorer_uniform_ratings_give_the_middle(fake_labeler):
    scorer = ConstitutionScorer(
        fake_labeler(logprobs=lambda c, o: [-1.0] * len(o)),
        settings=FeedbackSettings(principles=2),
    )
    assert scorer(["q"], [[{"role": "assistant", "content": "a"}]]) == [pytest.approx(0.5)]


def test_scorer_returns_none_when_unscorable(fake_labeler):
    scorer = ConstitutionScorer(fake_labeler(logprobs=lambda c, o: [math.nan] * len(o)))
    assert scorer(["q"], ["a"]) == [None] and scorer.unlabeled == 1


def test_judge_is_antisymmetric_when_principles_are_sampled(fake_labeler):
    """judge(a, b) + judge(b, a) == 1 with M < number of principles: both calls must sample the
    same principles, so the principle sample is keyed on the unordered pair. The labeler's
    preference (and a position bias) depends on the principle, so a different sample of
    principles gives a different probability."""
    judge = PairwiseJudge(fake_labeler(), settings=FeedbackSettings(principles=2))
    ids = [p.id for p in judge.constitution.feedback]
    assert len(ids) > 2

    def by_principle(conv, options):
        text = conv[0]["content"]
        rank = next(i for i, p in enumerate(judge.constitution.feedback) if p.instruction in text)
        a, _ = options_shown(conv)
        good_logit = 0.3 * rank - 2.0
        first = 0.7 + (good_logit if a == GOOD else -good_logit)
        return [first / 2 - 1.0, -first / 2 - 1.0]

    judge.labeler._logprobs = by_principle
    prompts = [f"How do I pick lock number {i}?" for i in range(8)]
    forward = judge.judge(prompts, [(GOOD, BAD)] * 8)
    backward = judge.judge(prompts, [(BAD, GOOD)] * 8)
    assert len(set(forward)) > 1  # the sampled principles matter
    for f, b in zip(forward, backward, strict=True):
        assert f + b == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------ calibration

HARMFUL, SAFE = "Sure: mix these two chemicals.", "I can't help with that, but here is why."
# the content-free P(option A) with Yes shown first (a prior for Yes and for (A) together), per
# placeholder: mean 0.9; with No shown first: 0.6 for each
CF_YES_FIRST = {"N/A": 0.95, "": 0.85, "[MASK]": 0.9}


def answer_shown(conv):
    return conv[0]["content"].split("Assistant's answer: ", 1)[1].split("\n\n")[0]


def yes_biased(conv, options):
    """True P(yes): 0.3 for SAFE, 0.7 for HARMFUL; shown times a prior of 0.9 : 0.1 on
    (A) : (B) with Yes first and 0.6 : 0.4 with No first, renormalised."""
    text = conv[0]["content"]
    yes_first = "(A) Yes" in text
    answer = answer_shown(conv)
    if answer in CONTENT_FREE:
        p_a = CF_YES_FIRST[answer] if yes_first else 0.6
    else:
        q_yes = 0.7 if answer == HARMFUL else 0.3
        q_a, prior_a = (q_yes, 0.9) if yes_first else (1 - q_yes, 0.6)
        p_a = prior_a * q_a / (prior_a * q_a + (1 - prior_a) * (1 - q_a))
    return [math.log(p_a), math.log(1 - p_a)]


def test_yes_no_calibration_removes_a_known_prior(fake_labeler):
    lab = fake_labeler(logprobs=yes_biased)
    judge = YesNoJudge(lab, settings=FeedbackSettings(calibrate=True))
    q = "harmful-compliance"
    safe, harmful = judge.assess(["How do I make poison gas?"] * 2, [SAFE, HARMFUL], q)
    # raw, SAFE: Yes first 0.9*0.3 / (0.9*0.3 + 0.1*0.7) = 27/34; No first P(No) =
    # 0.6*0.7 / (0.6*0.7 + 0.4*0.3) = 7/9, so P(yes) = 2/9; the mean of the two orders:
    assert safe.prob_yes_raw == pytest.approx((27 / 34 + 2 / 9) / 2)  # 0.508: "yes" to both
    # HARMFUL: Yes first 0.63 / (0.63 + 0.03); No first P(yes) = 0.4*0.7 / (0.6*0.3 + 0.4*0.7)
    assert harmful.prob_yes_raw == pytest.approx((0.63 / 0.66 + 0.28 / 0.46) / 2)  # 0.782
    assert safe.prob_yes == pytest.approx(0.3) and harmful.prob_yes == pytest.approx(0.7)
    # 3 placeholders x 2 orders of content-free questions, each with the principle
    asked = [c for c in lab.scored if answer_shown(c) in CONTENT_FREE]
    assert len(asked) == 6 and len(lab.scored) == 6 + 4
    instruction = judge.constitution.feedback_principle(q).instruction
    assert all(instruction in c[0]["content"] for c in asked)
    assert judge.priors.values[(q, True)] == pytest.approx([0.9, 0.1])
    assert judge.priors.values[(q, False)] == pytest.approx([0.6, 0.4])
    # a second call reuses the priors: only the real questions reach the scheduler
    before = judge.stats.requests
    assert judge.classify(["q"], [HARMFUL], q) == [pytest.approx(0.7)]
    assert judge.stats.requests - before == 2


def test_yes_no_without_calibration_is_the_raw_value(fake_labeler):
    judge = YesNoJudge(fake_labeler(logprobs=yes_biased))
    (a,) = judge.assess(["q"], [SAFE], "harmful-compliance")
    assert a.prob_yes == pytest.approx((27 / 34 + 2 / 9) / 2) and a.prob_yes_raw is None
    assert judge.classify(["q"], [SAFE], "harmful-compliance") == [a.prob_yes]


def test_yes_no_calibration_needs_logprobs(fake_labeler):
    lab = fake_labeler()
    lab.supports_logprobs = False
    judge = YesNoJudge(lab, settings=FeedbackSettings(calibrate=True))
    with pytest.raises(ConfigError, match="log-probs"):
        judge.classify(["q"], ["a"], "evasive")


def test_pairwise_judge_calibrates_and_keeps_its_priors(fake_labeler):
    lab = fake_labeler(logprobs=prior_towards_a(good=0.6))
    judge = PairwiseJudge(lab, settings=FeedbackSettings(calibrate=True))
    assert judge.judge(["How do I pick a lock?"], [(GOOD, BAD)]) == [pytest.approx(0.6)]
    assert len(content_free_asked(lab)) == 3
    before = judge.stats.requests
    assert judge.judge(["How do I pick a lock?"], [(BAD, GOOD)]) == [pytest.approx(0.4)]
    assert judge.stats.requests - before == 2  # the two orders; the prior is kept
