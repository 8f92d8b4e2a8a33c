"""``rlaif push``: upload a generated dataset (data files and card) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a dataset folder (data and card) to the Hugging Face Hub",
        description="Upload the dataset that `rlaif generate` wrote in OUT_DIR to the dataset "
        "repo REPO_ID, in one commit: the data files the card names (and their .parquet twins), "
        "the plots it shows, and the card. Never the cache, the journal, timings or failed rows. "
        "Authenticates like every Hugging Face tool: HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a folder written by rlaif")
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. my-org/my-cai-data")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument(
        "--license", help="licence for the card (e.g. apache-2.0; default: leave 'unknown')"
    )
    p.add_argument("--language", help="language code for the card (default: leave 'en')")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlaif.data.hub import prepare, push

    upload = prepare(args.out_dir, args.license, args.language)
    if args.dry_run:
        print(f"would upload to {args.repo_id}: {', '.join(upload.paths_in_repo)}")
        return 0
    url = push(args.out_dir, args.repo_id, args.private, args.license, args.language)
    print(f"uploaded {', '.join(upload.paths_in_repo)} to {url}")
    return 0
