"""The constitution as a judge and as a reward, for trainers: plain synchronous calls.

Trainers reach a labeler only through these two objects (the house plan), so online DPO and
d-RLAIF-style rewards get exactly the scoring of ``rlaif generate prefs``, with its cache:

- ``PairwiseJudge.judge(prompts, pairs)``: P(first response better) per pair, by the ``Feedback``
  step (both orders, M principles, optional chain of thought, votes where there are no log-probs).
- ``ConstitutionScorer(prompts, completions)``: a scalar in [0, 1] per completion, the expected
  rating of one response under sampled feedback principles (``prompts/score.j2``), read from the
  probabilities of the ratings " 1" ... " 9". The scale stops at 9 on purpose: every rating is
  then a single digit, so no option's text is a prefix of another's (" 1" would also count " 10"),
  and the normalised probabilities are a true distribution over the ratings. The signature is
  TRL's reward-function signature (``prompts``, ``completions``, ``**kwargs`` -> floats), so a
  scorer can be passed as ``reward_funcs`` to GRPO, RLOO or online DPO.

Prompts and completions may be strings or conversational (lists of ``{role, content}``), as TRL
passes them. A comparison or score that yields no probability is counted in ``unlabeled``, one
whose labeler call failed (after its retries) in ``failed`` with its reason in
``failure_reasons``; either way the judge and the scorer return ``None`` for it (TRL's "not
applicable"), never a made-up 0.5 that would pull a win rate towards chance or train a policy on
a tie. One failed call fails its item only, so a GRPO step or an evaluation goes on; a dead
endpoint (``LabelerCallError.permanent``) still raises, since every item would fail the same way.
The judge samples a comparison's principles from the unordered pair of responses (``pair_key``):
keyed on the ordered pair, swapping the two responses would draw other principles whenever M is
below the number of principles, and ``judge(a, b) + judge(b, a)`` would drift from 1.
Each call runs its own event loop, so the objects work from any synchronous training loop.

With ``settings.calibrate`` the pairwise judge calibrates as the ``Feedback`` step does, and the
yes/no judge likewise: the same question (same principle, Yes first or No first) is asked about
content-free inputs (``CONTENT_FREE`` in place of the conversation and the response), the mean of
those option probabilities is the prior of each position, and every real answer's probabilities
are divided by it and renormalised before P(yes) is read. Each order has its own prior (the
options are shown in another order, so the question differs), asked once per question and order
for the life of the judge. ``assess`` returns the raw P(yes) beside the calibrated one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rlaif.constitution import Constitution, load_constitution, sample_principles
from rlaif.engine.cache import Cache
from rlaif.engine.feedback import (
    CONTENT_FREE,
    OPTIONS,
    Feedback,
    FeedbackSettings,
    Priors,
    calibrated,
    mean_distribution,
    normalised,
)
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import ConfigError, LabelerCallError
from rlaif.labelers.base import Labeler, create_labeler, run_sync
from rlaif.resources import default_constitution
from rlaif.templates import Message, Templates, as_messages

RATINGS = tuple(f" {i}" for i in range(1, 10))
T = TypeVar("T")

PromptLike = str | Sequence[Message]


def as_text(completion: PromptLike) -> str:
    if isinstance(completion, str):
        return completion
    return "\n".join(m["content"] for m in completion if m["role"] == "assistant")


def _key(*parts: Any) -> str:
    blob = repr(parts).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def pair_key(conversation: list[Message], a: str, b: str) -> str:
    """The principle-sampling key of a comparison: the *unordered* pair, so ``judge(a, b)`` and
    ``judge(b, a)`` ask the same principles and their probabilities sum to 1."""
    return _key(conversation, *sorted((a, b)))


class _Base:
    def __init__(
        self,
        labeler: Labeler | str = "smollm2",
        constitution: Constitution | str | Path | None = None,
        templates: Templates | str | Path | None = None,
        settings: FeedbackSettings | None = None,
        cache: str | Path | None = None,
        seed: int = 0,
        **labeler_settings: Any,
    ):
        self.labeler = (
            create_labeler(labeler, **labeler_settings) if isinstance(labeler, str) else labeler
        )
        if not isinstance(constitution, Constitution):
            constitution = load_constitution(constitution or default_constitution())
        self.constitution = constitution
        self.templates = templates if isinstance(templates, Templates) else Templates(templates)
        self.settings = settings or FeedbackSettings()
        self.cache = Cache(cache)
        self.seed = seed
        self.stats = EngineStats()
        self.unlabeled = 0  # answered, but no probability could be read
        self.failed = 0  # the labeler call failed after its retries
        self.failure_reasons: list[str] = []  # the first few, to show beside the counts
        self.priors = Priors()  # content-free priors (calibration), kept across calls

    def _scheduler(self) -> Scheduler:
        return Scheduler(self.labeler, self.cache, self.stats)

    async def _guarded(self, job: Awaitable[T]) -> T | None:
        """One item's judgement, or None when its labeler call failed (counted in ``failed``)."""
        try:
            return await job
        except LabelerCallError as e:
            if e.permanent:  # a dead endpoint: every item would fail the same way
                raise
            self.failed += 1
            if len(self.failure_reasons) < 5:
                self.failure_reasons.append(e.reason)
            return None

    def close(self) -> None:
        run_sync(self.labeler.aclose())
        self.cache.close()


