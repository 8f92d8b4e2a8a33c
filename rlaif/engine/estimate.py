"""``--estimate``: what a run would send and, with prices, what it would cost, before it runs.

Nothing here calls or builds a labeler (no model loads, no API key is read). The run's inputs are
read and its first-stage requests rendered by the same code the run uses (``read_rows``, the
step's templates, principle sampling and few-shot examples), so a broken template or prompt file
fails here as it would there. Then, per step:

- **First-stage requests are counted as rendered**: SL-CAI's first answers, the prefs policy's
  samples, the red-team requests (every one shows its own seeds). Message texts are counted once
  each with the model's tokenizer (``engine.token_counts``), in batches.
- **Later stages are extrapolated**, since their requests contain answers not written yet: a
  critique or revision request is its template's static text under the row's sampled principle
  (rendered once per principle, with empty stand-ins for the varying parts) plus the row's prompt
  tokens plus ``max_tokens`` for every answer it quotes (the first answer, the critique); a
  feedback question is the same with both responses. Every answer is counted at ``max_tokens``,
  so output tokens, and inputs that quote answers, are upper bounds.
- **Cacheable input**: requests of one template under one principle share the text before their
  first varying part (the system prompt, few-shot examples, instructions). That prefix is what
  providers cache: OpenAI from 1,024 tokens in steps of 128, Anthropic from 1,024 (2,048 for Haiku
  models) where a breakpoint marks it; the first request of each prefix writes it, the rest read
  it. The prices of cached reads and cache writes are the labeler's ``price_cached_input_per_
  million`` and ``price_cache_write_per_million`` where its settings have them, else the input
  price (then caching changes nothing in the cost).
- **Cost**: with ``price_input_per_million`` and ``price_output_per_million`` set, online and in
  batch mode (half price, ``labelers.batches``). Without prices, tokens only: rlaif keeps no table
  of list prices (they change; set yours with ``--labeler-set``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlaif.engine.budget import OPTION_TOKENS, Prices, prices_of, settings_of
from rlaif.engine.token_counts import TokenCounter, counter_for
from rlaif.labelers.base import backend_class, parse_spec
from rlaif.labelers.batches import BATCH_PRICE_FACTOR
from rlaif.templates import Message, Templates, as_messages, prompt_variables

# stand-ins for the varying parts of a template (private-use characters: never in a template)
VARYING = {
    "prompt": "\ue010",
    "response": "\ue011",
    "critique": "\ue012",
    "response_a": "\ue013",
    "response_b": "\ue014",
    "reasoning": "\ue015",
    "request": "\ue016",
}


@dataclass
class Role:
    """Who answers a step's requests: a labeler spec, its counter and prices."""

    spec: str
    backend: str
    model: str
    counter: TokenCounter
    prices: Prices | None  # None: a local model, billed nothing
    settings: Any = None  # the labeler's validated settings

    def cacheable(self, prefix: int) -> int:
        """Of a static prefix of ``prefix`` tokens, what the provider caches, as the backend
        says (``cached_prefix_tokens``); a local engine's prefix cache (vLLM) takes it whole,
        at no price either way."""
        of = getattr(backend_class(self.backend), "cached_prefix_tokens", None)
        return prefix if of is None else of(self.settings, prefix)


@dataclass
class Line:
    """One step's requests of one stage."""

    stage: str
    step: str
    role: Role
    requests: int = 0
    input_tokens: int = 0
    cacheable_tokens: int = 0  # of input_tokens: repeated static prefixes
    cache_write_tokens: int = 0  # of cacheable_tokens: the first request of each prefix
    output_tokens: int = 0
    rendered: bool = False  # counted from the rendered requests (else extrapolated)

    def cost(self) -> float | None:
        """Online cost in dollars, None without prices."""
        p = self.role.prices
        if p is None or not p.priced:
            return None
        p_in = p.input or 0.0
        reads = self.cacheable_tokens - self.cache_write_tokens
        uncached = self.input_tokens - self.cacheable_tokens
        dollars = (
            uncached * p_in
            + reads * (p.cached_input if p.cached_input is not None else p_in)
            + self.cache_write_tokens * (p.cache_write if p.cache_write is not None else p_in)
            + self.output_tokens * (p.output or 0.0)
        )
        return dollars / 1e6


