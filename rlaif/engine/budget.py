"""``max_cost``: stop a run before it spends past a limit, counting what was actually billed.

What was spent is what the labelers billed so far (``Labeler.cost``: the tokens the provider
reported, priced by the labeler's price table, batch items at half price). That number only
grows after an answer arrives, so a request in flight has already been paid for without showing
yet. The rule, applied by the scheduler before every call it sends:

    send the call only if  spent + reserved for calls in flight + this call's estimate <= limit

A call's estimate is an upper bound of what the backend bills for it (``call_estimate``): its
prompt tokens (4 characters a token, 4 per message) at the input price, or at the cache-write
price where that is higher (a request may write its prefix to the provider's cache), once per
request the backend sends (Anthropic sends one request per sample, so ``n`` samples pay the
prompt ``n`` times; OpenAI's ``n`` pays it once); ``max_tokens`` for every sample at the output
price. An option score is counted as the labeler's ``votes`` sampled answers of
``vote_max_tokens`` each, since an API labeler without log-probs answers it that way (with
log-probs it costs less: one request, at most 4 tokens). Batch mode halves the estimate, unless
items that fail in the batch are re-sent online (``batch_errors: online``), which pay the full
price. Once a call is refused the budget stays closed: no later call goes
out, the calls in flight finish (their answers land in the cache), and the run stops with
``BudgetExceededError`` (exit 4). The journal holds every row finished before the stop, in order;
a rerun with a higher limit reads those rows back, finds the answers of the rows that were in
flight in the cache, and pays only for what is missing, so every row is written exactly once.

The limit applies to what one invocation spends: a rerun starts counting from zero (what it
reuses from the cache costs nothing). Local labelers bill nothing; a run whose API labelers have
no prices cannot be held to a limit, and says so before it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rlaif.errors import BudgetExceededError, ConfigError
from rlaif.labelers.base import backend_class, parse_spec
from rlaif.labelers.batches import BATCH_PRICE_FACTOR
from rlaif.labelers.reliability import estimate_tokens

OPTION_TOKENS = 4  # an option score asks for at most this many tokens (labelers/openai.py)


@dataclass(frozen=True)
class Prices:
    """A labeler's prices per million tokens, as its settings give them."""

    input: float | None
    output: float | None
    cached_input: float | None = None  # a cached prefix read; None: the input price
    cache_write: float | None = None  # a prefix written to the cache; None: the input price
    batch: bool = False  # provider batch mode: half price
    batch_online: bool = False  # items that fail in a batch are re-sent online, at full price
    prompt_per_sample: bool = False  # n samples are n requests, each billed the prompt
    votes: int = 1  # an option score without log-probs: this many sampled answers
    vote_max_tokens: int = OPTION_TOKENS

    @property
    def priced(self) -> bool:
        return self.input is not None or self.output is not None


def settings_of(spec: str, settings: dict[str, Any]) -> Any:
    """A labeler's validated settings model, without building the labeler (no model loads, no
    key is read)."""
    backend, base = parse_spec(spec)
    try:
        return backend_class(backend).Settings(**{**base, **settings})
    except ValidationError as e:
        raise ConfigError(f"bad settings for labeler '{spec}': {e.errors()[0]['msg']}") from None


def prices_of(spec: str, settings: dict[str, Any]) -> Prices | None:
    """The prices of a labeler; None for a backend that bills nothing (a local model). The
    cached-token prices are read where the settings have them, else the input price applies."""
    model = settings_of(spec, settings)
    if "price_input_per_million" not in type(model).model_fields:
        return None
    backend, _ = parse_spec(spec)
    return Prices(
        input=model.price_input_per_million,
        output=model.price_output_per_million,
        cached_input=getattr(model, "price_cached_input_per_million", None),
        cache_write=getattr(model, "price_cache_write_per_million", None),
        batch=bool(getattr(model, "batch", False)),
        batch_online=getattr(model, "batch_errors", None) == "online",
        prompt_per_sample=bool(getattr(backend_class(backend), "prompt_billed_per_sample", False)),
        votes=getattr(model, "votes", 1),
        vote_max_tokens=getattr(model, "vote_max_tokens", OPTION_TOKENS),
    )


