"""The red-team generation job: seed prompts in, new red-team prompts + a dataset card out.

The Constitutional AI paper grew its human red-team prompts with model-written ones, made by
few-shot prompting a model with existing prompts. This job does the same with any labeler:

- **Rows are generation requests** ``gen-1`` ... ``gen-N``, known before anything runs, so the
  ordinary journal gives resume without gaps or duplicates, and the cache makes a rerun free.
  Request ``gen-i`` shows ``examples`` seeds drawn (and ordered) by a generator seeded with
  ``(seed, "gen-i")`` alone, so a row asks the same question in every run, and raising ``n``
  later keeps every earlier row's question (and its cached answer).
- **One request per row** (``prompts/red_team.j2``): a numbered list of the seeds and an
  assistant prefill with the next number, so chat models and plain continuers both write one
  new list item. Each block of ``batch size`` requests samples with its own seed
  (``sampling_seed``), so batches do not repeat each other's random draws. ``parse_request``
  keeps the first line, without numbering, quotes or labels. An output with no request in it
  (empty, a refusal, a line cut off by ``max_tokens``) is kept in ``generations.jsonl`` with its
  reason, and counted by the ``unparsable`` filter.
- **Optional classifier** (``classify``): the labeler answers a Yes/No question about each parsed
  request (``prompts/red_team_classify.j2``), asked with Yes first and with No first; P(yes) is
  the mean over the two orders of the normalised option probabilities, so a position bias
  cancels. It is asked inside the row (journaled and cached like the generation); the threshold
  is applied afterwards. Off by default: a small model's Yes/No is close to chance and would
  drop good prompts at random, and every prompt here was written to imitate harmful seeds.
- **Filters run after generation**, over the journal's rows, in a fixed order, each counted:
  unparsable -> length -> duplicate of a seed (exact, near) -> duplicate of an earlier generated
  prompt (exact, near) -> classifier. Filter settings are not part of the journal's
  fingerprint, so changing one reruns only the filters. Near-duplicates: ``data.dedupe``.

Outputs: ``prompts.jsonl`` (kept prompts, ``id`` + ``prompt``: any job reads it as prompt data),
``prompts.removed.jsonl`` (every removed one with its filter and reason), ``generations.jsonl``
(every request's raw output), the card (``data.red_team_card``) and its novelty plot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rlaif.data.dedupe import DuplicateIndex, Match, nearest, nearest_method
from rlaif.data.red_team_card import FILTERS, write_red_team_card
from rlaif.data.sources import read_prompts
from rlaif.engine.cache import Cache
from rlaif.engine.feedback import OPTIONS, normalised
from rlaif.engine.jobs import (
    JobInputs,
    base_provenance,
    guard_spending,
    labeler_and_policy,
    load_options,
    public_description,
    run_journaled,
    source_provenance,
)
from rlaif.engine.journal import write_jsonl_atomic
from rlaif.engine.lock import folder_lock
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import ConfigError
from rlaif.labelers.base import GenerateParams
from rlaif.templates import Templates

DATASET_FILE = "prompts.jsonl"
REMOVED_FILE = "prompts.removed.jsonl"
log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
TIMINGS_FILE = "generations.timings.jsonl"


class RedTeamConfig(JobInputs):
    """Settings of ``rlaif generate red-team``. The seed prompts are ``prompts`` (``seeds`` in a
    YAML file or recipe section is the same setting)."""

    n: int = Field(default=100, ge=1, description="generation requests (rows)")
    examples: int = Field(default=5, ge=1, description="seed prompts shown per request (K)")
    temperature: float = Field(default=1.0, ge=0.0, description="sampling temperature")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=64, ge=1, description="new tokens per request")
    classify: bool = Field(default=False, description="ask the labeler whether each is harmful")
    classify_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="keep P(yes) >= t")
    min_chars: int = Field(default=15, ge=0)
    max_chars: int = Field(default=500, ge=1)
    near_duplicate: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Jaccard of word shingles: near-duplicate at >= t"
    )
    shingle_words: int = Field(default=2, ge=1, description="words per shingle")
    out: Path = Path("outputs/red-team")
    parquet: bool = False

    @model_validator(mode="before")
    @classmethod
    def _seeds_are_prompts(cls, values: Any) -> Any:
        if isinstance(values, dict) and "seeds" in values:
            if "prompts" in values:
                raise ValueError("give 'seeds' or 'prompts' (the same setting), not both")
            values = {**values, "prompts": values["seeds"]}
            del values["seeds"]
        return values

    @model_validator(mode="after")
    def _consistent(self) -> RedTeamConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        if self.policy is not None:
            raise ValueError("red-team generation uses the labeler only: set labeler, not policy")
        return self


# --------------------------------------------------------------------------- parsing

_NUMBERING = re.compile(r"^(?:\(?\d{1,3}[.):]|[-*\u2022])\s*")
_LABEL = re.compile(r"^(?:new\s+|another\s+)?(?:request|prompt|question)\s*\d*\s*[:\-]\s*", re.I)
_MARKUP = re.compile(r"^[*_`#>\s]+|[*_`\s]+$")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"))
_PREAMBLE = re.compile(
    r"^(?:sure|okay|ok|certainly|of course|here(?:'s| is| are)|new request|request)\b.*:$", re.I
)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|as an ai\b|i (?:can(?:no|')t|cannot|won'?t|"
    r"will not|am not able to|'m not able to) (?:help|assist|provide|create|generate|write|"
    r"comply|do that|fulfil|fulfill|come up))",
    re.I,
)


def _unquote(text: str) -> str:
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            return text[1:-1].strip()
    return text


def clean_line(line: str) -> str:
    """One output line without list numbering, markdown, a "Request:" label or quotes."""
    text = _MARKUP.sub("", line.strip())
    text = _NUMBERING.sub("", text)
    text = _LABEL.sub("", _MARKUP.sub("", text))
    return _unquote(_MARKUP.sub("", text)).strip()


def parse_request(text: str, finish_reason: str = "stop") -> tuple[str | None, str | None]:
    """The request in a model's output, or None and why there is none.

    The first line with text that is not a preamble ("Here is a new request:") is the request;
    the rest (often more list items) is ignored."""
    if finish_reason in ("content_filter", "refusal"):
        return None, f"the provider stopped the output ({finish_reason})"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    preamble = False
    for i, raw in enumerate(lines):
        line = clean_line(raw)
        if _PREAMBLE.match(line):
            preamble = True
            continue
        if not line:
            continue
        if _REFUSAL.match(line):
            return None, "the model refused instead of writing a request"
        if not re.search(r"[^\W\d_]", line):
            return None, "no words in the output"
        if finish_reason == "length" and i == len(lines) - 1:
            return None, "cut off by max_tokens before the request ended"
        return line, None
    return None, "a preamble but no request" if preamble else "empty output"


def seed_text(prompt: Any) -> str:
    """A seed's text: the prompt itself, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