class PairwiseJudge(_Base):
    """P(first better) for each ``(prompt, (first, second))``."""

    def judge(
        self, prompts: Sequence[PromptLike], pairs: Sequence[tuple[PromptLike, PromptLike]]
    ) -> list[float | None]:
        return run_sync(self.ajudge(prompts, pairs))

    async def ajudge(
        self, prompts: Sequence[PromptLike], pairs: Sequence[tuple[PromptLike, PromptLike]]
    ) -> list[float | None]:
        if len(prompts) != len(pairs):
            raise ValueError(f"{len(prompts)} prompts but {len(pairs)} pairs")
        sched = self._scheduler()
        step = Feedback(
            self.constitution,
            self.templates,
            sched,
            self.settings,
            self.labeler.supports_logprobs,
            self.seed,
        )
        step.priors = self.priors
        try:
            jobs = []
            for prompt, (first, second) in zip(prompts, pairs, strict=True):
                a, b = as_text(first), as_text(second)
                conv = as_messages(prompt)
                jobs.append(self._guarded(step.compare(pair_key(conv, a, b), conv, a, b)))
            results = await asyncio.gather(*jobs)
        finally:
            await sched.aclose()
        out: list[float | None] = []
        for r in results:
            if r is not None and r.prob_a is None:
                self.unlabeled += 1
            out.append(None if r is None else r.prob_a)
        return out


class ConstitutionScorer(_Base):
    """A TRL reward function: the constitution's expected rating of each completion, in [0, 1]."""

    __name__ = "constitution_score"  # TRL logs reward functions by name

    def __call__(
        self, prompts: Sequence[PromptLike], completions: Sequence[PromptLike], **_: Any
    ) -> list[float | None]:
        return run_sync(self.ascore(prompts, completions))

    async def ascore(
        self, prompts: Sequence[PromptLike], completions: Sequence[PromptLike]
    ) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        sched = self._scheduler()
        try:
            jobs = [
                self._guarded(self._score(sched, as_messages(p), as_text(c)))
                for p, c in zip(prompts, completions, strict=True)
            ]
            return list(await asyncio.gather(*jobs))
        finally:
            await sched.aclose()

    async def _score(self, sched: Scheduler, conv: list[Message], response: str) -> float | None:
        principles = sample_principles(
            self.constitution.feedback, self.settings.principles, self.seed, _key(conv, response)
        )
        scores = []
        for principle in principles:
            messages = self.templates.render(
                "score", conversation=conv, response=response, principle=principle
            )
            probs = normalised(await sched.option_logprobs(messages, RATINGS))
            if probs is not None:
                expected = sum(p * (i + 1) for i, p in enumerate(probs))
                scores.append((expected - 1) / (len(RATINGS) - 1))
        if not scores:
            self.unlabeled += 1
            return None
        return sum(scores) / len(scores)