@dataclass
class Estimate:
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, attr: str) -> int:
        return sum(getattr(line, attr) for line in self.lines)

    def cost(self) -> float | None:
        costs = [line.cost() for line in self.lines]
        priced = [c for c in costs if c is not None]
        return sum(priced) if priced else None

    def unpriced(self) -> list[str]:
        """API labelers of the run without prices."""
        return sorted(
            {
                line.role.spec
                for line in self.lines
                if line.role.prices is not None and not line.role.prices.priced
            }
        )


# --------------------------------------------------------------------------- shared pieces


class Counts:
    """Token counts of texts, each distinct text counted once, in batches."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.known: dict[str, int] = {}

    def add(self, texts: Iterable[str]) -> None:
        new = list(dict.fromkeys(t for t in texts if t not in self.known))
        self.known.update(zip(new, self.counter.count(new), strict=True))

    def messages(self, messages: Sequence[Message]) -> int:
        """A request's input tokens: its texts plus chat formatting."""
        return sum(self.known[m["content"]] for m in messages) + self.counter.overhead(
            len(messages)
        )


_counters: dict[tuple[str, str], TokenCounter] = {}
_counts: dict[int, Counts] = {}


def role_of(spec: str, settings: dict[str, Any]) -> Role:
    backend, _ = parse_spec(spec)
    validated = settings_of(spec, settings)
    model = str(getattr(validated, "model", "") or spec)
    key = (backend, model)
    if key not in _counters:
        _counters[key] = counter_for(backend, model)
    return Role(spec, backend, model, _counters[key], prices_of(spec, settings), validated)


def counts_for(role: Role) -> Counts:
    found = _counts.get(id(role.counter))
    if found is None:
        found = _counts[id(role.counter)] = Counts(role.counter)
    return found


def policy_role(cfg: Any) -> tuple[Role, Role]:
    """The labeler's role and the policy's (the same labeler unless the policy differs), as
    ``jobs.labeler_and_policy`` pairs them."""
    labeler = role_of(cfg.labeler, cfg.labeler_settings)
    same = cfg.policy is None or (
        cfg.policy == cfg.labeler and cfg.policy_settings in ({}, cfg.labeler_settings)
    )
    if same:
        return labeler, labeler
    return labeler, role_of(cfg.policy or cfg.labeler, cfg.policy_settings)


@dataclass
class Static:
    """A template rendered with stand-ins: its fixed tokens and its cacheable prefix."""

    tokens: int  # every fixed token of the request (texts without the stand-ins + formatting)
    prefix: int  # tokens before the first varying part


def static_part(templates: Templates, name: str, role: Role, variables: dict[str, Any]) -> Static:
    messages = templates.render(name, **variables)
    counts = counts_for(role)
    marks = tuple(VARYING.values())
    stripped = [_strip(m["content"], marks) for m in messages]
    before: list[str] = []
    for m in messages:
        cut = min((i for i in (m["content"].find(s) for s in marks) if i >= 0), default=-1)
        if cut >= 0:
            before.append(m["content"][:cut])
            break
        before.append(m["content"])
    counts.add([*stripped, *before])
    tokens = sum(counts.known[t] for t in stripped) + counts.counter.overhead(len(messages))
    prefix = sum(counts.known[t] for t in before)
    prefix += counts.counter.per_message * len(before) if prefix else 0
    return Static(tokens, prefix)


def _strip(text: str, marks: tuple[str, ...]) -> str:
    for mark in marks:
        text = text.replace(mark, "")
    return text


def _stand_in(prompt: Any = None) -> dict[str, Any]:
    return prompt_variables(VARYING["prompt"] if prompt is None else prompt)


def prompt_tokens(rows: Sequence[dict[str, Any]], role: Role) -> list[int]:
    """Each row's own text in tokens (every turn of a conversation)."""
    counts = counts_for(role)
    turns = [as_messages(r["prompt"]) for r in rows]
    counts.add(m["content"] for t in turns for m in t)
    return [sum(counts.known[m["content"]] for m in t) for t in turns]


def render_first(
    line: Line, templates: Templates, name: str, requests: Iterable[dict[str, Any]]
) -> list[int]:
    """Render every request of a first stage and count it; returns each request's tokens."""
    rendered = [templates.render(name, **v) for v in requests]
    counts = counts_for(line.role)
    counts.add(m["content"] for messages in rendered for m in messages)
    sizes = [counts.messages(messages) for messages in rendered]
    line.rendered = True
    return sizes


