"""What every dataset job shares: the input settings, labeler wiring, provenance and timings.

``generate sl-cai`` and ``generate prefs`` read the same prompt data, take the same labeler and
policy specs and write the same kind of output folder (dataset, card, cache, timings). Their
config models extend ``JobInputs`` so a flag means the same thing in both.

A failed labeler call fails its row, and the run goes on: one bad prompt should not cost the
others. A dead endpoint is different: a rejected key, a wrong model or URL, or nothing listening
fails every row the same way, so the first such failure (``LabelerCallError.permanent``, as the
labeler classified it) stops the run with ``EndpointError``, and so do ``breaker`` rows in a row
that failed after their retries (the circuit breaker: an endpoint that answers only errors).
Rows written so far stay in the journal, and the same command resumes after the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlaif import __version__
from rlaif.data.datasets_io import LoadOptions, hub_id, resolve_dataset
from rlaif.data.sources import HHContext, PromptFormat, read_prompts, source_sha256
from rlaif.engine.cache import Cache
from rlaif.engine.journal import Journal, write_jsonl_atomic
from rlaif.engine.rowfile import JsonlRows
from rlaif.engine.rowtable import PromptTable
from rlaif.engine.runner import run_rows
from rlaif.engine.scheduler import EngineStats, Scheduler
from rlaif.errors import ConfigError, EndpointError, LabelerCallError
from rlaif.labelers.base import Labeler, Usage, backend_class, create_labeler, parse_spec
from rlaif.resources import ConstitutionPath, PromptsPath, default_constitution


class JobInputs(BaseModel):
    """Settings shared by the dataset jobs (flags and ``--config`` YAML share the names)."""

    model_config = ConfigDict(extra="forbid")

    prompts: PromptsPath
    prompt_format: PromptFormat = "auto"
    prompt_field: str = "prompt"
    id_field: str = "id"
    hh_context: HHContext = "first"
    split: str | None = Field(default=None, description="dataset split (load_dataset's split)")
    data_dir: str | None = Field(default=None, description="folder inside a dataset repo")
    subset: str | None = Field(default=None, description="dataset configuration (its name)")
    streaming: bool = Field(default=False, description="read only the first --limit records")
    limit: int | None = Field(default=None, ge=1)
    constitution: ConstitutionPath = Field(default_factory=default_constitution)
    templates: Path | None = None
    labeler: str = "smollm2"
    labeler_settings: dict[str, Any] = {}
    policy: str | None = None
    policy_settings: dict[str, Any] = {}
    seed: int = 0
    batch_size: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    cache: Path | None = None
    breaker: int = Field(
        default=20, ge=1, description="stop the run when this many rows in a row have failed"
    )
    ray: bool | str = Field(
        default=False,
        description="run the local labelers' calls in Ray actors: true (a local instance, or the "
        "cluster RAY_ADDRESS names) or a cluster address (auto, ray://HOST:10001)",
    )
    ray_actors: int | None = Field(default=None, ge=1, description="default: what the cluster fits")
    ray_settings: dict[str, Any] = {}
    max_cost: float | None = Field(
        default=None,
        gt=0,
        description="stop before spending more than this (dollars, by the labelers' prices; "
        "engine/budget.py)",
    )

    @field_validator("ray_settings")
    @classmethod
    def _known_ray_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from rlaif.scale.ray import check_settings

        try:
            check_settings(value)  # a typo fails here, before any prompt is read
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return value


def load_options(cfg: JobInputs) -> LoadOptions:
    return LoadOptions(cfg.split, cfg.data_dir, cfg.subset, cfg.streaming)


def read_rows(cfg: JobInputs) -> PromptTable:
    """The job's prompts as ``{"id", "prompt"}`` rows, held compactly (``rowtable``)."""
    prompts = read_prompts(
        cfg.prompts,
        cfg.prompt_format,
        cfg.prompt_field,
        cfg.id_field,
        cfg.hh_context,
        load_options(cfg),
        cfg.limit,
    )
    table = PromptTable()
    for i, p in enumerate(prompts):
        table.append(p.id, p.prompt, cfg.prompts)
        prompts[i] = None  # type: ignore[call-overload]  # freed as it goes: a lower peak
    return table


def source_provenance(cfg: JobInputs) -> dict[str, Any]:
    record: dict[str, Any] = {
        "file": Path(cfg.prompts).name,
        "sha256": source_sha256(cfg.prompts),
        "format": cfg.prompt_format,
        "prompt_field": cfg.prompt_field,
        "hh_context": cfg.hh_context,
    }
    hub = hub_id(cfg.prompts)
    if hub is not None:  # a Hub dataset: its id and the commit that was read
        source = resolve_dataset(*hub, cfg.data_dir)
        record.update(file=source.repo_id, revision=hub[1] or "main", commit=source.commit)
    for key in ("split", "data_dir", "subset"):
        if getattr(cfg, key) is not None:
            record[key] = getattr(cfg, key)
    return record


def base_provenance() -> dict[str, Any]:
    return {"rlaif": __version__}


