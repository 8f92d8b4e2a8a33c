"""What each stage of ``rlaif run`` does: build the stage's own config and call its job.

The pipeline (``rlaif.pipeline``) decides *whether* a stage runs; this module decides *how*: it
maps a run recipe onto the configs of ``generate sl-cai``, ``train sft``, ``generate prefs``,
``train rm``, ``train ppo|dpo|grpo``, the policy evaluation and the report, wiring each stage's
inputs to the outputs of the stages before it. With a ``red_team:`` section, ``generate
red-team`` runs first and sl-cai and prefs read its prompts (``train_prompt_settings``).
``*_settings`` return what goes into a stage's fingerprint: everything that changes its result.

The eval stage's judge is ``eval.judge`` (with ``eval.judge_settings``), by default the run's
labeler. It is told which labelers made the training data (SL-CAI critiques and revisions,
preference labels, GRPO's constitutional reward), so it can warn when the judge is one of them.
The RM stage records how many held-out pairs its accuracy was measured on (``held_out.json``):
the report's interval needs that count. The RM (and DPO) may mix other preference data into the
AI pairs (``rm.mix``, ``rl.settings.mix``: ``rlaif.data.mix``); the mixed-in sources are inputs
of the stage, so a changed file reruns it, and the RM writes its per-source held-out accuracy
(``eval_by_source.json``) for the report. Nothing here imports the pipeline or the report imports
this module: the pipeline hands its stage order over (``order``) when it plans.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlaif.eval.independence import policy_spec
from rlaif.labelers.base import run_sync

HELD_OUT_FILE = "held_out.json"


class StageBuilder:
    def __init__(self, cfg: Any, root: Path):
        self.cfg = cfg
        self.root = root
        self.cache = root / "cache.sqlite"
        self.command = f"rlaif run (recipe {cfg.name})"
        self.order: list[str] | None = None  # the stage names, set by the pipeline's plan
        self.spent = 0.0  # what this run's data stages billed so far (for ``max_cost``)

    def _budgeted(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A data stage's settings with what is left of the run's ``max_cost``; a stage whose
        labelers are all local bills nothing and runs without it."""
        from rlaif.engine.budget import bills_nothing

        limit = getattr(self.cfg, "max_cost", None)
        labeler = settings.get("labeler")
        roles = [(labeler, settings.get("labeler_settings") or {})]
        if settings.get("policy"):
            roles.append((settings["policy"], settings.get("policy_settings") or {}))
        if limit is None or (labeler and bills_nothing(roles)):
            return settings
        if self.spent >= limit:
            from rlaif.errors import BudgetExceededError

            raise BudgetExceededError(self.spent, limit)
        return {**settings, "max_cost": limit - self.spent}

    def _billed(self, result: Any) -> Any:
        self.spent += result.stats.cost or 0.0
        return result

    # ------------------------------------------------------------------ data

    def red_team_seeds(self) -> Path:
        from rlaif.resources import locate

        section = self.cfg.red_team or {}
        return locate(section.get("seeds", section.get("prompts", self.cfg.prompts)), "prompts")

    def red_team_settings(self) -> dict[str, Any]:
        """The seeds default to the recipe's training prompts (the first ``train_prompts``), so
        the held-out evaluation prompts are never shown to the generator."""
        c = self.cfg
        section = {k: v for k, v in (c.red_team or {}).items() if k not in ("seeds", "prompts")}
        own = "seeds" in (c.red_team or {}) or "prompts" in (c.red_team or {})
        seeds = {"prompts": str(self.red_team_seeds())}
        if not own:
            seeds.update(prompt_format=c.prompt_format, limit=c.train_prompts)
        return {
            **seeds, "templates": str(c.templates) if c.templates else None,
            "labeler": c.labeler, "labeler_settings": c.labeler_settings, "seed": c.seed,
            **section,
        }  # fmt: skip

    def red_team(self, out: Path) -> list[Path]:
        from rlaif.engine.red_team import RedTeamConfig, run_red_team
        from rlaif.errors import ConfigError

        settings = self._budgeted(self.red_team_settings())
        cfg = RedTeamConfig(**settings, out=out, cache=self.cache)
        result = self._billed(run_sync(run_red_team(cfg, self.command)))
        if not result.rows:
            raise ConfigError(f"red_team kept no prompts to train on; see {result.card}")
        return [result.dataset, result.card]

    def train_prompt_settings(self) -> dict[str, Any]:
        """The prompts sl_cai and prefs train on: the red_team stage's, when there is one."""
        c = self.cfg
        if c.red_team is not None:
            path = self.root / "red_team" / "prompts.jsonl"
            return {"prompts": str(path), "prompt_format": "jsonl", "limit": None}
        return {"prompts": str(c.prompts), "prompt_format": c.prompt_format,
                "limit": c.train_prompts}  # fmt: skip

    def sl_cai_settings(self) -> dict[str, Any]:
        c = self.cfg
        return {
            **self.train_prompt_settings(), "constitution": str(c.constitution),
            "templates": str(c.templates) if c.templates else None, "labeler": c.labeler,
            "labeler_settings": c.labeler_settings, "policy": policy_spec(str(c.base_model)),
            "seed": c.seed, **c.sl_cai,
        }  # fmt: skip

    def sl_cai(self, out: Path) -> list[Path]:
        from rlaif.engine.sl_cai import SLCAIConfig, run_sl_cai

        cfg = SLCAIConfig(**self._budgeted(self.sl_cai_settings()), out=out, cache=self.cache)
        result = self._billed(run_sync(run_sl_cai(cfg, self.command)))
        return [result.dataset, result.card]

    def prefs_settings(self, policy: str) -> dict[str, Any]:
        c = self.cfg
        return {
            **self.train_prompt_settings(), "constitution": str(c.constitution),
            "templates": str(c.templates) if c.templates else None, "labeler": c.labeler,
            "labeler_settings": c.labeler_settings, "policy": policy_spec(str(self.root / policy)),
            "seed": c.seed, **c.prefs,
        }  # fmt: skip

    def prefs(self, policy: str) -> Any:
        def run(out: Path) -> list[Path]:
            from rlaif.engine.prefs import PrefsConfig, run_prefs

            settings = self._budgeted(self.prefs_settings(policy))
            cfg = PrefsConfig(**settings, out=out, cache=self.cache)
            result = self._billed(run_sync(run_prefs(cfg, self.command)))
            return [result.dataset, result.card]

        return run

    # ------------------------------------------------------------------ training

    def _train(self, cls: Any, main: Any, out: Path, **settings: Any) -> list[Path]:
        from rlaif.train.common import load_recipe

        cfg = load_recipe(cls, None, output_dir=str(out), **settings)
        return [main(cfg)]

    def sft_settings(self) -> dict[str, Any]:
        return {"model": self.cfg.base_model, "seed": self.cfg.seed, **self.cfg.sft}

    def sft(self, out: Path) -> list[Path]:
        from rlaif.train import sft

        data = str(self.root / "sl_cai" / "sl_cai.jsonl")
        return self._train(sft.SFTRunConfig, sft.main, out, dataset=data, **self.sft_settings())

    def rm_settings(self) -> dict[str, Any]:
        return {"seed": self.cfg.seed, **self.cfg.rm}

    def rm(self, prefs: str) -> Any:
        def run(out: Path) -> list[Path]:
            from rlaif.train import reward
            from rlaif.train.common import load_recipe

            data = str(self.root / prefs / "preferences.jsonl")
            cfg = load_recipe(reward.RewardRunConfig, None, output_dir=str(out),
                              model=str(self.root / "sft"), dataset=data,
                              **self.rm_settings())  # fmt: skip
            model = reward.main(cfg)
            by_source = out / reward.BY_SOURCE_FILE  # what the trained model scored
            scored = json.loads(by_source.read_text(encoding="utf-8"))["overall"]["n"]
            held_out = out / HELD_OUT_FILE
            held_out.write_text(json.dumps({"pairs": scored}))
            return [model, held_out, by_source]

        return run

    def mix_inputs(self, section: dict[str, Any]) -> list[Path]:
        """The sources a stage's ``mix`` reads: their contents are part of its fingerprint (the
        plan is made before any stage runs, so a missing file stops the run at once)."""
        from rlaif.data.mix import input_paths

        return input_paths(section.get("mix"))

    def rl_settings(self) -> dict[str, Any]:
        return {"algorithm": self.cfg.rl.algorithm, "seed": self.cfg.seed, **self.cfg.rl.settings}

    def rl(self, policy: str, prefs: str, rm: str) -> Any:
        def run(out: Path) -> list[Path]:
            c = self.cfg
            settings = {"seed": c.seed, **c.rl.settings}
            model = str(self.root / policy)
            if c.rl.algorithm == "ppo":
                from rlaif.train import ppo

                return self._train(
                    ppo.PPORunConfig, ppo.main, out, model=model, ref_model=str(self.root / "sft"),
                    reward_model=str(self.root / rm), prompts=str(c.prompts),
                    prompt_format=c.prompt_format, prompt_limit=c.train_prompts,
                    judge_labeler=c.labeler, **settings,
                )  # fmt: skip
            if c.rl.algorithm == "grpo":
                from rlaif.train import grpo

                return self._train(
                    grpo.GRPORunConfig, grpo.main, out, model=model,
                    reward_model=str(self.root / rm), prompts=str(c.prompts),
                    prompt_format=c.prompt_format, prompt_limit=c.train_prompts,
                    labeler=c.labeler, **settings,
                )  # fmt: skip
            from rlaif.train import dpo

            data = str(self.root / prefs / "preferences.jsonl")
            return self._train(dpo.DPORunConfig, dpo.main, out, model=model, dataset=data,
                               **settings)  # fmt: skip

        return run

    # ------------------------------------------------------------------ evaluation, report

    def eval_inputs(self) -> list[Path]:
        c = self.cfg
        red = c.red_team_source
        return [c.prompts, *([red.path] if red else []), c.benign_source.path]

    def training_labelers(self) -> list[dict[str, Any]]:
        """The labelers whose output the policies were trained on, as the stages use them."""
        c = self.cfg
        sl_cai, prefs = self.sl_cai_settings(), self.prefs_settings("sft")
        used = [
            ("SL-CAI critiques and revisions", sl_cai["labeler"], sl_cai["labeler_settings"]),
            ("preference labels", prefs["labeler"], prefs["labeler_settings"]),
        ]
        rl = c.rl.settings
        if c.rl.algorithm == "grpo" and rl.get("constitution_reward"):
            used.append(("GRPO constitutional reward", rl.get("labeler", c.labeler), {}))
        return [{"role": role, "spec": spec, "settings": settings or {}}
                for role, spec, settings in used]  # fmt: skip

    def eval_settings(self) -> dict[str, Any]:
        c = self.cfg
        benign = c.benign_source.read("eval_benign" if c.eval_benign else "benign_prompts",
                                      c.benign_limit)  # fmt: skip
        judge_named = "judge" in c.eval or "labeler" in c.eval  # labeler: the judge's old name
        judge = {} if judge_named else {"judge": c.labeler, "judge_settings": c.labeler_settings}
        return {
            "red_team": held_out_prompts(c), "benign": benign, **judge,
            "training_labelers": self.training_labelers(), "constitution": str(c.constitution),
            "templates": str(c.templates) if c.templates else None, "seed": c.seed, **c.eval,
        }  # fmt: skip

    def evaluate(self, policy: str) -> Any:
        def run(out: Path) -> list[Path]:
            from rlaif.eval.policy import PolicyEvalConfig, run_policy_eval

            policies = {"base": self.cfg.base_model, "sft": str(self.root / "sft")}
            policies[policy] = str(self.root / policy)
            cfg = PolicyEvalConfig(
                policies=policies, **self.eval_settings(), out=out, cache=self.cache
            )
            result = run_policy_eval(cfg)
            return [p for p in (result.report, result.samples, result.plot) if p]

        return run

    def report(self, out: Path) -> list[Path]:
        from rlaif.report import write_report

        return list(write_report(self.cfg, self.root, self.order))


def held_out_prompts(cfg: Any) -> list[str]:
    """The evaluation's red-team prompts: ``eval_red_team`` (or ``eval_prompts``), else the
    ``eval_limit`` prompts after the ``train_prompts`` training ones."""
    from rlaif.data.sources import read_prompts
    from rlaif.errors import ConfigError

    source = cfg.red_team_source
    if source is not None:
        return source.read("eval_red_team" if cfg.eval_red_team else "eval_prompts",
                           cfg.eval_limit)  # fmt: skip
    rows = read_prompts(cfg.prompts, cfg.prompt_format)
    held = [r.text for r in rows][cfg.train_prompts : cfg.train_prompts + cfg.eval_limit]
    if not held:
        raise ConfigError(
            f"no held-out prompts: {cfg.prompts} has {len(rows)} prompts and train_prompts is "
            f"{cfg.train_prompts}; set eval_red_team or lower train_prompts"
        )
    return held
