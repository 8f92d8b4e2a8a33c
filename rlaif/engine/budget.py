"""``max_cost``: stop a run before it spends past a limit, counting what was actually billed.

What was spent is what the labelers billed so far (``Labeler.cost``: the tokens the provider
reported, priced by the labeler's price table, batch items at half price). That number only
grows after an answer arrives, so a request in flight has already been paid for without showing
yet. The rule, applied by the scheduler before every call it sends:

    send the call only if  spent + reserved for calls in flight + this call's estimate <= limit

A call's estimate is an upper bound: its prompt tokens (4 characters a token, 4 per message) at
the input price, and ``max_tokens`` for every sample at the output price (4 tokens for an option
score), halved in batch mode. Once a call is refused the budget stays closed: no later call goes
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
    return Prices(
        input=model.price_input_per_million,
        output=model.price_output_per_million,
        cached_input=getattr(model, "price_cached_input_per_million", None),
        cache_write=getattr(model, "price_cache_write_per_million", None),
        batch=bool(getattr(model, "batch", False)),
    )


def call_estimate(
    prices: Prices, conversations: Sequence[Sequence[dict[str, Any]]], out_tokens: int
) -> float:
    """An upper bound of what one call costs: its prompts at the input price (4 characters a
    token, 4 per message), ``out_tokens`` per conversation at the output price."""
    prompt = sum(estimate_tokens(messages) for messages in conversations)
    spent = prompt * (prices.input or 0.0) + out_tokens * len(conversations) * (
        prices.output or 0.0
    )
    return spent / 1e6 * (BATCH_PRICE_FACTOR if prices.batch else 1.0)


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