def public_description(desc: dict[str, Any]) -> dict[str, Any]:
    """A labeler's ``describe()`` as rows and cards carry it, which users publish: server URLs
    without credentials or key-like query values, and a local model folder as its name and its
    weights fingerprint instead of an absolute path on this machine."""
    from rlaif.labelers.reliability import redact
    from rlaif.models import weights_fingerprint

    out = dict(desc)
    urls = out.get("base_url")
    if isinstance(urls, str):
        out["base_url"] = redact(urls)
    elif isinstance(urls, list):
        out["base_url"] = [redact(u) if isinstance(u, str) else u for u in urls]
    model = out.get("model")
    if isinstance(model, str) and model and Path(model).expanduser().exists():
        path = Path(model).expanduser()
        out["model"] = path.resolve().name
        tag = weights_fingerprint(model)
        if tag:
            out["weights_fingerprint"] = tag
    return out


def make_labeler(
    spec: str,
    settings: dict[str, Any],
    batch_size: int | None,
    state_dir: Path | None = None,
) -> Labeler:
    """A labeler from its spec; ``--batch-size`` applies to backends that batch, and the run's
    output folder becomes ``state_dir`` for backends that keep state of their own there (the
    ids of submitted provider batches, so a rerun re-attaches instead of paying twice)."""
    return create_labeler(spec, **_job_settings(spec, settings, batch_size, state_dir))


def _job_settings(
    spec: str, settings: dict[str, Any], batch_size: int | None, state_dir: Path | None
) -> dict[str, Any]:
    backend, _ = parse_spec(spec)
    fields = backend_class(backend).Settings.model_fields
    if batch_size is not None and "batch_size" in fields and "batch_size" not in settings:
        settings = {**settings, "batch_size": batch_size}
    if state_dir is not None and "state_dir" in fields and "state_dir" not in settings:
        settings = {**settings, "state_dir": state_dir}
    return settings


def labeler_and_policy(cfg: JobInputs, state_dir: Path | None = None) -> tuple[Labeler, Labeler]:
    """The labeler, and the policy (the same object when the specs match, so one model loads
    and one scheduler batches both roles' requests together). Under ``cfg.ray`` the local ones
    compute in Ray actors (``rlaif.scale.ray``) and keep their identity here."""
    labeler = make_labeler(cfg.labeler, cfg.labeler_settings, cfg.batch_size, state_dir)
    same = cfg.policy is None or (
        cfg.policy == cfg.labeler and cfg.policy_settings in ({}, cfg.labeler_settings)
    )
    policy = (
        labeler
        if same
        else make_labeler(cfg.policy or cfg.labeler, cfg.policy_settings, cfg.batch_size, state_dir)
    )
    if not cfg.ray:
        return labeler, policy
    from rlaif.scale.ray import Role, distribute

    specs = {"labeler": (cfg.labeler, cfg.labeler_settings, labeler)}
    if not same:
        specs["policy"] = (cfg.policy or cfg.labeler, cfg.policy_settings, policy)
    roles = {}
    for name, (spec, settings, built) in specs.items():
        backend, base = parse_spec(spec)
        merged = {**base, **_job_settings(spec, settings, cfg.batch_size, None)}
        roles[name] = Role(built, backend, merged)
    on_ray = distribute(cfg.ray, cfg.ray_actors, cfg.ray_settings, roles)
    return on_ray["labeler"], on_ray.get("policy", on_ray["labeler"])


def guard_spending(cfg: JobInputs, labeler: Scheduler, policy: Scheduler | None = None) -> None:
    """Hold the run to ``cfg.max_cost`` (``engine.budget``): the schedulers of the labeler and
    the policy get the budget and their labeler's prices; a limit without prices is an error
    here, before anything runs."""
    from rlaif.engine.budget import make_budget

    roles = [(cfg.labeler, cfg.labeler_settings, labeler)]
    if policy is not None and policy is not labeler:
        roles.append((cfg.policy or cfg.labeler, cfg.policy_settings, policy))
    make_budget(cfg.max_cost, roles)


