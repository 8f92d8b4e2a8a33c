"""The RL-CAI preference job: prompt data in, ``preferences.jsonl`` + dataset card out.

For every prompt the policy samples K responses (one request with ``n = K``, seeded); every pair
of them (K choose 2) is one output row, compared by the ``Feedback`` step. Pair rows are known
before anything runs (``<prompt id>/<i>-<j>``), so the ordinary journal gives resume without gaps
or duplicates; the pairs of one prompt share its generation request, which the scheduler sends
once (in-flight dedupe, then the cache).

Each row is ready for TRL: conversational ``prompt`` / ``chosen`` / ``rejected`` (chosen is the
response with P >= 0.5) and ``preference_prob`` = P(chosen better), plus everything the label was
made from (per principle and order probabilities, log-probs or votes, reasoning) and provenance.
Pairs with identical responses, or whose labeler answers yield no probability at all, are kept
in ``preferences.unlabeled.jsonl`` with their reason rather than dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from rlaif.constitution import load_constitution
from rlaif.data.cards import write_prefs_card
from rlaif.engine.cache import Cache
from rlaif.engine.cleanup import stop_flags
from rlaif.engine.critique_revise import CHECK_CONVERSATION
from rlaif.engine.feedback import TEMPLATES_USED, Feedback, FeedbackSettings
from rlaif.engine.jobs import (
    JobInputs,
    base_provenance,
    guard_spending,
    labeler_and_policy,
    public_description,
    read_rows,
    run_journaled,
    source_provenance,
    write_parquet,
)
from rlaif.engine.lock import folder_lock
from rlaif.engine.rowtable import PairRows
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.labelers.base import GenerateParams
from rlaif.templates import Templates, prompt_variables

log = logging.getLogger(__name__)

DATASET_FILE = "preferences.jsonl"
TIMINGS_FILE = "preferences.timings.jsonl"


class PrefsConfig(JobInputs):
    """Settings of ``rlaif generate prefs`` (flags and the ``--config`` YAML share them)."""

    responses: int = Field(default=2, ge=2, description="responses sampled per prompt (K)")
    temperature: float = Field(default=1.0, gt=0.0, description="policy sampling temperature")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    out: Path = Path("outputs/prefs")
    parquet: bool = False


@dataclass(repr=False)
class PrefsResult:
    rows: Sequence[dict[str, Any]]
    unlabeled: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    resumed: int
    stats: EngineStats
    seconds: float
    dataset: Path
    card: Path
    extra_files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        # short: asyncio formats the finished task's result (this) when a run ends, and the
        # default repr of every row cost ~60 ms at 1,000 rows
        name, rows, failed = type(self).__name__, len(self.rows), len(self.failed)
        return f"{name}({rows} rows, {failed} failed, dataset={self.dataset})"


@dataclass
class PrefsJob:
    feedback: Feedback
    policy: Scheduler
    templates: Templates
    params: GenerateParams
    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    schedulers: list[Scheduler]
    cache: Cache
    stats: EngineStats

    async def run_row(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"]
        v = prompt_variables(prompt)
        conversation = v["conversation"]
        messages = self.templates.render("initial_response", **v)
        samples = await self.policy.generate(messages, self.params)
        i, j = row["pair"]
        a, b = samples[i].text, samples[j].text
        base = {"id": row["id"], "prompt_id": row["prompt_id"], "pair": [i, j]}
        if a.strip() == b.strip():
            reason = "the two responses are identical"
            return {**base, "prompt": prompt, "response_a": a, "response_b": b,
                    "unlabeled": {"reason": reason}}  # fmt: skip
        cmp = await self.feedback.compare(row["id"], conversation, a, b)
        details = cmp.as_dict()
        if cmp.prob_a is None:
            reason = "; ".join(cmp.errors) or "no usable judgement"
            return {**base, "prompt": prompt, "response_a": a, "response_b": b,
                    "unlabeled": {"reason": reason, **details}}  # fmt: skip
        a_wins = cmp.prob_a >= 0.5
        chosen, rejected = (a, b) if a_wins else (b, a)
        return {
            **base,
            "prompt": conversation,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "preference_prob": cmp.prob_a if a_wins else 1.0 - cmp.prob_a,
            "response_a": a,
            "response_b": b,
            **details,
            "finish_reasons": [samples[i].finish_reason, samples[j].finish_reason],
            # a response the provider stopped (a refusal, its content filter): marked, never
            # silently a training pair
            "flags": [
                *stop_flags(samples[i].finish_reason, "response_a_"),
                *stop_flags(samples[j].finish_reason, "response_b_"),
            ],
        }


def pair_rows(prompt_rows: Sequence[dict[str, Any]], k: int) -> PairRows:
    """Every pair of each prompt's ``k`` responses, computed when asked (a list of them was
    ~300 bytes a pair at 10^5 prompts)."""
    return PairRows(prompt_rows, k)


def build(cfg: PrefsConfig) -> PrefsJob:
    """Read and check every input before any model loads, then wire labelers and schedulers."""
    prompt_rows = read_rows(cfg)
    constitution = load_constitution(cfg.constitution)
    templates = Templates(cfg.templates)
    params = GenerateParams.checked(
        n=cfg.responses,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
    )
    # templates render before labelers exist (Ray actors start with them)
    Feedback(constitution, templates, None, cfg.feedback).check_templates()  # type: ignore[arg-type]
    templates.render("initial_response", **prompt_variables("p"))
    templates.render("initial_response", **prompt_variables(CHECK_CONVERSATION))
    labeler, policy = labeler_and_policy(cfg, cfg.out)
    cache = Cache(cfg.cache or Path(cfg.out) / "cache.sqlite")
    stats = EngineStats()
    labeler_sched = Scheduler(labeler, cache, stats, cfg.batch_size, cfg.concurrency)
    policy_sched = (
        labeler_sched
        if policy is labeler
        else Scheduler(policy, cache, stats, cfg.batch_size, cfg.concurrency)
    )
    guard_spending(cfg, labeler_sched, policy_sched)
    feedback = Feedback(
        constitution, templates, labeler_sched, cfg.feedback, labeler.supports_logprobs, cfg.seed
    )
    notice = feedback.notice(f"{labeler.backend}:{labeler.model_name}")
    if notice:
        log.warning("%s", notice)
    provenance = {
        **base_provenance(),
        "source": source_provenance(cfg),
        "constitution": {
            "name": constitution.name,
            "version": constitution.version,
            "sha256": constitution.sha256,
        },
        "templates": templates.hashes(("initial_response", *TEMPLATES_USED)),
        "policy": public_description(policy.describe()),
        "labeler": public_description(labeler.describe()),
        "params": params.model_dump(mode="json"),
        "feedback": {**cfg.feedback.model_dump(mode="json"), "mode": feedback.mode},
        "seed": cfg.seed,
    }
    schedulers = [labeler_sched] if policy_sched is labeler_sched else [labeler_sched, policy_sched]
    rows = pair_rows(prompt_rows, cfg.responses)
    return PrefsJob(
        feedback, policy_sched, templates, params, rows, provenance, schedulers, cache, stats
    )


async def run_prefs(
    cfg: PrefsConfig,
    command: str,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, EngineStats], None] | None = None,
) -> PrefsResult:
    with folder_lock(cfg.out):
        started = time.perf_counter()
        job = build(cfg)
        out = Path(cfg.out)
        run = await run_journaled(
            job.rows, job.run_row, job.provenance, job.schedulers, job.cache, job.stats,
            out / DATASET_FILE, out / TIMINGS_FILE, on_row, on_start, cfg.breaker,
        )  # fmt: skip
        ok, failed = run.rows(), list(run.rows("failed"))
        unlabeled = list(run.rows("unlabeled"))
        unlabeled_file = run.dataset.with_name(f"{run.dataset.stem}.unlabeled.jsonl")
        extra = [run.timings_file]
        extra += [p for p in (run.failed_file, unlabeled_file) if p and p.exists()]
        if cfg.parquet:
            extra.append(write_parquet(run.dataset))
        seconds = time.perf_counter() - started
        card, plots = write_prefs_card(
            out, ok, unlabeled, failed, job.provenance, job.stats, seconds, command, run.resumed
        )
        return PrefsResult(
            ok, unlabeled, failed, run.resumed, job.stats, seconds, run.dataset, card,
            [*extra, *plots],
        )  # fmt: skip
