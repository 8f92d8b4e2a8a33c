"""``rlaif demo``: watch a real model answer, critique and revise under a constitution.

No key, no GPU, no download: the embedded SmolLM2-135M-Instruct answers ~20 red-team prompts
that ship with rlaif, critiques its own answer under a principle sampled from the constitution,
and revises it. Output: a side-by-side table in the terminal and a JSONL file under ``outputs/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlaif.cli.args import positive_int
from rlaif.constitution import load_constitution
from rlaif.data.sources import read_text_prompts
from rlaif.engine.critique_revise import CritiqueRevise
from rlaif.engine.journal import write_jsonl_atomic
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync
from rlaif.resources import default_constitution, demo_prompts
from rlaif.templates import Templates


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="answer, critique and revise red-team prompts with the embedded model",
        description="Run one SL-CAI round on the built-in red-team prompts (or yours) with the "
        "embedded SmolLM2 model: first answer, critique under a sampled principle, revision. "
        "Prints a side-by-side table and writes OUT/demo.jsonl. Seeded and reproducible.",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="your own prompt data: a text file, one prompt a line "
        "(default: ~20 red-team prompts shipped with rlaif)",
    )
    p.add_argument(
        "--constitution",
        type=Path,
        metavar="FILE",
        default=None,
        help="constitution YAML (default: constitution/harmless.yaml)",
    )
    p.add_argument(
        "--templates",
        type=Path,
        metavar="DIR",
        help="directory of Jinja templates overriding prompts/*.j2 by file name",
    )
    p.add_argument(
        "--labeler",
        default="smollm2",
        metavar="NAME",
        help="labeler for answers, critiques and revisions (default: smollm2)",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="use the first N prompts"
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        metavar="N",
        help="critique/revision rounds (default: 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for principles and sampling")
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=128,
        metavar="N",
        help="max new tokens per generation (default: 128)",
    )
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="prompts per model call"
    )
    p.add_argument(
        "--no-few-shot", action="store_true", help="leave out the constitution's few-shot examples"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/demo"),
        metavar="DIR",
        help="output directory (default: outputs/demo)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    constitution = load_constitution(args.constitution or default_constitution())
    templates = Templates(args.templates)
    for name in templates.unknown_overrides():
        console.print(f"[yellow]warning:[/] {args.templates / name} matches no known template")
    rows = [
        {"id": r.id, "prompt": r.prompt} for r in read_text_prompts(args.prompts or demo_prompts())
    ]
    rows = rows[: args.limit] if args.limit else rows
    params = GenerateParams.checked(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    labeler = create_labeler(args.labeler, batch_size=args.batch_size)
    step = CritiqueRevise(
        constitution=constitution,
        templates=templates,
        policy=labeler,
        critic=labeler,
        rounds=args.rounds,
        seed=args.seed,
        params=params,
        few_shot=not args.no_few_shot,
        chunk_size=args.batch_size,
    )
    step.check_templates()  # a broken or unsafe template fails here, before loading a model

    console.print(
        f"[bold]rlaif demo[/]: {len(rows)} prompts, constitution [cyan]{constitution.name}[/], "
        f"labeler [cyan]{args.labeler}[/], {args.rounds} round(s), seed {args.seed}"
    )
    started = time.perf_counter()
    with console.status("loading model (first run converts the embedded GGUF, ~20 s)"):
        load = getattr(labeler, "load", None)
        if load:
            load()
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        results = run_sync(step.run(rows, progress))
    elapsed = time.perf_counter() - started

    for row in results:
        _print_row(console, row)
    provenance = step.provenance()
    out = write_jsonl_atomic(
        args.out / "demo.jsonl", ({**r, "provenance": provenance} for r in results)
    )
    console.print(f"\nwrote {len(results)} rows to [bold]{out}[/] in {elapsed:.0f} s")
    return 0


def _print_row(console: Console, row: dict) -> None:
    last = row["rounds"][-1]
    table = Table(
        title=f"[bold]{row['prompt']}[/]", title_justify="left", expand=True, show_lines=True
    )
    table.add_column("first answer", ratio=1, overflow="fold")
    table.add_column(f"critique [dim]({last['principle_id']})[/]", ratio=1, overflow="fold")
    table.add_column("revision", ratio=1, overflow="fold")
    table.add_row(row["response"], last["critique"], last["revision"])
    console.print(table)