def fingerprint(provenance: dict[str, Any]) -> str:
    blob = json.dumps(provenance, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def write_timings(path: Path, rows: Sequence[dict[str, Any]], timings: Sequence[float]) -> Path:
    """Per-row wall-clock seconds beside the dataset (kept out of it so reruns are
    byte-identical); rows carried over from an earlier run keep their earlier timing.
    ``timings[i]`` is row ``i``'s, NaN for a row this run did not process."""
    previous: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                previous[str(rec["id"])] = rec
            except (ValueError, KeyError):
                continue

    def lines() -> Iterator[dict[str, Any]]:  # streamed: a list of N records at 10^5 rows
        for row, seconds in zip(rows, timings, strict=True):
            rid = str(row["id"])
            if not math.isnan(seconds):
                yield {"id": rid, "seconds": seconds, "resumed": False}
            elif rid in previous:
                yield {**previous[rid], "resumed": True}

    return write_jsonl_atomic(path, lines())


def write_parquet(dataset: Path) -> Path:
    from rlaif.data.datasets_io import load_local_dataset

    target = dataset.with_suffix(".parquet")
    load_local_dataset(dataset).to_parquet(str(target))  # with every row's full provenance
    return target


_RESUME = "rows written so far are kept: fix it and run the same command again to resume"


def endpoint_unusable(e: LabelerCallError) -> EndpointError:
    """The error that stops a run at a permanent labeler failure (``e.permanent``)."""
    return EndpointError(f"labeler endpoint unusable: {e}; {_RESUME}")


@dataclass
class JournaledRun:
    dataset: Path
    failed_file: Path | None
    timings_file: Path
    resumed: int

    def rows(self, side: str | None = None) -> JsonlRows:
        """The dataset's rows, or a side file's ("failed", "unlabeled"), read from disk when
        used: held in memory, a large run's rows made the process grow with N."""
        path = self.dataset
        if side is not None:
            path = self.dataset.with_name(f"{self.dataset.stem}.{side}.jsonl")
        return JsonlRows(path)


async def run_journaled(
    rows: Sequence[dict[str, Any]],
    run_row: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    provenance: dict[str, Any],
    schedulers: list[Scheduler],
    cache: Cache,
    stats: EngineStats,
    dataset: Path,
    timings: Path,
    on_row: Callable[[dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, EngineStats], None] | None = None,
    breaker: int = 20,
) -> JournaledRun:
    """Run ``run_row`` over ``rows`` through the journal (resume), with per-row timings, failed
    rows kept with their reason, and the labelers' retries and cost totalled; closes the
    schedulers, labelers and cache at the end, whatever happens."""
    journal = Journal(dataset, fingerprint(provenance), provenance=provenance)
    # enough rows in flight to fill every batch slot twice over; rows finish (and are written)
    # steadily instead of all at the end
    window = 2 * max(s.max_batch * s.max_concurrency for s in schedulers)
    # 8 bytes a row, by position: a row's time moves here from ``pending`` (rows in flight or
    # waiting to be written) when the row is written, which the runner does in input order
    seconds = array("d", [math.nan]) * len(rows)
    pending: dict[str, float] = {}
    written = 0
    failed_in_a_row = 0

    def on_written(row: dict[str, Any], resumed: bool) -> None:
        nonlocal written
        if not resumed:  # the input row at this position: its id is the one ``process`` saw
            at = journal.resumed + written
            seconds[at] = pending.pop(str(rows[at]["id"]), math.nan)
            written += 1
        if on_row:
            on_row(row, resumed)

    async def process(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal failed_in_a_row
        t0 = time.perf_counter()
        try:
            result = await run_row(row)
        except LabelerCallError as e:  # failed for good: keep the reason, go on with the run
            if e.permanent:
                raise endpoint_unusable(e) from e
            stats.failed_rows += 1
            failed_in_a_row += 1
            if failed_in_a_row >= breaker:
                # rows in flight may fail after the trip too: the message names the threshold
                raise EndpointError(
                    f"the last {breaker} rows all failed, the last with: {e}; {_RESUME}"
                ) from e
            failure = {"reason": e.reason, "attempts": e.attempts}
            return {"id": row["id"], "prompt": row["prompt"], "failed": failure}
        finally:
            pending[str(row["id"])] = round(time.perf_counter() - t0, 3)
        failed_in_a_row = 0
        return {**result, "provenance": provenance}

    if on_start:
        on_start(len(rows), stats)
    try:
        await run_rows(rows, process, journal, window, on_written, keep=False)
        dataset, failed_file = journal.finish(len(rows))
        stats.retries = sum(s.labeler.retries for s in schedulers)
        costs = [s.labeler.cost for s in schedulers if s.labeler.cost is not None]
        stats.cost = sum(costs) if costs else None
        stats.usage = billed_usage(schedulers)
        timings_file = write_timings(timings, rows, seconds)  # output ids are the input's
    finally:
        await close_all(schedulers, cache)
    return JournaledRun(dataset, failed_file, timings_file, journal.resumed)


def billed_usage(schedulers: list[Scheduler]) -> Usage | None:
    """The tokens the run's labelers were billed for (each labeler once), None if none says."""
    labelers = {id(s.labeler): s.labeler for s in schedulers}.values()
    usages = [u for lab in labelers if (u := getattr(lab, "usage", None)) is not None]
    return sum(usages, Usage()) if usages else None


async def close_all(schedulers: list[Scheduler], cache: Cache) -> None:
    """Close every scheduler, labeler and the cache, each even when another failed to (a cache
    that cannot commit must not leave the labelers' connections open); then raise the first
    failure."""
    errors: list[Exception] = []
    for sched in schedulers:
        for close in (sched.aclose, sched.labeler.aclose):
            try:
                await close()
            except Exception as e:
                errors.append(e)
    try:
        cache.close()
    except Exception as e:
        errors.append(e)
    if errors:
        raise errors[0]
