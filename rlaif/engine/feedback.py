"""The RL-CAI feedback step: which of two responses is better, as a probability.

One comparison asks the labeler a multiple-choice question (``prompts/feedback.j2``) under each of
M feedback principles sampled for the row, and reads the answer the way the Constitutional AI
paper did:

- **Soft labels from log-probs.** P(first option better) is the normalised probability of the
  option continuations (" (A)" vs " (B)") after the prefill ``The answer is:``; no text is parsed.
- **Both orders.** Language models favour a position. Each question is asked with the responses in
  both orders and the two P(response A better) are averaged, which cancels a pure position bias.
  Whether the two orders agree on the better response is recorded (``position_consistent``).
- **Ensembles.** The M per-principle probabilities are averaged; how far the principles agree is
  recorded too.
- **Chain of thought** (optional). The labeler first writes its reasoning, then the options are
  scored after it. Such probabilities are overconfident (near 0 or 1), so each is clamped to
  [0.4, 0.6] by default, as in the paper.
- **Few-shot.** A constitution's feedback examples (a conversation, a better and a worse answer)
  are asked first as answered questions under the same principle, the better answer shown as (A)
  in even examples and (B) in odd ones, so the examples teach no position.
- **Votes** for backends without log-probs (``supports_logprobs = False``) or by choice: sample N
  answers and count which option each names. Answers that name none are counted and kept.
- **Contextual calibration** (optional, ``calibrate``; Zhao et al. 2021, "Calibrate Before Use").
  Asking both orders cancels a prior for a *position* only on average over the two orders; a
  strong prior still flips single questions and pulls every probability towards the favoured
  letter. With ``calibrate`` the labeler is first asked the same question (same principle, same
  few-shot examples, same template) with content-free inputs: the conversation and both
  responses replaced by each of the placeholders in ``CONTENT_FREE``. The mean of those option
  probabilities is the labeler's prior p_cf for each option; every real probability is divided
  by it and renormalised. Both responses are the same placeholder, so the content-free question
  is the same in both orders: the prior is over positions, asked once per principle (and
  template) and kept for the whole run; its calls go through the scheduler, so they are cached
  like any other. Each judgement keeps the raw value beside the calibrated one
  (``prob_first_raw``, ``prob_a_raw``, and the ``prior``), and so does the comparison
  (``prob_a_raw``). Calibration needs option probabilities read directly: it is refused
  (``ConfigError``) in votes mode (sampled answers, no log-probs) and with chain of thought
  (clamped probabilities conditioned on the model's own reasoning, which has no content-free
  counterpart).

A judgement that yields no probability (no votes parsed, or zero mass on both options) is kept
with its reason and left out of the average; a comparison with no usable judgement has
``prob_a = None`` and the reasons. Nothing is silently dropped.

The step sees the labeler only through a scheduler (``generate`` and ``option_logprobs``), so
the cache, batching and concurrency of the engine apply to every call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlaif.constitution import Constitution, FeedbackPrinciple, sample_principles
from rlaif.errors import ConfigError
from rlaif.labelers.base import Completion, Conversation, GenerateParams, first_option
from rlaif.templates import Message, Templates

OPTIONS = (" (A)", " (B)")
TEMPLATES_USED = ("feedback", "feedback_cot")
COT_STOP = "So the answer is"
Order = Literal["ab", "ba"]
# Inputs that carry no content: each stands in for the conversation and the responses when the
# labeler's prior over the options is measured (contextual calibration). Data, not prompt text.
CONTENT_FREE = ("N/A", "", "[MASK]")


class Scorer(Protocol):
    """What the step needs from the engine (a ``Scheduler`` provides both)."""

    async def generate(
        self, messages: Conversation, params: GenerateParams
    ) -> list[Completion]: ...

    async def option_logprobs(
        self, messages: Conversation, options: Sequence[str]
    ) -> list[float]: ...


class FeedbackSettings(BaseModel):
    """How a comparison is asked and read (a typo is an error: ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principles: int = Field(default=1, ge=1, description="principles sampled per comparison (M)")
    both_orders: bool = Field(default=True, description="ask A/B and B/A and average")
    cot: bool = Field(default=False, description="reason first, then score the options")
    clamp_low: float = Field(default=0.4, ge=0.0, le=0.5)
    clamp_high: float = Field(default=0.6, ge=0.5, le=1.0)
    cot_max_tokens: int = Field(default=256, ge=1)
    cot_temperature: float = Field(default=0.0, ge=0.0)
    scoring: Literal["auto", "logprobs", "votes"] = "auto"
    votes: int = Field(default=8, ge=1, description="answers sampled per question in votes mode")
    vote_temperature: float = Field(default=1.0, ge=0.0)
    vote_max_tokens: int = Field(default=8, ge=1)
    few_shot: bool = Field(
        default=True, description="show the constitution's feedback examples before the question"
    )
    calibrate: bool = Field(
        default=False,
        description="contextual calibration: divide out the labeler's prior for each option, "
        "measured on content-free inputs, and renormalise (log-probs only, not with cot)",
    )

    @model_validator(mode="after")
    def _clamp_order(self) -> FeedbackSettings:
        if self.clamp_low > self.clamp_high:
            raise ValueError("clamp_low must not exceed clamp_high")
        if self.calibrate and self.cot:
            raise ValueError(
                "calibrate does not apply with cot: chain-of-thought probabilities are clamped "
                "and conditioned on the labeler's own reasoning, which has no content-free form"
            )
        return self


@dataclass
class Judgement:
    """One question: one principle, one order. ``prob_a`` is P(the original response A is
    better), whatever order it was shown in; ``prob_first`` is P(the option shown first)."""

    principle_id: str
    order: Order
    prob_first: float | None = None
    prob_a: float | None = None
    logprobs: list[float] | None = None
    option_mass: float | None = None  # total probability on the options (low: off-format model)
    votes: list[int] | None = None  # per option, in votes mode
    unparsed: int = 0  # answers (votes) that named no option
    reasoning: str | None = None
    error: str | None = None  # why there is no probability
    answers: list[str] | None = None  # raw answers, kept when none could be parsed
    # with calibration on: the values before it, and the content-free prior per position
    prob_first_raw: float | None = None
    prob_a_raw: float | None = None
    prior: list[float] | None = None


@dataclass
class Comparison:
    prob_a: float | None  # P(response A better): mean over principles of the mean over orders
    judgements: list[Judgement] = field(default_factory=list)
    position_consistent: bool | None = None  # both orders prefer the same response, all principles
    principle_agreement: float | None = None  # share of principles agreeing with the majority
    errors: list[str] = field(default_factory=list)
    prob_a_raw: float | None = None  # before calibration (None when calibration is off)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prob_a": self.prob_a,
            "prob_a_raw": self.prob_a_raw,
            "judgements": [asdict(j) for j in self.judgements],
            "position_consistent": self.position_consistent,
            "principle_agreement": self.principle_agreement,
            "errors": self.errors,
        }