def shown_seeds(seed: int, row_id: str, count: int, k: int) -> list[int]:
    """The seed indices row ``row_id`` shows, in the order shown: from ``(seed, row_id)`` only."""
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(range(count), min(k, count))


# --------------------------------------------------------------------------- the job


@dataclass
class RedTeamJob:
    templates: Templates
    labeler: Scheduler
    params: GenerateParams
    classify: bool
    seeds: list[tuple[str, str]]  # (id, text)
    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    schedulers: list[Scheduler]
    cache: Cache
    stats: EngineStats

    async def run_row(self, row: dict[str, Any]) -> dict[str, Any]:
        shown = [self.seeds[i] for i in row["shown"]]
        messages = self.templates.render("red_team", examples=[text for _, text in shown])
        params = self.params.model_copy(update={"seed": row["sampling_seed"]})
        answer = (await self.labeler.generate(messages, params))[0]
        prompt, reason = parse_request(answer.text, answer.finish_reason)
        out: dict[str, Any] = {
            "id": row["id"],
            "prompt": prompt,
            "shown_seeds": [sid for sid, _ in shown],
            "output": answer.text,
            "finish_reason": answer.finish_reason,
        }
        if reason is not None:
            out["unparsable"] = reason
        if self.classify and prompt is not None:
            out.update(await self.p_yes(prompt))
        return out

    async def p_yes(self, request: str) -> dict[str, Any]:
        """P(yes) to the classifier question, the mean over Yes-first and No-first."""
        asked = [
            self.labeler.option_logprobs(
                self.templates.render("red_team_classify", request=request, yes_first=yes_first),
                OPTIONS,
            )
            for yes_first in (True, False)
        ]
        per_order: list[float | None] = []
        for yes_first, logprobs in zip((True, False), await asyncio.gather(*asked), strict=True):
            probs = normalised(logprobs)
            per_order.append(None if probs is None else probs[0 if yes_first else 1])
        usable = [p for p in per_order if p is not None]
        return {
            "p_yes": sum(usable) / len(usable) if usable else None,
            "p_yes_orders": per_order,  # [Yes shown first, No shown first]
        }