@dataclass
class YesNo:
    """One yes/no answer: P(yes), and before calibration (None when calibration is off)."""

    prob_yes: float | None
    prob_yes_raw: float | None = None


class YesNoJudge(_Base):
    """P(yes) to a yes/no question about each response (``prompts/classify.j2``), the question
    being a principle of the constitution (by default ``constitution/evaluation.yaml``). Asked
    with Yes first and with No first, averaged; None where neither order gives a probability."""

    def __init__(self, labeler: Labeler | str = "smollm2", **kw: Any):
        from rlaif.resources import evaluation_constitution

        kw.setdefault("constitution", evaluation_constitution())
        super().__init__(labeler, **kw)

    def classify(
        self, prompts: Sequence[PromptLike], responses: Sequence[PromptLike], question: str
    ) -> list[float | None]:
        return run_sync(self.aclassify(prompts, responses, question))

    async def aclassify(
        self, prompts: Sequence[PromptLike], responses: Sequence[PromptLike], question: str
    ) -> list[float | None]:
        return [a.prob_yes for a in await self.aassess(prompts, responses, question)]

    def assess(
        self, prompts: Sequence[PromptLike], responses: Sequence[PromptLike], question: str
    ) -> list[YesNo]:
        """Like ``classify``, with the raw P(yes) kept beside the calibrated one."""
        return run_sync(self.aassess(prompts, responses, question))

    async def aassess(
        self, prompts: Sequence[PromptLike], responses: Sequence[PromptLike], question: str
    ) -> list[YesNo]:
        if self.settings.calibrate and not self.labeler.supports_logprobs:
            raise ConfigError(
                "calibrate needs option log-probs, and this labeler has none: turn it off"
            )
        principle = self.constitution.feedback_principle(question)
        sched = self._scheduler()
        try:
            jobs = [
                self._guarded(self._yes(sched, as_messages(p), as_text(r), principle))
                for p, r in zip(prompts, responses, strict=True)
            ]
            return [YesNo(None) if a is None else a for a in await asyncio.gather(*jobs)]
        finally:
            await sched.aclose()

    async def _probs(
        self, sched: Scheduler, conv: list[Message], response: str, principle: Any, yes_first: bool
    ) -> list[float] | None:
        messages = self.templates.render(
            "classify", conversation=conv, response=response, principle=principle,
            yes_first=yes_first,
        )  # fmt: skip
        return normalised(await sched.option_logprobs(messages, OPTIONS))

    async def _prior(self, sched: Scheduler, principle: Any, yes_first: bool) -> list[float] | None:
        async def compute() -> list[float] | None:
            asked = [
                self._probs(sched, [{"role": "user", "content": b}], b, principle, yes_first)
                for b in CONTENT_FREE
            ]
            return mean_distribution(await asyncio.gather(*asked))

        return await self.priors.get((principle.id, yes_first), compute)

    async def _yes(
        self, sched: Scheduler, conv: list[Message], response: str, principle: Any
    ) -> YesNo:
        votes, raw = [], []
        for yes_first in (True, False):
            probs = await self._probs(sched, conv, response, principle, yes_first)
            if probs is None:
                continue
            yes = 0 if yes_first else 1
            if self.settings.calibrate:
                raw.append(probs[yes])
                prior = await self._prior(sched, principle, yes_first)
                if prior is None:
                    continue
                probs = calibrated(probs, prior)
            votes.append(probs[yes])
        if not votes:
            self.unlabeled += 1
            return YesNo(None, sum(raw) / len(raw) if raw else None)
        return YesNo(sum(votes) / len(votes), sum(raw) / len(raw) if raw else None)
