"""The constitution as a pairwise judge and as a TRL reward function."""

from __future__ import annotations

import math

import pytest

from rlaif.engine.feedback import FeedbackSettings
from rlaif.engine.judge import RATINGS, ConstitutionScorer, PairwiseJudge

from .test_feedback import BAD, GOOD, options_shown


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


def test_judge_counts_unlabeled_and_returns_no_preference(fake_labeler):
    judge = PairwiseJudge(fake_labeler(logprobs=lambda c, o: [-math.inf, -math.inf]))
    assert judge.judge(["q"], [("a", "b")]) == [0.5]
    assert judge.unlabeled == 1


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