def normalised(logprobs: Sequence[float]) -> list[float] | None:
    """Softmax over the options' log-probs; None when no option has any probability."""
    finite = [x for x in logprobs if not math.isnan(x)]
    if len(finite) != len(logprobs) or all(x == -math.inf for x in logprobs):
        return None
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def calibrated(probs: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Contextual calibration: each option's probability divided by its content-free prior,
    renormalised. ``prior`` must be positive everywhere (``Priors`` ensures it)."""
    weights = [p / q for p, q in zip(probs, prior, strict=True)]
    total = sum(weights)
    return [w / total for w in weights]


def mean_distribution(distributions: Sequence[Sequence[float] | None]) -> list[float] | None:
    """The mean of the option distributions that exist; None when none does, or when an option
    has no probability at all (no prior to divide by)."""
    usable = [d for d in distributions if d is not None]
    if not usable:
        return None
    mean = [sum(col) / len(usable) for col in zip(*usable, strict=True)]
    return mean if all(x > 0 for x in mean) else None


class Priors:
    """Content-free priors, computed once per key and shared by the rows asking concurrently.

    A computed value is kept for the life of the object (across event loops: the judges run one
    loop per call); a computation that raised is forgotten, so the next row asks again."""

    def __init__(self) -> None:
        self.values: dict[tuple[Any, ...], list[float] | None] = {}
        self._tasks: dict[tuple[Any, ...], asyncio.Future[list[float] | None]] = {}

    async def get(
        self, key: tuple[Any, ...], compute: Callable[[], Awaitable[list[float] | None]]
    ) -> list[float] | None:
        if key in self.values:
            return self.values[key]
        task = self._tasks.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._tasks[key] = asyncio.ensure_future(compute())
        try:
            value = await asyncio.shield(task)
        except Exception:
            self._tasks.pop(key, None)
            raise
        self.values[key] = value
        return value


def clamp(p: float, low: float, high: float) -> float:
    return min(max(p, low), high)


def position_flipped(prob_a_ab: float, prob_a_ba: float) -> bool:
    """True when the preferred *response* changes with the order, i.e. the labeler preferred the
    same *position* both times. Exact ties (0.5) count as no preference, not as a flip."""
    return (prob_a_ab - 0.5) * (prob_a_ba - 0.5) < 0


@dataclass
class Feedback:
    constitution: Constitution
    templates: Templates
    labeler: Scorer
    settings: FeedbackSettings = field(default_factory=FeedbackSettings)
    supports_logprobs: bool = True
    seed: int = 0  # principle sampling and sampled answers (CoT, votes)
    priors: Priors = field(default_factory=Priors, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.constitution.feedback:
            raise ValueError("the constitution has no feedback principles")
        if self.settings.calibrate and self.mode == "votes":
            raise ConfigError(
                "calibrate needs option log-probs, and this feedback runs in votes mode "
                "(sampled answers): turn calibrate off, or use a labeler with log-probs"
            )

    def notice(self, labeler: str) -> str | None:
        """The line a run says at its start when feedback falls back to votes because the
        labeler gives no log-probs (never silently: the soft labels mean something else)."""
        if self.settings.scoring != "auto" or self.supports_logprobs:
            return None
        return (
            f"feedback in votes mode: the labeler {labeler} gives no log-probs, so each question "
            f"is {self.settings.votes} sampled answers and a soft label is their vote share"
        )

    @property
    def mode(self) -> Literal["logprobs", "votes"]:
        if self.settings.scoring != "auto":
            return self.settings.scoring
        return "logprobs" if self.supports_logprobs else "votes"

    def principles_for(self, key: str) -> list[FeedbackPrinciple]:
        return sample_principles(
            self.constitution.feedback, self.settings.principles, self.seed, key
        )

    def examples(self) -> list[dict[str, Any]]:
        """The constitution's feedback examples as answered questions (template variables)."""
        if not self.settings.few_shot:
            return []
        out = []
        for i, ex in enumerate(self.constitution.feedback_few_shot):
            conversation = [t.model_dump() for t in ex.context]
            conversation.append({"role": "user", "content": ex.prompt})
            first, second = (ex.better, ex.worse) if i % 2 == 0 else (ex.worse, ex.better)
            answer = "A" if i % 2 == 0 else "B"
            out.append(
                {
                    "conversation": conversation,
                    "response_a": first,
                    "response_b": second,
                    "answer": answer,
                }
            )
        return out

    def check_templates(self) -> None:
        """Render the templates once so a broken one fails before a model loads."""
        v = {
            "conversation": [{"role": "user", "content": "p"}],
            "response_a": "a",
            "response_b": "b",
            "principle": self.constitution.feedback[0],
            "examples": self.examples(),
        }
        self.templates.render("feedback", **v)
        self.templates.render("feedback_cot", **v)
        self.templates.render("feedback_cot", **v, reasoning="r")

    async def compare(
        self, key: str, conversation: Sequence[Message], response_a: str, response_b: str
    ) -> Comparison:
        """Compare two responses to the same conversation (which ends with the person's turn).
        ``key`` (the row id) seeds the principle sample, so reruns ask the same questions."""
        orders: tuple[Order, ...] = ("ab", "ba") if self.settings.both_orders else ("ab",)
        jobs = [
            self._judge(p, order, list(conversation), response_a, response_b)
            for p in self.principles_for(key)
            for order in orders
        ]
        judgements = list(await asyncio.gather(*jobs))
        return combine(judgements, both_orders=self.settings.both_orders)

    async def _judge(
        self,
        principle: FeedbackPrinciple,
        order: Order,
        conversation: list[Message],
        response_a: str,
        response_b: str,
    ) -> Judgement:
        first, second = (response_a, response_b) if order == "ab" else (response_b, response_a)
        v = {
            "conversation": conversation,
            "response_a": first,
            "response_b": second,
            "principle": principle,
            "examples": self.examples(),
        }
        j = Judgement(principle.id, order)
        template = "feedback"
        if self.settings.cot:
            j.reasoning = await self._reason(v)
            v["reasoning"] = j.reasoning
            template = "feedback_cot"
        messages = self.templates.render(template, **v)
        if self.mode == "logprobs":
            j.logprobs = await self.labeler.option_logprobs(messages, OPTIONS)
            j.option_mass = sum(math.exp(x) for x in j.logprobs if not math.isnan(x))
            probs = normalised(j.logprobs)
            if probs is None:
                j.error = "no probability on either option"
        else:
            probs = await self._vote(messages, j)
        if probs is not None and self.settings.calibrate:
            j.prob_first_raw = probs[0]
            j.prob_a_raw = probs[0] if order == "ab" else 1.0 - probs[0]
            j.prior = await self.prior(principle, template)
            if j.prior is None:
                j.error = "no content-free prior to calibrate with"
                probs = None
            else:
                probs = calibrated(probs, j.prior)
        if probs is not None:
            p = probs[0]
            if self.settings.cot:
                p = clamp(p, self.settings.clamp_low, self.settings.clamp_high)
            j.prob_first = p
            j.prob_a = p if order == "ab" else 1.0 - p
        return j

    async def prior(self, principle: FeedbackPrinciple, template: str) -> list[float] | None:
        """The labeler's content-free probability of each position under ``principle``."""

        async def compute() -> list[float] | None:
            asked = []
            for blank in CONTENT_FREE:
                v = {
                    "conversation": [{"role": "user", "content": blank}],
                    "response_a": blank,
                    "response_b": blank,
                    "principle": principle,
                    "examples": self.examples(),
                }
                messages = self.templates.render(template, **v)
                asked.append(self.labeler.option_logprobs(messages, OPTIONS))
            return mean_distribution([normalised(x) for x in await asyncio.gather(*asked)])

        return await self.priors.get((principle.id, template), compute)

    async def _reason(self, variables: dict[str, Any]) -> str:
        s = self.settings
        params = GenerateParams(
            temperature=s.cot_temperature,
            max_tokens=s.cot_max_tokens,
            stop=(COT_STOP,),
            seed=self.seed,
        )
        messages = self.templates.render("feedback_cot", **variables)
        text = (await self.labeler.generate(messages, params))[0].text
        return text.split(COT_STOP)[0].strip()

    async def _vote(self, messages: list[Message], j: Judgement) -> list[float] | None:
        s = self.settings
        params = GenerateParams(
            n=s.votes, temperature=s.vote_temperature, max_tokens=s.vote_max_tokens, seed=self.seed
        )
        answers = await self.labeler.generate(messages, params)
        counts = [0] * len(OPTIONS)
        for a in answers:
            index = first_option(a.text, OPTIONS)
            if index is None:
                j.unparsed += 1
            else:
                counts[index] += 1
        j.votes = counts
        if sum(counts) == 0:
            j.error = f"none of {len(answers)} answers named an option"
            j.answers = [a.text for a in answers]
            return None
        return [c / sum(counts) for c in counts]


def combine(judgements: list[Judgement], both_orders: bool = True) -> Comparison:
    """Average P(A better) over orders within a principle, then over principles (and the same
    for the raw values, where calibration kept them)."""
    by_principle: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_principle.setdefault(j.principle_id, []).append(j)
    raw = [
        sum(ps) / len(ps)
        for js in by_principle.values()
        if (ps := [j.prob_a_raw for j in js if j.prob_a_raw is not None])
    ]
    prob_a_raw = sum(raw) / len(raw) if raw else None
    per_principle: list[float] = []
    consistent: list[bool] = []
    for js in by_principle.values():
        probs = [j.prob_a for j in js if j.prob_a is not None]
        if probs:
            per_principle.append(sum(probs) / len(probs))
        if both_orders and len(probs) == 2:
            consistent.append(not position_flipped(probs[0], probs[1]))
    errors = [f"{j.principle_id}/{j.order}: {j.error}" for j in judgements if j.error]
    if not per_principle:
        return Comparison(None, judgements, None, None, errors, prob_a_raw)
    prob_a = sum(per_principle) / len(per_principle)
    agreement = None
    if len(per_principle) > 1:
        for_a = sum(p > 0.5 for p in per_principle)
        for_b = sum(p < 0.5 for p in per_principle)
        agreement = max(for_a, for_b) / len(per_principle)
    return Comparison(
        prob_a,
        judgements,
        all(consistent) if consistent else None,
        agreement,
        errors,
        prob_a_raw,
    )
