"""``rlaif run RECIPE``: the full RL-CAI loop, stage by stage, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from rlaif.errors import ConfigError, ConfigFileError
from rlaif.resources import locate
from rlaif.yamlio import load_yaml_model, parse_key_values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the full loop: SL-CAI -> SFT -> AI feedback -> RM -> RL -> eval -> report",
        description="Run the whole RL-CAI loop from one recipe (the shipped `quickstart` runs "
        "on CPU with the embedded model; `rlaif init DIR` writes a copy to edit). Each stage "
        "writes OUT/<stage>/ and a manifest; the same command again skips finished stages whose "
        "inputs did not change and resumes an interrupted one. Ends with OUT/report.html and "
        "OUT/report.md.",
    )
    p.add_argument(
        "recipe", help="run recipe: a YAML file, or a shipped recipe by name (quickstart)"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (outputs/<name>)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="rerun from this stage on")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--list", action="store_true", help="list the stages and their state, run none")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe setting, nested keys dotted: --set sft.learning_rate=1e-5 "
        "--set rl.settings.kl_coef=0.1 (repeatable; values read as YAML)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the data stages' requests, tokens and (with prices) cost, and run nothing "
        "(docs/cost.md)",
    )
    p.add_argument(
        "--max-cost",
        type=float,
        metavar="DOLLARS",
        help="stop (exit 4, resumable) before the data stages together bill more than this; "
        "needs the labeler's prices (docs/cost.md)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlaif.pipeline import RunConfig, plan, read_manifest, run_pipeline

    console = Console()
    cfg = load_yaml_model(
        locate(args.recipe, "recipe"),
        RunConfig,
        ConfigFileError,
        parse_key_values(args.overrides, "--set"),
    )
    if args.out is not None:
        cfg = cfg.model_copy(update={"out": args.out})
    if args.max_cost is not None:
        if args.max_cost <= 0:
            raise ConfigError("--max-cost must be more than 0")
        cfg = cfg.model_copy(update={"max_cost": args.max_cost})
    if args.estimate:
        from rlaif.cli.generate import print_estimate
        from rlaif.pipeline import estimate_run

        return print_estimate(console, estimate_run(cfg))
    if args.list:
        for stage in plan(cfg):
            m = read_manifest(cfg.root / stage.name) or {}
            console.print(f"  {stage.name:<10} {m.get('status', 'not run')}")
        return 0

    def event(stage: str, what: str, record: dict[str, Any]) -> None:
        if what == "skipped":
            console.print(f"[dim]{stage:<10} skipped (up to date)[/]")
        elif what in ("running", "resuming"):
            console.rule(f"[bold]{stage}[/] ({what})")
        else:
            console.print(f"[green]{stage:<10} done[/] in {record['seconds']:.1f} s")

    console.print(f"[bold]rlaif run[/] {cfg.name} -> {cfg.root}")
    try:
        run_pipeline(cfg, args.start, args.until, event)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        return 130
    report = cfg.root / "report.html"
    if report.exists():
        console.print(f"report: {report} (and report.md)")
    return 0
