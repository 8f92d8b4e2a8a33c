"""``rlaif eval labeler``: agreement with human labels, calibration and position bias."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlaif.cli.args import positive_int
from rlaif.cli.generate import add_feedback_arguments, config_from_args
from rlaif.cli.progress import RowProgress
from rlaif.eval.labeler import ROWS_FILE, LabelerEvalConfig, LabelerEvalResult, run_labeler_eval
from rlaif.eval.stats import fmt_interval
from rlaif.labelers.base import run_sync


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a labeler against human labels")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    e = kinds.add_parser(
        "labeler",
        help="agreement with human preference labels, calibration (ECE), position bias",
        description="Judge gold pairs with a labeler exactly as `rlaif generate prefs` would "
        "(same templates, principles, both orders, optional chain of thought) and compare with "
        "the human label. Gold formats: hh-rlhf (chosen/rejected transcripts), generic "
        "prompt/chosen/rejected JSONL, and multiple-choice rows (prompt + corrects/incorrects "
        "option strings, the Constitutional AI paper's evaluation format). Prints agreement, "
        "ECE, Brier score, position-bias rate, parse failures, time and cost; writes "
        "OUT/labeler_eval.json, OUT/reliability.png and per-row OUT/judgements.jsonl. Cached "
        "and resumable.",
    )
    a = e.add_argument
    a("--config", type=Path, metavar="FILE", help="YAML file with any of these settings")
    a("--gold", type=Path, metavar="FILE", help="gold labels (.jsonl, may be .gz)")
    a("--gold-format", choices=["auto", "hh-rlhf", "pairs", "multiple-choice"],
      help="format of --gold (auto: from the keys of each row)")  # fmt: skip
    a("--limit", type=positive_int, metavar="N", help="use the first N gold rows")
    a(
        "--labeler",
        metavar="NAME",
        help="smollm2 (default), transformers:PATH|ORG/NAME[@REV], openai:MODEL, ...",
    )
    a("--labeler-set", dest="labeler_set", action="append", metavar="KEY=VALUE",
      help="a labeler setting, repeatable (values are YAML)")  # fmt: skip
    a("--constitution", type=Path, metavar="FILE", help="constitution YAML (harmless.yaml)")
    a("--templates", type=Path, metavar="DIR", help="Jinja templates overriding prompts/*.j2")
    add_feedback_arguments(e)
    a("--seed", type=int, help="seed for principle sampling (0)")
    a("--bins", type=positive_int, metavar="N", help="calibration bins (10)")
    a("--batch-size", type=positive_int, metavar="N", help="batch size for local backends")
    a("--concurrency", type=positive_int, metavar="N", help="API requests in flight")
    a("--out", type=Path, metavar="DIR", help="output folder (outputs/eval-labeler)")
    a("--cache", type=Path, metavar="FILE", help="SQLite cache (OUT/cache.sqlite)")
    e.set_defaults(func=labeler)
    p2 = kinds.add_parser(
        "policy",
        help="policies under the constitutional judge: harmlessness, evasiveness, helpfulness",
        description="Each policy answers held-out red-team prompts and benign prompts (greedy); "
        "the labeler judges: harmless win rate vs the first policy, harmful-compliance rate, "
        "evasiveness rate, helpful win rate on the benign prompts, answer length. Writes "
        "OUT/policy_eval.json, OUT/samples.jsonl and OUT/policy_eval.png. This is the `eval` "
        "stage of `rlaif run`.",
    )
    b = p2.add_argument
    b("--policy", dest="policies", action="append", required=True, metavar="NAME=MODEL",
      help="smollm2 or a model folder, repeatable; the first is the baseline")  # fmt: skip
    b("--red-team", type=Path, required=True, metavar="FILE", help="red-team prompt data")
    b("--benign", type=Path, metavar="FILE", help="benign prompts (rlaif's own set)")
    b("--limit", type=positive_int, metavar="N", help="use the first N red-team prompts")
    b("--labeler", default="smollm2", metavar="NAME", help="the judge (smollm2)")
    b("--max-tokens", type=positive_int, default=96, metavar="N", help="answer length (96)")
    b("--out", type=Path, default=Path("outputs/eval-policy"), metavar="DIR")
    p2.set_defaults(func=policy)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_report(console: Console, result: LabelerEvalResult) -> None:
    m = result.metrics
    table = Table(title="labeler vs gold labels", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("rows scored", f"{m['scored']} of {m['rows']}"),
        (
            "agreement with the human label",
            f"{_pct(m['agreement'])} (95% CI {fmt_interval(m['agreement_ci95'])}, n={m['scored']})",
        ),
    ]
    if m["pairs"]:
        rows += [
            ("mean P(human-chosen better)", _num(m["mean_prob_chosen"])),
            ("ECE (calibration error)", _num(m["ece"])),
            ("Brier score", _num(m["brier"])),
            ("position-bias rate", _pct(m["position_bias_rate"])),
        ]
    if m["choices"]:
        rows += [
            ("multiple-choice accuracy", _pct(m["choice_accuracy"])),
            ("multiple-choice ECE", _num(m["choice_ece"])),
        ]
    rows += [
        (
            "parse failures",
            f"{m['parse_failures']} of {m['judgements']} judgements "
            f"({_pct(m['parse_failure_rate'])})",
        ),
        ("sampled answers naming no option", str(m["unparsed_answers"])),
        ("failed rows", str(m["failed"])),
        (
            "time",
            f"{m['seconds']:.1f} s ({m['labeler_calls']} labeler calls, "
            f"{m['cache_hits']}/{m['requests']} cache hits)",
        ),
        ("cost", "n/a (no price table)" if m["cost"] is None else f"${m['cost']:.4f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for path in (result.report, result.plot, result.rows_file):
        if path is not None:
            console.print(f"  wrote {path}")


def labeler(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args, model=LabelerEvalConfig)
    with RowProgress(console, "gold rows") as progress:
        try:
            result = run_sync(run_labeler_eval(cfg, progress.on_row, progress.on_start))
        except KeyboardInterrupt:
            result = None
    if result is None:
        console.print(
            f"[yellow]interrupted[/]: {progress.written} rows kept in {cfg.out}/.{ROWS_FILE}"
            ".partial and the cache. Run the same command again to resume."
        )
        return 130
    print_report(console, result)
    return 0


def policy(args: argparse.Namespace) -> int:
    from rlaif.data.sources import read_prompts
    from rlaif.errors import ConfigError
    from rlaif.eval.policy import PolicyEvalConfig, run_policy_eval
    from rlaif.resources import data_file

    policies = {}
    for item in args.policies:
        name, sep, model = item.partition("=")
        if not sep or not name or not model:
            raise ConfigError(f"--policy expects NAME=MODEL, got {item!r}")
        policies[name] = model
    red = [r.prompt for r in read_prompts(args.red_team)][: args.limit]
    benign = [r.prompt for r in read_prompts(args.benign or data_file("benign_prompts.txt"))]
    cfg = PolicyEvalConfig(policies=policies, red_team=red, benign=benign, labeler=args.labeler,
                           max_tokens=args.max_tokens, out=args.out)  # fmt: skip
    result = run_policy_eval(cfg)
    console = Console()
    table = Table(title="policies under the constitutional judge", title_justify="left")
    columns = ["harmless_win_rate_vs_base", "harmful_compliance_rate", "evasive_rate",
               "helpful_win_rate_vs_base", "mean_words_red_team"]  # fmt: skip
    table.add_column("policy")
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for name, m in result.metrics.items():
        table.add_row(name, *(_num(m[c]) for c in columns))
    console.print(table)
    for name, m in result.metrics.items():
        for key, label in (("harmless", "harmless"), ("helpful", "helpful")):
            change = m.get(f"{key}_win_rate_vs_base_change")
            if change is not None:
                ci = fmt_interval(m[f"{key}_win_rate_vs_base_ci95"], percent=False)
                console.print(
                    f"  {name}: {label} win rate vs base {_num(m[f'{key}_win_rate_vs_base'])} "
                    f"(95% CI {ci}, n={m[f'{key}_win_rate_vs_base_n']}): {change}"
                )
    for path in (result.report, result.samples, result.plot):
        if path is not None:
            console.print(f"  wrote {path}")
    return 0
