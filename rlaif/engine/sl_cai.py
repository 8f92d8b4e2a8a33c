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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
    guard_spending,
    labeler_and_policy,
    public_description,
    read_rows,
    run_journaled,
    source_provenance,
    write_parquet,
)
from rlaif.engine.lock import folder_lock
from rlaif.engine.scheduler import EngineStats, Scheduler
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


@dataclass(repr=False)
class SLCAIResult:
    rows: Sequence[dict[str, Any]]
    resumed: int
    stats: EngineStats
    seconds: float
    dataset: Path
    card: Path
    extra_files: list[Path] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)  # rows whose labeler call failed

    def __repr__(self) -> str:
        # short: asyncio formats the finished task's result (this) when a run ends, and the
        # default repr of every row cost ~60 ms at 1,000 rows
        name, rows, failed = type(self).__name__, len(self.rows), len(self.failed)
        return f"{name}({rows} rows, {failed} failed, dataset={self.dataset})"


@dataclass
class Prepared:
    """A job ready to run: inputs read and checked, labelers and schedulers built (models load
    lazily, on the first request)."""

    step: CritiqueRevise
    rows: Sequence[dict[str, Any]]
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
    unwired = CritiqueRevise(
        constitution=constitution,
        templates=templates,
        policy=None,  # type: ignore[arg-type]  # wired below, once the templates render
        critic=None,  # type: ignore[arg-type]
        rounds=cfg.rounds,
        seed=cfg.seed,
        params=params,
        few_shot=cfg.few_shot,
        cleanup=cfg.cleanup,
    )
    unwired.check_templates()  # before labelers exist (Ray actors start with them)
    critic, policy = labeler_and_policy(cfg, cfg.out)
    cache = Cache(cfg.cache or Path(cfg.out) / "cache.sqlite")
    stats = EngineStats()
    critic_sched = Scheduler(critic, cache, stats, cfg.batch_size, cfg.concurrency)
    policy_sched = (
        critic_sched  # one labeler, one scheduler: first answers share batches with critiques
        if policy is critic
        else Scheduler(policy, cache, stats, cfg.batch_size, cfg.concurrency)
    )
    guard_spending(cfg, critic_sched, policy_sched)
    step = replace(unwired, policy=policy_sched, critic=critic_sched)
    provenance = {
        **base_provenance(),
        "source": source_provenance(cfg),
        "constitution": {
            "name": constitution.name,
            "version": constitution.version,
            "sha256": constitution.sha256,
        },
        "templates": templates.hashes(TEMPLATES_USED),
        "policy": public_description(policy.describe()),
        "critic": public_description(critic.describe()),
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
    with folder_lock(cfg.out):
        started = time.perf_counter()
        job = build(cfg)
        out = Path(cfg.out)
        run = await run_journaled(
            job.rows, job.step.run_row, job.provenance, job.schedulers, job.cache, job.stats,
            out / DATASET_FILE, out / TIMINGS_FILE, on_row, on_start, cfg.breaker,
        )  # fmt: skip
        ok, failed = run.rows(), list(run.rows("failed"))
        extra = [run.timings_file, *([run.failed_file] if run.failed_file else [])]
        if cfg.parquet:
            extra.append(write_parquet(run.dataset))
        seconds = time.perf_counter() - started
        card = write_sl_cai_card(
            out, ok, job.provenance, job.stats, seconds, command, run.resumed, failed
        )
        return SLCAIResult(ok, run.resumed, job.stats, seconds, run.dataset, card, extra, failed)