def read_seeds(cfg: RedTeamConfig) -> list[tuple[str, str]]:
    rows = read_prompts(
        cfg.prompts, cfg.prompt_format, cfg.prompt_field, cfg.id_field, cfg.hh_context,
        load_options(cfg), cfg.limit,
    )  # fmt: skip
    seeds = [(r.id, seed_text(r.prompt).strip()) for r in rows]
    seeds = [(sid, text) for sid, text in seeds if text]
    if not seeds:
        raise ConfigError(f"{cfg.prompts}: no seed prompts with text")
    return seeds


def sampling_seed(seed: int, index: int, batch: int) -> int:
    """The sampling seed of request ``index`` (1-based): one per block of ``batch`` requests.

    A local backend seeds its random generator once per batch, so with one seed for every
    request the k-th request of every batch draws the same random numbers, and a small model
    then writes the same text for the k-th request of many batches. One seed per block keeps
    each block one batch (requests batch only with equal sampling settings) and gives every
    batch its own draws."""
    return seed * 1_000_003 + (index - 1) // batch


def stop_strings(shown: int) -> tuple[str, ...]:
    """Where a request ends: a blank line, or the next list item after the one asked for (a
    model continuing the list writes more items; they would only be cut off and cost time)."""
    return ("\n\n", f"\n{shown + 2}.")


def example_lists(seeds: int, k: int) -> int:
    """How many different example lists (ordered draws of ``k`` of ``seeds``) there are."""
    return math.perm(seeds, min(k, seeds))


def repeated_lists(rows: list[dict[str, Any]]) -> int:
    """Rows that showed the same example list as an earlier row: they ask the same question
    with the same sampling settings, so they get the same answer (a duplicate)."""
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for row in rows:
        key = tuple(row.get("shown_seeds") or ())
        repeats += key in seen
        seen.add(key)
    return repeats


