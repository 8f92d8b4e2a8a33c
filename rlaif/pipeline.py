"""``rlaif run RECIPE``: the whole RL-CAI loop as resumable stages.

Stages, in order (each writes ``<out>/<stage>/`` and a ``manifest.json`` there):

    [red_team ->] sl_cai -> sft -> prefs -> rm -> rl -> [prefs_2 -> rm_2 -> rl_2 ...]
        -> eval -> report

- ``red_team`` (only with a ``red_team:`` section): new red-team prompts, few-shot from seeds
  (by default the training prompts, never the held-out ones); sl_cai and prefs then train on
  ``red_team/prompts.jsonl``, and the evaluation still holds out the recipe's own prompts;
- ``sl_cai``: critiques and revisions of the base model's answers (``rlaif generate sl-cai``);
- ``sft``: SFT on the revisions;
- ``prefs``: response pairs *from the SFT policy*, labelled by the AI feedback step;
- ``rm``: the soft-label reward model (skipped when RL is DPO, which needs none);
- ``rl``: PPO (default), DPO or GRPO from the SFT policy;
- ``iterations: K`` (the seed's iterated RL-CAI): K more rounds in which the current policy's
  samples are relabelled, the RM is trained on them, and RL continues from the current policy;
- ``eval``: base vs SFT vs RL under the evaluation judge (``rlaif.eval.policy``), on held-out
  red-team prompts (``eval_red_team``, else the prompts after the training ones) and benign
  prompts (``eval_benign``); the judge is ``eval.judge``, by default the run's labeler, which is
  then warned about in the report (it labelled the training data);
- ``report``: ``report.html`` and ``report.md`` from everything above.

**Skipping and resuming.** A stage's fingerprint hashes its resolved settings, the hashes of its
input files and its upstream stages' fingerprints. A finished stage whose fingerprint matches is
skipped; a stage that was interrupted keeps its folder and resumes (the data stages through their
journals and cache, every trainer from the newest checkpoint in it: PPO's, and the TRL trainers'
``checkpoint-N`` written every ``save_steps``); a stage whose inputs changed reruns from scratch,
and so does everything after it. ``--from STAGE`` reruns from a stage on; ``--until
STAGE`` stops after one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlaif import __version__
from rlaif.data.datasets_io import LoadOptions, hub_id
from rlaif.data.sources import HHContext, PromptFormat, read_prompts, source_sha256
from rlaif.errors import ConfigError, StateFileError
from rlaif.resources import ConstitutionPath, PromptsPath, data_file, default_constitution

MANIFEST = "manifest.json"
RAY_KEYS = ("ray", "ray_actors", "ray_settings")


class RLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ppo", "dpo", "grpo"] = "ppo"
    settings: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known_keys(self) -> RLSettings:
        check_keys(self.settings, stage_keys("rl", self.algorithm))
        check_mix_setting(self.settings)
        return self


def check_mix_setting(values: dict[str, Any]) -> None:
    """A section's ``mix`` entries (``rlaif.data.mix``), checked when the recipe loads."""
    if "mix" in values:
        from rlaif.data.mix import parse_mix

        try:
            parse_mix(values["mix"])
        except ConfigError as e:
            raise ValueError(str(e)) from None


def check_keys(values: dict[str, Any], allowed: list[str]) -> None:
    for key in values:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"unknown key '{key}'{hint}")


