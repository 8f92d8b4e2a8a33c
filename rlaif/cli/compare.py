"""``rlaif compare OUT_A OUT_B``: what a constitution or template swap changed in the data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two output folders of the same prompts (constitution or template A/B)",
        description="Match the rows of two output folders by id (sl_cai.jsonl and/or "
        "preferences.jsonl, directly in each folder or in the sl_cai/ and prefs/ folders of "
        "`rlaif run`) and show what changed: per principle in each run, per prompt whether the "
        "revision changed the answer and by how many words, per pair whether the label flipped "
        "and how far the soft label moved. Writes DIR/compare.html (self-contained), "
        "DIR/compare.json and PNG plots, and prints a summary.",
    )
    p.add_argument("out_a", type=Path, metavar="OUT_A", help="the first run's output folder")
    p.add_argument("out_b", type=Path, metavar="OUT_B", help="the second run's output folder")
    p.add_argument(
        "--out", type=Path, default=Path("outputs/compare"), metavar="DIR",
        help="where the page, the JSON and the plots go (outputs/compare)",
    )  # fmt: skip
    p.add_argument(
        "--top", type=int, default=5, metavar="N",
        help="prompts and pairs with the largest changes shown side by side (5)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlaif.compare import compare, summary_lines, write

    result = compare(args.out_a, args.out_b)
    paths = write(result, args.out, max(args.top, 0))
    for line in summary_lines(result):
        print(line)
    print(f"wrote {paths['html']} and {paths['json']}")
    return 0
