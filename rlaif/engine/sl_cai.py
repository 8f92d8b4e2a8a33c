"""The SL-CAI job: prompt data in, ``sl_cai.jsonl`` + dataset card out, cached and resumable.

This module wires the parts together; each part keeps its own concern: ``data.sources`` reads
prompts, ``CritiqueRevise`` defines what happens to a row, ``Scheduler`` batches and caches
labeler requests, ``run_rows`` keeps rows in flight and writes them in order through the
``Journal``, and ``data.cards`` writes the card.

Determinism: the dataset file holds only what its inputs determine (texts, principle ids, token
counts, provenance). Wall-clock timings would make two identical runs differ byte for byte, so
they go to ``sl_cai.timings.jsonl`` beside it, one line per row, and into the card's totals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from rlaif.constitution import load_constitution
from rlaif.data.cards import write_sl_cai_card
from rlaif.engine.cache import Cache
from rlaif.engine.cleanup import CleanupMode
from rlaif.engine.critique_revise import TEMPLATES_USED, CritiqueRevise
from rlaif.engine.jobs import (
    JobInputs,
    base_provenance,
    fingerprint,
    labeler_and_policy,
    read_rows,
    source_provenance,
    write_parquet,
    write_timings,
)
from rlaif.engine.journal import Journal
from rlaif.engine.runner import run_rows
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import LabelerCallError
from rlaif.labelers.base import GenerateParams
from rlaif.templates import Templates

DATASET_FILE = "sl_cai.jsonl"
TIMINGS_FILE = "sl_cai.timings.jsonl"


class SLCAIConfig(JobInputs):
    """Settings of ``rlaif generate sl-cai`` (flags and the ``--config`` YAML share them)."""

    rounds: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    few_shot: bool = True
    cleanup: CleanupMode = "fix"
    out: Path = Path("outputs/sl-cai")
    parquet: bool = False


@dataclass
class SLCAIResult:
    rows: list[dict[str, Any]]
    resumed: int
    stats: EngineStats
    seconds: float
    dataset: Path
    card: Path
    extra_files: list[Path] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)  # rows whose labeler call failed


@dataclass
class Prepared:
    """A job ready to run: inputs read and checked, labelers and schedulers built (models load
    lazily, on the first request)."""

    step: CritiqueRevise
    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    schedulers: list[Scheduler]
    cache: Cache
    stats: EngineStats


def build(cfg: SLCAIConfig) -> Prepared:
    """Read and check every input (templates render once, so a broken or unsafe template fails
    here, before a model loads), then wire labelers, schedulers and the step."""
    rows = read_rows(cfg)
    constitution = load_constitution(cfg.constitution)
    templates = Templates(cfg.templates)
    params = GenerateParams.checked(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    critic, policy = labeler_and_policy(cfg)
    cache = Cache(cfg.cache or Path(cfg.out) / "cache.sqlite")
    stats = EngineStats()
    critic_sched = Scheduler(critic, cache, stats, cfg.batch_size, cfg.concurrency)
    policy_sched = (
        critic_sched  # one labeler, one scheduler: first answers share batches with critiques
        if policy is critic
        else Scheduler(policy, cache, stats, cfg.batch_size, cfg.concurrency)
    )
    step = CritiqueRevise(
        constitution=constitution,
        templates=templates,
        policy=policy_sched,
        critic=critic_sched,
        rounds=cfg.rounds,
        seed=cfg.seed,
        params=params,
        few_shot=cfg.few_shot,
        cleanup=cfg.cleanup,
    )
    step.check_templates()
    provenance = {
        **base_provenance(),
        "source": source_provenance(cfg),
        "constitution": {
            "name": constitution.name,
            "version": constitution.version,
            "sha256": constitution.sha256,
        },
        "templates": templates.hashes(TEMPLATES_USED),
        "policy": policy.describe(),
        "critic": critic.describe(),
        "params": params.model_dump(mode="json"),
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "few_shot": cfg.few_shot and bool(constitution.few_shot),
        "cleanup": cfg.cleanup,
    }
    schedulers = [critic_sched] if policy_sched is critic_sched else [critic_sched, policy_sched]
    return Prepared(step, rows, provenance, schedulers, cache, stats)


async def run_sl_cai(
    cfg: SLCAIConfig,
    command: str,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, EngineStats], None] | None = None,
) -> SLCAIResult:
    started = time.perf_counter()
    job = build(cfg)
    out = Path(cfg.out)
    journal = Journal(out / DATASET_FILE, fingerprint(job.provenance))
    # enough rows in flight to fill every batch slot twice over; rows finish (and are written)
    # steadily instead of all at the end
    window = 2 * max(s.max_batch * s.max_concurrency for s in job.schedulers)
    timings: dict[str, dict[str, Any]] = {}

    async def process(row: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            result = await job.step.run_row(row)
        except LabelerCallError as e:  # failed for good: keep the reason, go on with the run
            job.stats.failed_rows += 1
            failure = {"reason": e.reason, "attempts": e.attempts}
            return {"id": row["id"], "prompt": row["prompt"], "failed": failure}
        finally:
            timings[str(row["id"])] = {"seconds": round(time.perf_counter() - t0, 3)}
        return {**result, "provenance": job.provenance}

    if on_start:
        on_start(len(job.rows), job.stats)
    try:
        done = await run_rows(job.rows, process, journal, window, on_row)
        dataset, failed_file = journal.finish()
        ok = [r for r in done if "failed" not in r]
        failed = [r for r in done if "failed" in r]
        job.stats.retries = sum(s.labeler.retries for s in job.schedulers)
        costs = [s.labeler.cost for s in job.schedulers if s.labeler.cost is not None]
        job.stats.cost = sum(costs) if costs else None
        seconds = time.perf_counter() - started
        extra = [write_timings(out / TIMINGS_FILE, done, timings)]
        if failed_file:
            extra.append(failed_file)
        if cfg.parquet:
            extra.append(write_parquet(dataset))
        card = write_sl_cai_card(
            out, ok, job.provenance, job.stats, seconds, command, len(journal.kept), failed
        )
    finally:
        for sched in job.schedulers:
            await sched.aclose()
            await sched.labeler.aclose()
        job.cache.close()
    return SLCAIResult(ok, len(journal.kept), job.stats, seconds, dataset, card, extra, failed)