class PromptSource(BaseModel):
    """A prompt set of the evaluation: a path or Hub dataset id (a bare string), or a mapping
    with how to read it (``format``, ``split``, ``data_dir``, ``subset``, ``prompt_field``,
    ``hh_context``, as ``--prompts`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    path: PromptsPath
    format: PromptFormat = "auto"
    split: str | None = None
    data_dir: str | None = None
    subset: str | None = None
    prompt_field: str = "prompt"
    hh_context: HHContext = "first"

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value

    def read(self, setting: str, limit: int | None) -> list[str]:
        """The first ``limit`` prompts; an error names the setting and the source."""
        from rlaif.errors import PromptDataError

        options = LoadOptions(split=self.split, data_dir=self.data_dir, subset=self.subset)
        try:
            rows = read_prompts(
                self.path, self.format, self.prompt_field,
                hh_context=self.hh_context, options=options, limit=limit,
            )  # fmt: skip
        except PromptDataError as e:
            raise ConfigError(f"{setting}: {e}") from None
        return [r.text for r in rows][:limit]


class RunConfig(BaseModel):
    """A run recipe (the shipped ``quickstart``). Per-stage sections pass settings through to
    the stage's own config (the same names as ``rlaif generate`` / ``rlaif train``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    out: Path | None = None
    base_model: str = "smollm2"
    labeler: str = "smollm2"
    labeler_settings: dict[str, Any] = {}
    constitution: ConstitutionPath = Field(default_factory=default_constitution)
    templates: Path | None = None
    prompts: PromptsPath
    prompt_format: str = "auto"
    train_prompts: int = Field(default=16, ge=1, description="first N prompts train")
    eval_prompts: PromptsPath | None = Field(
        default=None, description="default: prompts after those"
    )
    eval_red_team: PromptSource | None = Field(
        default=None, description="held-out red-team prompts, with load options"
    )
    eval_limit: int = Field(default=8, ge=1)
    benign_prompts: PromptsPath = Field(default_factory=lambda: data_file("benign_prompts.txt"))
    eval_benign: PromptSource | None = Field(
        default=None, description="benign prompts, with load options"
    )
    benign_limit: int | None = Field(default=4, ge=1)
    iterations: int = Field(default=0, ge=0, description="extra rounds of relabel -> RM -> RL")
    seed: int = 0
    red_team: dict[str, Any] | None = Field(
        default=None,
        description="a red_team stage before sl_cai: new prompts from seeds (docs/red-team.md)",
    )
    sl_cai: dict[str, Any] = {}
    sft: dict[str, Any] = {}
    prefs: dict[str, Any] = {}
    rm: dict[str, Any] = {}
    rl: RLSettings = Field(default_factory=RLSettings)
    eval: dict[str, Any] = {}
    # the data stages' labeler calls in Ray actors (docs/scaling.md); not part of fingerprints
    ray: bool | str = False
    ray_actors: int | None = Field(default=None, ge=1)
    ray_settings: dict[str, Any] = {}
    # what the data stages of one `rlaif run` may spend together (engine/budget.py); not part
    # of fingerprints: a rerun with a higher limit resumes
    max_cost: float | None = Field(default=None, gt=0)

    @field_validator("ray_settings")
    @classmethod
    def _known_ray_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from rlaif.scale.ray import check_settings

        try:
            check_settings(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return value

    @model_validator(mode="after")
    def _one_source_each(self) -> RunConfig:
        for new, old in (("eval_red_team", "eval_prompts"), ("eval_benign", "benign_prompts")):
            if new in self.model_fields_set and old in self.model_fields_set:
                raise ValueError(f"give '{new}' or '{old}', not both ('{new}' takes load options)")
        return self

    @property
    def root(self) -> Path:
        return self.out or Path("outputs") / self.name

    @property
    def red_team_source(self) -> PromptSource | None:
        """Where the held-out red-team prompts come from; None: after the training prompts."""
        if self.eval_red_team is not None:
            return self.eval_red_team
        return PromptSource(path=self.eval_prompts) if self.eval_prompts is not None else None

    @property
    def benign_source(self) -> PromptSource:
        return self.eval_benign or PromptSource(path=self.benign_prompts, format="text")

    @field_validator("red_team", "sl_cai", "sft", "prefs", "rm", "eval")
    @classmethod
    def _known_stage_keys(cls, value: dict[str, Any] | None, info: Any) -> dict[str, Any] | None:
        """A misspelt key in a stage section is an error now, not after an hour of SL-CAI."""
        if value is None:
            return value
        check_keys(value, stage_keys(info.field_name, "ppo"))
        if info.field_name == "rm":
            check_mix_setting(value)
        feedback = value.get("feedback") if info.field_name == "prefs" else None
        if isinstance(feedback, dict):  # the one nested section: its keys are known too
            from rlaif.engine.feedback import FeedbackSettings

            try:
                check_keys(feedback, list(FeedbackSettings.model_fields))
            except ValueError as e:
                raise ValueError(f"in feedback: {e}") from None
        return value


def hub_commits_of(cfg: RunConfig) -> dict[str, str]:
    """The commit each Hub id among the run's local models resolves to (none: ``{}``)."""
    from rlaif.train.common import MODEL_KEYS, hub_commits

    names = [cfg.base_model, *(cfg.rl.settings.get(k) for k in MODEL_KEYS)]
    judge = cfg.eval.get("judge", cfg.eval.get("labeler"))  # labeler: the judge's old name
    for spec in (cfg.labeler, *([judge] if isinstance(judge, str) else [])):
        backend, _, model = spec.partition(":")
        if backend in ("transformers", "vllm"):
            names.append(model)
    return hub_commits(names)


def stage_keys(section: str, algorithm: str) -> list[str]:
    """The settings a stage section may hold: its config's fields."""
    import dataclasses

    if section == "red_team":
        from rlaif.engine.red_team import RedTeamConfig

        return [*RedTeamConfig.model_fields, "seeds"]
    if section == "sl_cai":
        from rlaif.engine.sl_cai import SLCAIConfig

        return list(SLCAIConfig.model_fields)
    if section == "prefs":
        from rlaif.engine.prefs import PrefsConfig

        return list(PrefsConfig.model_fields)
    if section == "eval":
        from rlaif.eval.policy import PolicyEvalConfig

        return [*PolicyEvalConfig.model_fields, "labeler", "labeler_settings"]  # the old names
    if section == "sft":
        from rlaif.train.sft import SFTRunConfig as cls
    elif section == "rm":
        from rlaif.train.reward import RewardRunConfig as cls
    elif algorithm == "ppo":
        from rlaif.train.ppo import PPORunConfig as cls
    elif algorithm == "grpo":
        from rlaif.train.grpo import GRPORunConfig as cls
    else:
        from rlaif.train.dpo import DPORunConfig as cls
    return [f.name for f in dataclasses.fields(cls)]


@dataclass
class Stage:
    name: str
    run: Callable[[Path], Any]
    settings: Callable[[], dict[str, Any]]  # evaluated when the stage is reached
    inputs: list[Path]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprinted(settings: dict[str, Any]) -> dict[str, Any]:
    """A stage's settings as its fingerprint sees them: where the labeler calls ran (``ray``)
    and the spending limit (``max_cost``) change nothing the stage writes, so switching Ray on
    or off, or raising the limit, never reruns a stage."""
    return {k: v for k, v in settings.items() if k not in (*RAY_KEYS, "max_cost")}


def _file_hash(path: Path) -> str:
    return source_sha256(path) if path.exists() or hub_id(path) else "missing"


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's manifest, None when it has none; a damaged one is an error (read as "none",
    the stage would be rerun from scratch over what it had written)."""
    path = stage_dir / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise StateFileError(path, str(e)) from None
    try:
        record = json.loads(text)
    except ValueError as e:
        raise StateFileError(path, f"not JSON: {e}") from None
    if not isinstance(record, dict) or "fingerprint" not in record:
        raise StateFileError(path, "no stage fingerprint in it")
    return record


def write_manifest(stage_dir: Path, record: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(stage_dir / MANIFEST)


def plan(cfg: RunConfig) -> list[Stage]:
    """The stages of a run, each with the function that runs it into its folder."""
    from rlaif import stages

    root = cfg.root
    ray = {k: getattr(cfg, k) for k in RAY_KEYS if k in cfg.model_fields_set}
    if ray:  # the top-level keys reach the data stages; a stage section's own keys win
        sections = {"sl_cai": {**ray, **cfg.sl_cai}, "prefs": {**ray, **cfg.prefs}}
        if cfg.red_team is not None:
            sections["red_team"] = {**ray, **cfg.red_team}
        cfg = cfg.model_copy(update=sections)
    s = stages.StageBuilder(cfg, root)
    out = [
        Stage("sl_cai", s.sl_cai, s.sl_cai_settings, [cfg.prompts, cfg.constitution]),
        Stage("sft", s.sft, s.sft_settings, []),
        Stage(
            "prefs",
            s.prefs("sft"),
            lambda: s.prefs_settings("sft"),
            [cfg.prompts, cfg.constitution],
        ),
    ]
    if cfg.red_team is not None:  # new prompts from seeds first; sl_cai and prefs train on them
        out.insert(0, Stage("red_team", s.red_team, s.red_team_settings, [s.red_team_seeds()]))
    policy = "sft"
    for k in range(cfg.iterations + 1):
        suffix = "" if k == 0 else f"_{k + 1}"
        if k > 0:  # relabel the current policy's samples
            out.append(Stage(f"prefs{suffix}", s.prefs(policy),
                             lambda p=policy: s.prefs_settings(p),
                             [cfg.prompts, cfg.constitution]))  # fmt: skip
        if cfg.rl.algorithm != "dpo":
            out.append(Stage(f"rm{suffix}", s.rm(f"prefs{suffix}"), s.rm_settings,
                             s.mix_inputs(cfg.rm)))  # fmt: skip
        rl_name = f"rl{suffix}"
        rl_inputs = [cfg.prompts, *s.mix_inputs(cfg.rl.settings)]
        out.append(Stage(rl_name, s.rl(policy, f"prefs{suffix}", f"rm{suffix}"),
                         s.rl_settings, rl_inputs))  # fmt: skip
        policy = rl_name
    out.append(Stage("eval", s.evaluate(policy), s.eval_settings, s.eval_inputs()))
    out.append(Stage("report", s.report, dict, []))
    s.order = [stage.name for stage in out]  # the report lists the stages in this order
    return out


DATA_STAGES = ("red_team", "sl_cai", "prefs")


def estimate_run(cfg: RunConfig) -> Any:
    """``rlaif run --estimate``: the data stages' requests, tokens and cost (``engine.estimate``),
    with each stage's settings as the run would resolve them. Stages after ``red_team`` read
    prompts it has not written yet: they are counted as its ``n`` prompts of ``max_tokens``
    tokens each (an upper bound; its filters remove some)."""
    from rlaif.engine import estimate as est
    from rlaif.engine.prefs import PrefsConfig
    from rlaif.engine.red_team import RedTeamConfig
    from rlaif.engine.sl_cai import SLCAIConfig

    parts = []
    rows = None
    for stage in plan(cfg):
        kind = stage.name.split("_")[0] if stage.name.startswith("prefs") else stage.name
        if kind not in DATA_STAGES:
            continue
        settings = {k: v for k, v in stage.settings().items() if k != "max_cost"}
        if kind == "red_team":
            red = RedTeamConfig(**settings)
            parts.append(est.estimate_red_team(red))
            rows = est.stand_in_prompts(red.n, red.max_tokens)
            continue
        if rows is not None:  # the red-team prompts do not exist yet: the seeds pass validation
            settings.update(prompts=str(cfg.prompts), prompt_format=cfg.prompt_format)
        model = SLCAIConfig if kind == "sl_cai" else PrefsConfig
        part = (est.estimate_sl_cai if kind == "sl_cai" else est.estimate_prefs)(
            model(**settings), rows
        )
        for line in part.lines:
            line.stage = stage.name
        parts.append(part)
    combined = est.combine(parts)
    if rows is not None:
        combined.notes.append(
            f"sl_cai and prefs counted on {len(rows)} red-team prompts of max_tokens tokens each"
        )
    return combined


def run_pipeline(
    cfg: RunConfig,
    start: str | None = None,
    until: str | None = None,
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or skip) every stage; returns one status record per stage. One ``rlaif run`` at a
    time writes a run folder: a second stops at once (``engine.lock``)."""
    from rlaif.engine.lock import folder_lock

    with folder_lock(cfg.root):
        return _run_stages(cfg, start, until, on_event)


