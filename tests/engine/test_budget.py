"""``max_cost``: the budget's admission rule, prices from settings, and the scheduler's stop."""

from __future__ import annotations

import asyncio

import pytest

from rlaif.engine.budget import Budget, Prices, call_estimate, make_budget, prices_of
from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import Scheduler
from rlaif.errors import BudgetExceededError, ConfigError
from rlaif.labelers.base import Completion, GenerateParams

PRICED = {"price_input_per_million": 1.0, "price_output_per_million": 2.0}


class Spender:
    """A labeler that bills a fixed cost per conversation, as an API labeler's ``cost`` grows."""

    backend = "openai"
    model_name = "m"
    max_batch_size = 1
    max_concurrency = 3
    prefers_whole_stages = False
    retries = 0

    def __init__(self, per_call: float):
        self.per_call = per_call
        self.cost = 0.0
        self.calls = 0

    async def generate(self, conversations, params):
        await asyncio.sleep(0.01)
        self.calls += len(conversations)
        self.cost += self.per_call * len(conversations)
        return [[Completion("ok", "stop", 1, 1)] for _ in conversations]

    async def aclose(self):
        pass


def test_a_call_is_admitted_only_while_spent_plus_in_flight_stays_under_the_limit():
    lab = Spender(0.0)
    budget = Budget(1.0, [lab])
    budget.reserve(0.4)
    budget.reserve(0.4)
    with pytest.raises(BudgetExceededError) as e:
        budget.reserve(0.4)  # 0.8 reserved + 0.4 > 1.0
    assert e.value.exit_code == 4 and "in flight" in str(e.value)
    budget.release(0.4)
    with pytest.raises(BudgetExceededError):
        budget.reserve(0.1)  # once refused, closed: nothing more goes out
    lab.cost = 0.3
    assert budget.spent() == 0.3


def test_call_estimate_is_prompt_at_input_price_and_max_tokens_at_output_price():
    conv = [{"role": "user", "content": "x" * 400}]  # 100 tokens + 4 for the message
    full = call_estimate(Prices(1e6, 2e6), [conv, conv], 1, 10)
    assert full == pytest.approx(2 * 104 * 1.0 + 2 * 10 * 2.0)
    assert call_estimate(Prices(1e6, 2e6, batch=True), [conv], 1, 10) == pytest.approx(
        (104 + 20) * 0.5
    )
    # items that fail in a batch may be re-sent online, at the full price
    online = Prices(1e6, 2e6, batch=True, batch_online=True)
    assert call_estimate(online, [conv], 1, 10) == pytest.approx(104 + 20)


def test_call_estimate_bounds_what_each_backend_bills_for_samples_votes_and_cache_writes():
    conv = [{"role": "user", "content": "x" * 400}]  # 104 tokens
    openai_like = Prices(1e6, 2e6, votes=8, vote_max_tokens=8)
    anthropic_like = Prices(1e6, 2e6, prompt_per_sample=True, votes=8, vote_max_tokens=8)
    # n = 3 samples: OpenAI bills the prompt once, Anthropic once per sample (a request each)
    assert call_estimate(openai_like, [conv], 3, 10) == pytest.approx(104 + 3 * 10 * 2)
    assert call_estimate(anthropic_like, [conv], 3, 10) == pytest.approx(3 * 104 + 3 * 10 * 2)
    # an option score: as many answers as votes, vote_max_tokens each
    assert call_estimate(openai_like, [conv]) == pytest.approx(104 + 64 * 2)
    assert call_estimate(anthropic_like, [conv]) == pytest.approx(8 * 104 + 64 * 2)
    assert call_estimate(Prices(1e6, 2e6), [conv]) == pytest.approx(104 + 4 * 2)
    # a cache write costs more than plain input: the bound takes the higher price
    writes = Prices(1e6, 2e6, cache_write=1.25e6)
    assert call_estimate(writes, [conv], 1, 10) == pytest.approx(104 * 1.25 + 20)


def test_prices_come_from_settings_and_local_labelers_have_none():
    p = prices_of("openai:gpt-4o-mini", {**PRICED, "batch": True})
    assert (p.input, p.output, p.batch, p.priced) == (1.0, 2.0, True, True)
    assert p.cached_input is None  # read where the settings have it; the input price applies
    assert prices_of("openai:x", {}).priced is False
    assert (p.prompt_per_sample, p.votes, p.vote_max_tokens) == (False, 8, 8)
    a = prices_of("anthropic:claude-x", {**PRICED, "votes": 5, "batch_errors": "online"})
    assert (a.prompt_per_sample, a.votes, a.batch_online) == (True, 5, True)
    assert prices_of("transformers:/some/model", {}) is None


def test_a_limit_without_prices_is_refused_before_anything_runs(tmp_path):
    class Sched:
        budget = None
        labeler = None

    with pytest.raises(ConfigError, match=r"max_cost needs prices.*openai:x"):
        make_budget(5.0, [("openai:x", {}, Sched())])
    with pytest.raises(ConfigError, match="local and bill nothing"):
        make_budget(5.0, [("transformers:/m", {}, Sched())])
    assert make_budget(None, [("openai:x", {}, Sched())]) is None


def test_the_scheduler_stops_sending_before_the_limit_is_passed(tmp_path):
    lab = Spender(per_call=0.3)
    cache = Cache(tmp_path / "c.sqlite")
    sched = Scheduler(lab, cache)
    budget = make_budget(1.0, [("openai:m", PRICED, sched)])
    sched.labeler = lab  # the budget reads the labeler's billed cost
    budget.labelers = [lab]
    params = GenerateParams(max_tokens=1)

    async def go():
        results = await asyncio.gather(
            *(sched.generate([{"role": "user", "content": f"q{i}"}], params) for i in range(10)),
            return_exceptions=True,
        )
        await sched.aclose()
        return results

    results = asyncio.run(go())
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    answered = [r for r in results if not isinstance(r, Exception)]
    assert refused and answered
    assert lab.calls == len(answered)  # a refused call was never sent
    # the estimate (a few tokens) is far below the real 0.3 a call: the overshoot is bounded by
    # what was in flight when the limit was reached, never more than max_concurrency calls
    assert lab.cost <= 1.0 + lab.max_concurrency * lab.per_call
    assert cache.get_many(sched.keys_for([{"role": "user", "content": "q0"}], params))
    cache.close()
