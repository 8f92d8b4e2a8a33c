"""``rlaif demo``: watch a real model answer, critique and revise under a constitution.

No key, no GPU, no download: the embedded SmolLM2-135M-Instruct answers ~20 red-team prompts
that ship with rlaif, critiques its own answer under a principle sampled from the constitution,
and revises it. It is ``rlaif generate sl-cai`` with small defaults and a side-by-side view, so it
takes the same flags and writes the same files (``outputs/demo/sl_cai.jsonl`` and a card).
"""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console
from rich.table import Table

from rlaif.cli.generate import add_sl_cai_arguments, config_from_args, print_summary, run_job
from rlaif.engine.critique_revise import prompt_text
from rlaif.engine.sl_cai import DATASET_FILE as SL_CAI_FILE
from rlaif.resources import demo_prompts

DEMO_DEFAULTS = {"out": "outputs/demo", "max_tokens": 128}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="answer, critique and revise red-team prompts with the embedded model",
        description="One SL-CAI round on ~20 red-team prompts shipped with rlaif (or --prompts "
        "FILE) with the embedded SmolLM2 model: first answer, critique under a sampled principle, "
        "revision, printed side by side. Writes outputs/demo/sl_cai.jsonl and a dataset card. "
        "Seeded and cached: the same command again prints the same result at once. Takes every "
        "flag of `rlaif generate sl-cai`; here --max-tokens defaults to 128.",
    )
    add_sl_cai_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args, {**DEMO_DEFAULTS, "prompts": str(demo_prompts())})
    command = "rlaif " + " ".join(shlex.quote(a) for a in args.argv)
    console.print(
        f"[bold]rlaif demo[/]: constitution [cyan]{cfg.constitution.name}[/], labeler "
        f"[cyan]{cfg.labeler}[/], {cfg.rounds} round(s), seed {cfg.seed} "
        "[dim](the first run converts the embedded model once, ~20 s)[/]"
    )
    result = run_job(console, cfg, command)
    if result is None:
        return 130
    for row in result.rows:
        _print_row(console, row)
    print_summary(console, result, SL_CAI_FILE)
    return 3 if result.failed else 0


def _print_row(console: Console, row: dict) -> None:
    last = row["rounds"][-1]
    table = Table(
        title=f"[bold]{prompt_text(row)}[/]", title_justify="left", expand=True, show_lines=True
    )
    table.add_column("first answer", ratio=1, overflow="fold")
    table.add_column(f"critique [dim]({last['principle_id']})[/]", ratio=1, overflow="fold")
    table.add_column("revision", ratio=1, overflow="fold")
    table.add_row(row["response"], last["critique"], last["revision"])
    if row["flags"]:
        table.caption = "flags: " + ", ".join(row["flags"])
    console.print(table)