def _run_stages(
    cfg: RunConfig,
    start: str | None,
    until: str | None,
    on_event: Callable[[str, str, dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    stages_ = plan(cfg)
    names = [s.name for s in stages_]
    for flag, value in (("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage; stages: {', '.join(names)}")
    # every stage's settings now: a bad setting of the last stage fails before the first runs
    resolved = {stage.name: stage.settings() for stage in stages_}
    forced = names.index(start) if start else len(names)
    last = names.index(until) if until else len(names) - 1
    # a Hub id names a branch that moves: the commit it resolves to now is part of every
    # fingerprint, so a new snapshot of the base model or labeler reruns the stages
    hub = hub_commits_of(cfg)
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    fingerprints: dict[str, str] = {}
    results = []
    for i, stage in enumerate(stages_[: last + 1]):
        stage_dir = root / stage.name
        fp = _hash({
            "stage": stage.name,
            "settings": fingerprinted(resolved[stage.name]),
            "inputs": {str(p): _file_hash(p) for p in stage.inputs},
            "upstream": [fingerprints[n] for n in names[:i]],
            "rlaif": __version__,
            **({"hub": hub} if hub else {}),
        })  # fmt: skip
        fingerprints[stage.name] = fp
        old = read_manifest(stage_dir)
        if stage.name == "report":
            pass  # always redrawn: it reads everything else
        elif old and old.get("fingerprint") == fp and old.get("status") == "done" and i < forced:
            write_manifest(stage_dir, {**old, "skipped": True, "checked": time.time()})
            results.append({**old, "skipped": True})
            if on_event:
                on_event(stage.name, "skipped", old)
            continue
        resume = bool(
            old and old.get("fingerprint") == fp and old.get("status") == "running" and i < forced
        )  # --from STAGE means from scratch
        if not resume and stage_dir.exists() and stage.name != "report":
            shutil.rmtree(stage_dir)  # changed inputs: nothing of the old stage is reused
        # whatever this stage produces, the stages after it must be redone with it
        for later in names[i + 1 :]:
            later_manifest = read_manifest(root / later)
            if later_manifest and later_manifest.get("status") == "done":
                write_manifest(root / later, {**later_manifest, "status": "stale"})
        record = {"stage": stage.name, "fingerprint": fp, "status": "running",
                  "started": time.time(), "resumed": resume, "skipped": False}  # fmt: skip
        write_manifest(stage_dir, record)
        if on_event:
            on_event(stage.name, "resuming" if resume else "running", record)
        t0 = time.perf_counter()
        outputs = stage.run(stage_dir)
        record.update(status="done", seconds=round(time.perf_counter() - t0, 1),
                      finished=time.time(), outputs=[str(p) for p in outputs or []])  # fmt: skip
        write_manifest(stage_dir, record)
        results.append(record)
        if on_event:
            on_event(stage.name, "done", record)
    return results