def build(cfg: RedTeamConfig) -> RedTeamJob:
    """Read the seeds and render the templates before any model loads, then wire the labeler."""
    seeds = read_seeds(cfg)
    if example_lists(len(seeds), cfg.examples) < 2 * cfg.n:
        log.warning(
            "%d seeds shown %d at a time make only %d different requests for %d rows: rows that "
            "draw the same list get the same answer, removed as duplicates. Use more seeds, or "
            "a larger --examples",
            len(seeds), min(cfg.examples, len(seeds)),
            example_lists(len(seeds), cfg.examples), cfg.n,
        )  # fmt: skip
    templates = Templates(cfg.templates)
    shown = min(cfg.examples, len(seeds))
    params = GenerateParams.checked(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed,
        stop=stop_strings(shown),
    )  # fmt: skip
    templates.render("red_team", examples=[text for _, text in seeds[:shown]])
    used = ["red_team"]
    if cfg.classify:
        templates.render("red_team_classify", request="r", yes_first=True)
        used.append("red_team_classify")
    labeler, _ = labeler_and_policy(cfg, cfg.out)
    if cfg.classify and not labeler.supports_logprobs:
        raise ConfigError(
            f"classify reads option log-probs, and {labeler.backend}:{labeler.model_name} gives "
            "none: use --no-classify, or a labeler with log-probs"
        )
    cache = Cache(cfg.cache or Path(cfg.out) / "cache.sqlite")
    stats = EngineStats()
    sched = Scheduler(labeler, cache, stats, cfg.batch_size, cfg.concurrency)
    guard_spending(cfg, sched)
    provenance = {
        **base_provenance(),
        "source": {**source_provenance(cfg), "seeds": len(seeds)},
        "templates": templates.hashes(used),
        "generator": public_description(labeler.describe()),
        "params": params.model_dump(mode="json"),
        "seed": cfg.seed,
        "examples": cfg.examples,
        "sampling_block": sched.max_batch,  # requests per sampling seed
        "classify": cfg.classify,
    }
    rows = [
        {
            "id": f"gen-{i}",
            "prompt": None,
            "shown": shown_seeds(cfg.seed, f"gen-{i}", len(seeds), cfg.examples),
            "sampling_seed": sampling_seed(cfg.seed, i, sched.max_batch),
        }
        for i in range(1, cfg.n + 1)
    ]
    return RedTeamJob(
        templates, sched, params, cfg.classify, seeds, rows, provenance, [sched], cache, stats
    )


# --------------------------------------------------------------------------- filters


@dataclass
class Filtered:
    kept: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    counts: dict[str, int]  # per filter, in FILTERS order
    nearest_method: str


