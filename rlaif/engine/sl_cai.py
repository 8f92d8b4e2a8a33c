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

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlaif import __version__
from rlaif.constitution import load_constitution
from rlaif.data.cards import write_sl_cai_card
from rlaif.data.sources import HHContext, PromptFormat, read_prompts, source_sha256
from rlaif.engine.cache import Cache
from rlaif.engine.cleanup import CleanupMode
from rlaif.engine.critique_revise import TEMPLATES_USED, CritiqueRevise
from rlaif.engine.journal import Journal, write_jsonl_atomic
from rlaif.engine.runner import run_rows
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import LabelerCallError
from rlaif.labelers.base import GenerateParams, backend_class, create_labeler, parse_spec
from rlaif.resources import default_constitution
from rlaif.templates import Templates

DATASET_FILE = "sl_cai.jsonl"
TIMINGS_FILE = "sl_cai.timings.jsonl"


class SLCAIConfig(BaseModel):
    """Settings of ``rlaif generate sl-cai`` (flags and the ``--config`` YAML share them)."""

    model_config = ConfigDict(extra="forbid")

    prompts: Path
    prompt_format: PromptFormat = "auto"
    prompt_field: str = "prompt"
    id_field: str = "id"
    hh_context: HHContext = "first"
    limit: int | None = Field(default=None, ge=1)
    constitution: Path = Field(default_factory=default_constitution)
    templates: Path | None = None
    labeler: str = "smollm2"
    labeler_settings: dict[str, Any] = {}
    policy: str | None = None
    policy_settings: dict[str, Any] = {}
    rounds: int = Field(default=1, ge=1)
    seed: int = 0
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    few_shot: bool = True
    cleanup: CleanupMode = "fix"
    batch_size: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    out: Path = Path("outputs/sl-cai")
    cache: Path | None = None
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


def _make_labeler(spec: str, settings: dict[str, Any], batch_size: int | None) -> Any:
    backend, _ = parse_spec(spec)
    fields = backend_class(backend).Settings.model_fields
    if batch_size is not None and "batch_size" in fields and "batch_size" not in settings:
        settings = {**settings, "batch_size": batch_size}
    return create_labeler(spec, **settings)


def _fingerprint(provenance: dict[str, Any]) -> str:
    blob = json.dumps(provenance, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
    prompts = read_prompts(
        cfg.prompts, cfg.prompt_format, cfg.prompt_field, cfg.id_field, cfg.hh_context
    )
    rows = [{"id": p.id, "prompt": p.prompt} for p in prompts][: cfg.limit]
    constitution = load_constitution(cfg.constitution)
    templates = Templates(cfg.templates)
    params = GenerateParams.checked(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    critic = _make_labeler(cfg.labeler, cfg.labeler_settings, cfg.batch_size)
    same = cfg.policy is None or (
        cfg.policy == cfg.labeler and cfg.policy_settings in ({}, cfg.labeler_settings)
    )
    policy = (
        critic
        if same
        else _make_labeler(cfg.policy or cfg.labeler, cfg.policy_settings, cfg.batch_size)
    )
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
        "rlaif": __version__,
        "source": {
            "file": Path(cfg.prompts).name,
            "sha256": source_sha256(cfg.prompts),
            "format": cfg.prompt_format,
            "prompt_field": cfg.prompt_field,
            "hh_context": cfg.hh_context,
        },
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
    journal = Journal(out / DATASET_FILE, _fingerprint(job.provenance))
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
        extra = [_write_timings(out, done, timings)]
        if failed_file:
            extra.append(failed_file)
        if cfg.parquet:
            extra.append(_write_parquet(dataset))
        card = write_sl_cai_card(
            out, ok, job.provenance, job.stats, seconds, command, len(journal.kept), failed
        )
    finally:
        for sched in job.schedulers:
            await sched.aclose()
            await sched.labeler.aclose()
        job.cache.close()
    return SLCAIResult(ok, len(journal.kept), job.stats, seconds, dataset, card, extra, failed)


def _write_timings(
    out: Path, rows: list[dict[str, Any]], timings: dict[str, dict[str, Any]]
) -> Path:
    path = out / TIMINGS_FILE
    previous: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                previous[str(rec["id"])] = rec
            except (ValueError, KeyError):
                continue
    lines = []
    for row in rows:
        rid = str(row["id"])
        if rid in timings:
            lines.append({"id": rid, **timings[rid], "resumed": False})
        elif rid in previous:
            lines.append({**previous[rid], "resumed": True})
    return write_jsonl_atomic(path, lines)


def _write_parquet(dataset: Path) -> Path:
    from datasets import load_dataset

    target = dataset.with_suffix(".parquet")
    load_dataset("json", data_files=str(dataset), split="train").to_parquet(str(target))
    return target