def call_estimate(
    prices: Prices,
    conversations: Sequence[Sequence[dict[str, Any]]],
    samples: int | None = None,
    max_tokens: int = 0,
) -> float:
    """An upper bound of what one call costs (see the module docstring): ``samples`` of up to
    ``max_tokens`` tokens for each conversation, or an option score where ``samples`` is None."""
    if samples is None:  # an option score: votes where the model gives no log-probs
        samples, out = prices.votes, max(prices.votes * prices.vote_max_tokens, OPTION_TOKENS)
    else:
        out = samples * max_tokens
    requests = samples if prices.prompt_per_sample else 1
    p_in = max(prices.input or 0.0, prices.cache_write or 0.0)
    prompt = sum(estimate_tokens(messages) for messages in conversations)
    spent = prompt * requests * p_in + out * len(conversations) * (prices.output or 0.0)
    half = prices.batch and not prices.batch_online
    return spent / 1e6 * (BATCH_PRICE_FACTOR if half else 1.0)


@dataclass
class Budget:
    """The run's spending limit, shared by its schedulers (one per labeler)."""

    limit: float
    labelers: list[Any] = field(default_factory=list)  # each with a ``cost`` (None: unpriced)
    reserved: float = 0.0  # estimates of the calls in flight
    in_flight: int = 0
    closed: bool = False

    def spent(self) -> float:
        return sum(lab.cost or 0.0 for lab in self.labelers)

    def reserve(self, estimate: float) -> None:
        """Admit a call of ``estimate`` dollars, or close the budget and raise."""
        spent = self.spent()
        if self.closed or spent + self.reserved + estimate > self.limit:
            self.closed = True
            raise BudgetExceededError(spent, self.limit, self.in_flight, self.reserved)
        self.reserved += estimate
        self.in_flight += 1

    def release(self, estimate: float) -> None:
        """A call ended (answered or failed): its cost, if any, is now in ``spent``."""
        self.reserved = max(self.reserved - estimate, 0.0)
        self.in_flight -= 1


def bills_nothing(labelers: Sequence[tuple[str, dict[str, Any]]]) -> bool:
    """Whether every labeler ``(spec, settings)`` is a local model (nothing to hold to a limit)."""
    return all(prices_of(spec, settings) is None for spec, settings in labelers)


def make_budget(limit: float | None, labelers: Sequence[tuple[str, dict[str, Any], Any]]) -> Any:
    """The budget of a run with ``max_cost = limit`` over its labelers, each ``(spec, settings,
    scheduler)``: the schedulers get the budget and their labeler's prices. None without a limit;
    a ``ConfigError`` when no labeler of the run has prices (the limit could not be kept)."""
    if limit is None:
        return None
    priced = []
    unpriced = []
    for spec, settings, _ in labelers:
        prices = prices_of(spec, settings)
        if prices is not None and prices.priced:
            priced.append(prices)
        elif prices is not None:
            unpriced.append(spec)
    if unpriced or not priced:
        which = ", ".join(unpriced) or "its labelers are local and bill nothing"
        raise ConfigError(
            f"max_cost needs prices to count spending ({which}): set price_input_per_million "
            "and price_output_per_million, e.g. --labeler-set price_input_per_million=0.15 "
            "--labeler-set price_output_per_million=0.6 (docs/cost.md)"
        )
    budget = Budget(limit)
    for spec, settings, scheduler in labelers:
        if scheduler.budget is budget:  # one scheduler serves both roles
            continue
        scheduler.budget = budget
        scheduler.prices = prices_of(spec, settings)
        budget.labelers.append(scheduler.labeler)
    return budget
