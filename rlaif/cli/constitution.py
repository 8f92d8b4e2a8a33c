"""``rlaif constitution validate|show|import``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlaif.constitution import dump_constitution, load_constitution
from rlaif.errors import ConstitutionError
from rlaif.importers import import_cai_paper


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "constitution",
        help="validate, show or import constitution files",
        description="Work with constitution files (YAML principles for critiques and feedback).",
    )
    cmds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    v = cmds.add_parser(
        "validate",
        help="check constitution files; errors name file and line (exit 2)",
        description="Validate each file against the schema. Every problem is printed as "
        "FILE:LINE: message; the exit code is 2 if any file is bad.",
    )
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    v.set_defaults(func=validate)

    s = cmds.add_parser("show", help="print a constitution's principles as tables")
    s.add_argument("path", type=Path, metavar="PATH")
    s.set_defaults(func=show)

    i = cmds.add_parser(
        "import",
        help="convert another format into an rlaif constitution",
        description="Convert principle files from another format. cai-paper: the JSON files of "
        "the Constitutional AI paper's supplementary repository, in any mix: an object of "
        "critique/revision requests, a list of multiple-choice feedback instructions, a list of "
        "critique/revision few-shot transcripts, a list of feedback few-shot rows "
        "({prompt, corrects, incorrects}). Few-shot items go to an examples file beside the "
        "output (OUT.examples.yaml), which the constitution names.",
    )
    i.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    i.add_argument("--format", required=True, choices=["cai-paper"])
    i.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.yaml")
    i.add_argument("--name", help="constitution name (default: the output file's stem)")
    i.add_argument("--description", default=None)
    i.add_argument("--version", dest="const_version", default="1.0", metavar="VERSION")
    i.set_defaults(func=import_)


def validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.paths:
        try:
            c = load_constitution(path)
        except ConstitutionError as e:
            bad += 1
            print(e, file=sys.stderr)
            continue
        print(
            f"{path}: ok ({c.name} v{c.version}: {len(c.critique_revision)} critique/revision, "
            f"{len(c.feedback)} feedback principles, {len(c.few_shot)} few-shot examples, "
            f"{len(c.feedback_few_shot)} feedback examples)"
        )
    return 2 if bad else 0


def show(args: argparse.Namespace) -> int:
    c = load_constitution(args.path)
    console = Console()
    console.print(f"[bold]{c.name}[/] v{c.version}  [dim]{c.path}  sha256 {c.sha256[:12]}[/]")
    console.print(c.description)
    if c.critique_revision:
        t = Table(title="critique / revision principles", show_lines=True)
        for col in ("id", "critique request", "revision request"):
            t.add_column(col, overflow="fold")
        for p in c.critique_revision:
            t.add_row(p.id, p.critique_request, p.revision_request)
        console.print(t)
    if c.feedback:
        t = Table(title="feedback principles", show_lines=True)
        t.add_column("id")
        t.add_column("multiple-choice instruction", overflow="fold")
        for p in c.feedback:
            t.add_row(p.id, p.instruction)
        console.print(t)
    if c.few_shot or c.feedback_few_shot:
        console.print(
            f"{len(c.few_shot)} critique/revision and {len(c.feedback_few_shot)} feedback "
            f"few-shot examples from {c.examples}"
        )
    return 0


def import_(args: argparse.Namespace) -> int:
    imported = import_cai_paper(args.paths)
    sources = ", ".join(p.name for p in args.paths)
    data: dict[str, object] = {
        "name": args.name or args.output.stem,
        "description": args.description or f"Imported from {sources} ({args.format} format).",
        "version": args.const_version,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    examples = imported.examples_body()
    if examples:
        ex_path = args.output.with_name(f"{args.output.stem}.examples.yaml")
        _write(ex_path, dump_constitution(examples))
        data["examples"] = ex_path.name
    _write(args.output, dump_constitution({**data, **imported.constitution_body()}))
    c = load_constitution(args.output)  # the result must pass our own validation
    print(
        f"wrote {args.output}: {len(c.critique_revision)} critique/revision and "
        f"{len(c.feedback)} feedback principles, {len(c.few_shot)} critique/revision and "
        f"{len(c.feedback_few_shot)} feedback few-shot examples"
        + (f" (in {c.examples})" if examples else "")
    )
    if imported.from_examples:
        print(
            f"note: {len(imported.from_examples)} critique/revision principle(s) "
            f"({', '.join(imported.from_examples)}) were made from the transcripts' own requests, "
            "since no imported principle had the same critique request"
        )
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
