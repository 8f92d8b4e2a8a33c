"""``rlaif generate sl-cai``: turn prompt data into SL-CAI training data."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from rlaif.cli.args import positive_int
from rlaif.cli.progress import RowProgress
from rlaif.engine.sl_cai import SLCAIConfig, SLCAIResult, run_sl_cai
from rlaif.errors import ConfigError, ConfigFileError
from rlaif.labelers.base import run_sync
from rlaif.yamlio import parse_yaml, validate_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate datasets (SL-CAI critiques and revisions)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    s = kinds.add_parser(
        "sl-cai",
        help="first answer -> N x (critique -> revision) for every prompt",
        description="For every prompt: the policy answers; then, N times, the critic critiques "
        "the current answer under a principle sampled from the constitution and revises it. "
        "Writes OUT/sl_cai.jsonl (one row per prompt, in input order, with `messages` for SFT), "
        "OUT/README.md (dataset card) and OUT/cache.sqlite. Rerunning the same command costs no "
        "labeler calls; after a crash or Ctrl-C it resumes where it stopped. Every setting can "
        "also come from --config FILE.yaml (same names, underscores); flags win.",
    )
    add_sl_cai_arguments(s)
    s.set_defaults(func=sl_cai)


def add_sl_cai_arguments(s: argparse.ArgumentParser) -> None:
    a = s.add_argument
    a("--config", type=Path, metavar="FILE", help="YAML file with any of these settings")
    a(
        "--prompts",
        type=Path,
        metavar="SRC",
        help="prompt data: .txt (a prompt a line), .jsonl, .csv, hh-rlhf .jsonl(.gz), or a "
        "folder saved with datasets' save_to_disk",
    )
    a(
        "--prompt-format",
        choices=["auto", "text", "jsonl", "csv", "hh-rlhf", "dataset"],
        help="format of --prompts (default: auto, from the name and the first record)",
    )
    a("--prompt-field", metavar="NAME", help="JSONL/CSV/dataset field with the prompt (prompt)")
    a("--id-field", metavar="NAME", help="field with a stable row id, if any (id)")
    a(
        "--hh-context",
        choices=["first", "context"],
        help="hh-rlhf: the first Human turn (default) or the whole context to the last Human turn",
    )
    a("--limit", type=positive_int, metavar="N", help="use the first N prompts")
    a("--constitution", type=Path, metavar="FILE", help="constitution YAML (harmless.yaml)")
    a("--templates", type=Path, metavar="DIR", help="Jinja templates overriding prompts/*.j2")
    a("--labeler", metavar="NAME", help="critic and reviser: smollm2 (default), transformers:PATH")
    a("--labeler-set", dest="labeler_set", action="append", metavar="KEY=VALUE",
      help="a labeler setting, repeatable: base_url=http://127.0.0.1:8000/v1, concurrency=64, "
      "batch_size=16 (values are YAML)")  # fmt: skip
    a("--policy", metavar="NAME", help="writes the first answers (default: the --labeler)")
    a("--policy-set", dest="policy_set", action="append", metavar="KEY=VALUE",
      help="a policy labeler setting, repeatable")  # fmt: skip
    a("--rounds", type=positive_int, metavar="N", help="critique/revision rounds (1)")
    a("--seed", type=int, help="seed for principle sampling and generation (0)")
    a("--temperature", type=float, help="sampling temperature; 0 = greedy (0.7)")
    a("--top-p", type=float, help="nucleus sampling (1.0)")
    a("--max-tokens", type=positive_int, metavar="N", help="max new tokens per generation (256)")
    a(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="conversations per batch for local backends (the backend's own default)",
    )
    a("--concurrency", type=positive_int, metavar="N", help="API requests in flight")
    a(
        "--no-few-shot",
        dest="few_shot",
        action="store_const",
        const=False,
        help="leave out the constitution's few-shot examples",
    )
    a(
        "--cleanup",
        choices=["fix", "flag", "off"],
        help="revision clean-up: fix and flag (default), only flag, or off",
    )
    a("--out", type=Path, metavar="DIR", help="output folder (outputs/sl-cai)")
    a("--cache", type=Path, metavar="FILE", help="SQLite cache (OUT/cache.sqlite)")
    a("--parquet", action="store_const", const=True, help="also write sl_cai.parquet")


_NOT_SETTINGS = {"config", "func", "command", "kind", "argv"}


def parse_settings(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are read as YAML scalars/lists."""
    from ruamel.yaml import YAML

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = YAML(typ="safe").load(value) if value.strip() else ""
    return out


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> SLCAIConfig:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    for flag, key in (("labeler_set", "labeler_settings"), ("policy_set", "policy_settings")):
        if flag in flags:
            flags[key] = parse_settings(flags.pop(flag), "--" + flag.replace("_", "-"))
    if args.config is None:
        try:
            return SLCAIConfig(**{**(defaults or {}), **flags})
        except ValidationError as e:
            problems = "; ".join(
                f"--{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}"
                for err in e.errors()
            )
            raise ConfigError(problems) from None
    root, _ = parse_yaml(args.config, ConfigFileError)
    if root is None or not hasattr(root, "items"):
        raise ConfigFileError(args.config, [(1, "expected a YAML mapping of settings")])
    for key, value in {**(defaults or {}), **flags}.items():
        if key not in root or key in flags:
            root[key] = str(value) if isinstance(value, Path) else value
    return validate_yaml(SLCAIConfig, root, args.config, ConfigFileError)


def print_summary(console: Console, result: SLCAIResult) -> None:
    s = result.stats
    console.print(
        f"[bold]{len(result.rows)} rows[/] ({result.resumed} resumed) in {result.seconds:.1f} s · "
        f"labeler calls: [bold]{s.labeler_calls}[/] · cache hits {s.cache_hits}/{s.requests} · "
        f"{s.generated_tokens:,} tokens generated · {s.retries} calls retried"
    )
    if s.cost is not None:
        console.print(f"  cost by the price table: ${s.cost:.4f}")
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} rows failed[/] (kept with their reason in "
            f"sl_cai.failed.jsonl; run the same command again to retry exactly those rows)"
        )
    for path in (result.dataset, result.card, *result.extra_files):
        console.print(f"  wrote {path}")


def run_job(console: Console, cfg: SLCAIConfig, command: str) -> SLCAIResult | None:
    """Run with a progress bar; on Ctrl-C say what was kept and how to resume."""
    with RowProgress(console) as progress:
        try:
            return run_sync(run_sl_cai(cfg, command, progress.on_row, progress.on_start))
        except KeyboardInterrupt:
            pass
    console.print(
        f"[yellow]interrupted[/]: {progress.written} rows written to "
        f"{cfg.out}/.sl_cai.jsonl.partial, finished answers kept in the cache. "
        "Run the same command again to resume."
    )
    return None


def sl_cai(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args)
    command = "rlaif " + " ".join(shlex.quote(a) for a in args.argv)
    result = run_job(console, cfg, command)
    if result is None:
        return 130
    print_summary(console, result)
    return 3 if result.failed else 0