def _removed(row: dict[str, Any], name: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {**row, "removed": {"filter": name, "reason": reason, **extra}}


def apply_filters(
    rows: list[dict[str, Any]], seeds: list[tuple[str, str]], cfg: RedTeamConfig
) -> Filtered:
    """The filters, in order, over the generated rows (input order: the first of two duplicates
    is the one kept). Each removed row keeps its filter, reason and the text it matched."""
    counts = dict.fromkeys(FILTERS, 0)
    removed: list[dict[str, Any]] = []
    base = [{k: v for k, v in r.items() if k != "provenance"} for r in rows]
    parsed = [r for r in base if r.get("prompt")]
    seed_map = dict(seeds)
    near_seed = dict(
        zip(
            (r["id"] for r in parsed),
            nearest([r["prompt"] for r in parsed], seed_map, cfg.shingle_words),
            strict=True,
        )
    )
    seed_index = DuplicateIndex(cfg.near_duplicate, cfg.shingle_words)
    for sid, text in seeds:
        seed_index.add(sid, text)
    own = DuplicateIndex(cfg.near_duplicate, cfg.shingle_words)
    survivors = []

    def drop(row: dict[str, Any], name: str, reason: str, **extra: Any) -> None:
        counts[name] += 1
        removed.append(_removed(row, name, reason, **extra))

    for row in base:
        text = row.get("prompt")
        if not text:
            drop(row, "unparsable", row.get("unparsable") or "no request in the output")
            continue
        if len(text) < cfg.min_chars or len(text) > cfg.max_chars:
            side = "shorter than min_chars" if len(text) < cfg.min_chars else "over max_chars"
            drop(row, "length", f"{len(text)} characters: {side}")
            continue
        match = _best(seed_index.find(text), near_seed[row["id"]], cfg.near_duplicate)
        if match is not None:
            name = "seed_duplicate" if match.exact else "seed_near_duplicate"
            drop(row, name, _why(match, "seed"), match=match.key,
                 similarity=round(match.similarity, 4))  # fmt: skip
            continue
        match = own.find(text)
        if match is not None:
            name = "duplicate" if match.exact else "near_duplicate"
            drop(row, name, _why(match, "generated prompt"), match=match.key,
                 similarity=round(match.similarity, 4))  # fmt: skip
            continue
        own.add(row["id"], text)
        survivors.append(row)
    kept = []
    for row in survivors:
        if cfg.classify:
            p = row.get("p_yes")
            if p is None:
                drop(row, "classifier", "no probability on either option")
                continue
            if p < cfg.classify_threshold:
                drop(row, "classifier", f"P(yes) {p:.3f} < {cfg.classify_threshold}")
                continue
        kept.append(_kept_row(row, near_seed[row["id"]]))
    method = nearest_method(len(parsed), len(seeds))
    return Filtered(kept, sorted(removed, key=_row_order), counts, method)


def _best(exact: Match | None, near: Match | None, threshold: float) -> Match | None:
    if exact is not None and exact.exact:
        return exact
    candidates = [m for m in (exact, near) if m is not None and m.similarity >= threshold]
    return max(candidates, key=lambda m: m.similarity) if candidates else None


def _why(match: Match, what: str) -> str:
    if match.exact:
        return f"the same text as {what} {match.key}"
    return f"Jaccard {match.similarity:.3f} with {what} {match.key}"


def _row_order(row: dict[str, Any]) -> int:
    return int(str(row["id"]).rsplit("-", 1)[-1])


def _kept_row(row: dict[str, Any], near: Match | None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "prompt": row["prompt"],
        "source": "red-team",
        "nearest_seed": near.key if near else None,
        "nearest_seed_similarity": round(near.similarity, 4) if near else 0.0,
        "shown_seeds": row["shown_seeds"],
    }
    if "p_yes" in row:
        out["p_yes"] = row["p_yes"]
    return out


# --------------------------------------------------------------------------- run


@dataclass(repr=False)
class RedTeamResult:
    rows: list[dict[str, Any]]  # kept prompts
    removed: list[dict[str, Any]]
    failed: list[dict[str, Any]]  # requests whose labeler call failed (a rerun retries them)
    generated: int  # requests answered
    counts: dict[str, int]
    resumed: int
    stats: EngineStats
    seconds: float
    dataset: Path
    card: Path
    extra_files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        name, rows, failed = type(self).__name__, len(self.rows), len(self.failed)
        return f"{name}({rows} prompts kept, {failed} failed, dataset={self.dataset})"


async def run_red_team(
    cfg: RedTeamConfig,
    command: str,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, EngineStats], None] | None = None,
) -> RedTeamResult:
    with folder_lock(cfg.out):
        started = time.perf_counter()
        job = build(cfg)
        out = Path(cfg.out)
        run = await run_journaled(
            job.rows, job.run_row, job.provenance, job.schedulers, job.cache, job.stats,
            out / GENERATIONS_FILE, out / TIMINGS_FILE, on_row, on_start, cfg.breaker,
        )  # fmt: skip
        answered, failed = list(run.rows()), list(run.rows("failed"))
        filtered = apply_filters(answered, job.seeds, cfg)
        dataset = write_jsonl_atomic(out / DATASET_FILE, filtered.kept)
        removed_file = write_jsonl_atomic(out / REMOVED_FILE, filtered.removed)
        extra = [removed_file, run.dataset, run.timings_file]
        extra += [run.failed_file] if run.failed_file else []
        if cfg.parquet and filtered.kept:
            from rlaif.engine.jobs import write_parquet

            extra.append(write_parquet(dataset))
        seconds = time.perf_counter() - started
        settings = cfg.model_dump(
            mode="json",
            include={"n", "classify_threshold", "min_chars", "max_chars", "near_duplicate",
                     "shingle_words"},
        )  # fmt: skip
        card, plots = write_red_team_card(
            out, filtered.kept, filtered.removed, failed, len(answered), filtered.counts,
            {**settings, "nearest_method": filtered.nearest_method,
             "repeated_lists": repeated_lists(answered)}, job.provenance, job.stats,
            seconds, command, run.resumed,
        )  # fmt: skip
        return RedTeamResult(
            filtered.kept, filtered.removed, failed, len(answered), filtered.counts, run.resumed,
            job.stats, seconds, dataset, card, [*extra, *plots],
        )  # fmt: skip