def add_shared(line: Line, per_group: dict[Any, tuple[int, int]], prefixes: dict[Any, int]) -> None:
    """Cacheable tokens of a step whose requests fall in groups with a shared prefix:
    ``per_group[g] = (requests, ...)``, ``prefixes[g]`` the prefix tokens of group g."""
    for group, (requests, _) in per_group.items():
        cached = line.role.cacheable(prefixes[group])
        line.cacheable_tokens += cached * requests
        line.cache_write_tokens += cached if requests else 0


# --------------------------------------------------------------------------- the jobs


def estimate_sl_cai(cfg: Any, rows: list[dict[str, Any]] | None = None) -> Estimate:
    from rlaif.constitution import load_constitution
    from rlaif.engine.critique_revise import CritiqueRevise
    from rlaif.engine.jobs import read_rows
    from rlaif.labelers.base import GenerateParams

    started = time.perf_counter()
    rows = read_rows(cfg) if rows is None else rows
    constitution = load_constitution(cfg.constitution)
    templates = Templates(cfg.templates)
    params = GenerateParams.checked(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    step = CritiqueRevise(
        constitution=constitution, templates=templates, policy=None, critic=None,  # type: ignore[arg-type]
        rounds=cfg.rounds, seed=cfg.seed, params=params, few_shot=cfg.few_shot,
        cleanup=cfg.cleanup,
    )  # fmt: skip
    step.check_templates()
    critic, policy = policy_role(cfg)
    stage, out = "sl_cai", cfg.max_tokens
    first = Line(stage, "initial_response", policy)
    sizes = render_first(
        first, templates, "initial_response", (prompt_variables(r["prompt"]) for r in rows)
    )
    first.requests, first.input_tokens, first.output_tokens = len(rows), sum(sizes), out * len(rows)
    initial = static_part(templates, "initial_response", policy, _stand_in())
    add_shared(first, {None: (len(rows), 0)}, {None: initial.prefix})
    own = prompt_tokens(rows, critic)
    critique, revision = Line(stage, "critique", critic), Line(stage, "revision", critic)
    uses: dict[str, tuple[int, int]] = {}
    for row, tokens in zip(rows, own, strict=True):
        for principle in step.principles_for(str(row["id"])):
            n, t = uses.get(principle.id, (0, 0))
            uses[principle.id] = (n + 1, t + tokens)
    statics: dict[str, tuple[Static, Static]] = {}
    for principle in constitution.critique_revision:
        if principle.id not in uses:
            continue
        v = {**_stand_in(), "principle": principle, "examples": step.examples_for(principle)}
        statics[principle.id] = (
            static_part(templates, "critique", critic, {**v, "response": VARYING["response"]}),
            static_part(
                templates, "revision", critic,
                {**v, "response": VARYING["response"], "critique": VARYING["critique"]},
            ),
        )  # fmt: skip
    for pid, (n, tokens) in uses.items():
        crit, rev = statics[pid]
        critique.requests += n
        critique.input_tokens += n * crit.tokens + tokens + n * out
        revision.requests += n
        revision.input_tokens += n * rev.tokens + tokens + 2 * n * out
    for line, which in ((critique, 0), (revision, 1)):
        line.output_tokens = line.requests * out
        add_shared(line, uses, {pid: s[which].prefix for pid, s in statics.items()})
    result = Estimate([first, critique, revision])
    result.notes.append(
        f"critiques and revisions extrapolated: {cfg.rounds} round(s), every answer counted at "
        f"max_tokens={out} (an upper bound)"
    )
    result.seconds = time.perf_counter() - started
    return result


def estimate_prefs(cfg: Any, rows: list[dict[str, Any]] | None = None) -> Estimate:
    from rlaif.constitution import load_constitution
    from rlaif.engine.feedback import Feedback
    from rlaif.engine.jobs import read_rows
    from rlaif.engine.prefs import pair_rows

    started = time.perf_counter()
    rows = read_rows(cfg) if rows is None else rows
    constitution = load_constitution(cfg.constitution)
    templates = Templates(cfg.templates)
    labeler, policy = policy_role(cfg)
    fb = cfg.feedback
    logprobs = gives_logprobs(labeler, cfg.labeler_settings)
    feedback = Feedback(constitution, templates, None, fb, logprobs, cfg.seed)  # type: ignore[arg-type]
    feedback.check_templates()
    stage, out, k = "prefs", cfg.max_tokens, cfg.responses
    first = Line(stage, "responses", policy)
    sizes = render_first(
        first, templates, "initial_response", (prompt_variables(r["prompt"]) for r in rows)
    )
    # OpenAI bills n samples' input once; Anthropic sends (and bills) a request per sample
    bills_input = k if policy.prices is not None and policy.prices.prompt_per_sample else 1
    first.requests = len(rows) * bills_input
    first.input_tokens = sum(sizes) * bills_input
    first.output_tokens = len(rows) * k * out
    own = dict(zip((r["id"] for r in rows), prompt_tokens(rows, labeler), strict=True))
    pairs = pair_rows(rows, k)
    orders = 2 if fb.both_orders else 1
    uses: dict[str, tuple[int, int]] = {}
    for pair in pairs:
        for principle in feedback.principles_for(pair["id"]):
            n, t = uses.get(principle.id, (0, 0))
            uses[principle.id] = (n + orders, t + orders * own[pair["prompt_id"]])
    votes = feedback.mode == "votes"
    template = "feedback_cot" if fb.cot else "feedback"
    judge = Line(stage, f"{template} ({feedback.mode})", labeler)
    reason = Line(stage, "feedback_cot reasoning", labeler) if fb.cot else None
    prefixes: dict[str, int] = {}
    for principle in constitution.feedback:
        if principle.id not in uses:
            continue
        n, tokens = uses[principle.id]
        v = {
            "conversation": [{"role": "user", "content": VARYING["prompt"]}],
            "response_a": VARYING["response_a"], "response_b": VARYING["response_b"],
            "principle": principle, "examples": feedback.examples(),
        }  # fmt: skip
        quoted = 2 * out
        if reason is not None:
            s = static_part(templates, "feedback_cot", labeler, v)
            reason.requests += n
            reason.input_tokens += n * (s.tokens + quoted) + tokens
            reason.output_tokens += n * fb.cot_max_tokens
            v = {**v, "reasoning": VARYING["reasoning"]}
            quoted += fb.cot_max_tokens
        s = static_part(templates, template, labeler, v)
        prefixes[principle.id] = s.prefix
        asks, answer = judge_requests(labeler, fb, votes, logprobs)
        judge.requests += n * asks
        judge.input_tokens += (n * (s.tokens + quoted) + tokens) * asks
        judge.output_tokens += n * answer
    add_shared(judge, uses, prefixes)
    lines = [first, *([reason] if reason else []), judge]
    result = Estimate(lines)
    result.notes.append(
        f"{len(pairs)} pairs; feedback extrapolated: {fb.principles} principle(s) x {orders} "
        f"order(s) per pair, each response counted at max_tokens={out} (an upper bound)"
    )
    if fb.calibrate:
        result.notes.append("calibration adds 3 content-free questions per principle (not shown)")
    result.seconds = time.perf_counter() - started
    return result


def judge_requests(role: Role, fb: Any, votes: bool, logprobs: bool) -> tuple[int, int]:
    """Requests and output tokens of one feedback question: in votes mode ``fb.votes`` answers
    (one request with ``n`` on OpenAI, one per answer on Anthropic); scored by log-probs, one
    request of at most 4 tokens, unless the labeler has none and votes inside its option scores
    (its own ``votes`` setting); a local model's output is not billed."""
    p = role.prices
    per_sample = p is not None and p.prompt_per_sample
    if votes:
        return (fb.votes if per_sample else 1), fb.votes * fb.vote_max_tokens
    if p is None:
        return 1, 0
    if not logprobs:
        return (p.votes if per_sample else 1), p.votes * p.vote_max_tokens
    return 1, OPTION_TOKENS


def gives_logprobs(role: Role, settings: dict[str, Any]) -> bool:
    """Whether the labeler returns option log-probs, as its backend decides (OpenAI: by the
    model's rules; Anthropic: never; local models: always), without building it."""
    if role.backend == "anthropic":
        return False
    if role.backend != "openai":
        return True
    from rlaif.labelers.rules import rules_for

    override = getattr(settings_of(role.spec, settings), "model_rules", None)
    return rules_for("openai", role.model, override).logprobs


def estimate_red_team(cfg: Any) -> Estimate:
    from rlaif.engine.red_team import read_seeds, shown_seeds
    from rlaif.errors import ConfigError

    started = time.perf_counter()
    seeds = read_seeds(cfg)
    templates = Templates(cfg.templates)
    labeler = role_of(cfg.labeler, cfg.labeler_settings)
    if cfg.classify and not gives_logprobs(labeler, cfg.labeler_settings):
        raise ConfigError(  # as the run would refuse it
            f"classify reads option log-probs, and {labeler.spec} gives none: use "
            "--no-classify, or a labeler with log-probs"
        )
    stage, out = "red_team", cfg.max_tokens
    first = Line(stage, "red_team", labeler)
    requests = (
        {
            "examples": [
                seeds[i][1] for i in shown_seeds(cfg.seed, f"gen-{n}", len(seeds), cfg.examples)
            ]
        }
        for n in range(1, cfg.n + 1)
    )
    sizes = render_first(first, templates, "red_team", requests)
    first.requests, first.input_tokens, first.output_tokens = cfg.n, sum(sizes), cfg.n * out
    lines = [first]
    if cfg.classify:
        classify = Line(stage, "red_team_classify", labeler)
        for yes_first in (True, False):
            s = static_part(
                templates, "red_team_classify", labeler,
                {"request": VARYING["request"], "yes_first": yes_first},
            )  # fmt: skip
            classify.requests += cfg.n
            classify.input_tokens += cfg.n * (s.tokens + out)
            add_shared(classify, {yes_first: (cfg.n, 0)}, {yes_first: s.prefix})
        if labeler.prices is not None:  # billed output (a local model bills nothing)
            classify.output_tokens = classify.requests * OPTION_TOKENS
        lines.append(classify)
    result = Estimate(lines)
    if cfg.classify:
        result.notes.append(f"classifier questions: every request counted at max_tokens={out}")
    result.seconds = time.perf_counter() - started
    return result


def stand_in_prompts(n: int, tokens: int) -> list[dict[str, Any]]:
    """``n`` prompts of about ``tokens`` tokens each, for prompts a stage has not written yet."""
    return [{"id": f"gen-{i}", "prompt": " word" * tokens} for i in range(1, n + 1)]


def combine(parts: Sequence[Estimate]) -> Estimate:
    out = Estimate()
    for part in parts:
        out.lines.extend(part.lines)
        out.notes.extend(n for n in part.notes if n not in out.notes)
        out.seconds += part.seconds
    return out


# --------------------------------------------------------------------------- printing


def report_lines(est: Estimate) -> list[str]:
    """The estimate as plain text lines (the CLI prints them)."""
    head = (
        f"{'stage / step':<34}{'requests':>10}{'input tok':>14}{'cacheable':>14}{'output tok':>14}"
    )
    head += f"{'online $':>12}{'batch $':>12}"
    lines = [head, "-" * len(head)]

    def money(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    for line in est.lines:
        cost = line.cost()
        name = f"{line.stage} / {line.step}" + ("" if line.rendered else " *")
        lines.append(
            f"{name:<34}{line.requests:>10,}{line.input_tokens:>14,}{line.cacheable_tokens:>14,}"
            f"{line.output_tokens:>14,}{money(cost):>12}"
            f"{money(None if cost is None else cost * BATCH_PRICE_FACTOR):>12}"
        )
    cost = est.cost()
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<34}{est.total('requests'):>10,}{est.total('input_tokens'):>14,}"
        f"{est.total('cacheable_tokens'):>14,}{est.total('output_tokens'):>14,}"
        f"{money(cost):>12}{money(None if cost is None else cost * BATCH_PRICE_FACTOR):>12}"
    )
    lines.append("* extrapolated (later stages); the others are counted from rendered requests")
    for role in {id(line.role.counter): line.role for line in est.lines}.values():
        lines.append(f"tokens of {role.spec}: {role.counter.name}")
    for spec in {line.role.spec: line.role for line in est.lines}:
        role = next(line.role for line in est.lines if line.role.spec == spec)
        if role.prices is None:
            lines.append(f"{spec}: a local model, billed nothing")
        elif role.prices.priced:
            p = role.prices
            cached = "input price" if p.cached_input is None else f"${p.cached_input:g}"
            lines.append(
                f"{spec}: ${p.input or 0:g} in / ${p.output or 0:g} out per 1M tokens, cached "
                f"reads at {cached}; batch mode at {BATCH_PRICE_FACTOR:g}x"
                + (" (batch mode is on: the run pays the batch column)" if p.batch else "")
            )
    unpriced = est.unpriced()
    if unpriced:
        lines.append(
            f"no prices for {', '.join(unpriced)}: cost needs them (rlaif keeps no price list): "
            "--labeler-set price_input_per_million=P --labeler-set price_output_per_million=P"
        )
    lines.extend(est.notes)
    lines.append(f"estimated in {est.seconds:.1f} s; nothing was sent")
    return lines
