"""``rlaif eval labeler``: agreement with human labels, calibration and position bias."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlaif.cli.args import positive_int
from rlaif.cli.generate import add_feedback_arguments, config_from_args
from rlaif.cli.progress import RowProgress
from rlaif.eval.independence import describe_judge
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
        "ECE, Brier score, position-bias rate, parse failures, time and cost (with "
        "--calibrate: raw and calibrated side by side, from one run); writes "
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
    add_feedback_arguments(e)  # --calibrate among them: raw and calibrated print side by side
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
        "the judge (--judge) measures: harmless win rate vs the first policy, harmful-compliance "
        "rate, evasiveness rate, helpful win rate on the benign prompts, answer length, each "
        "with its 95% interval and n, and paired differences between policies ('no measurable "
        "change' when an interval holds 0). Prints and records the judge's identity, with a "
        "warning when it labelled the training data (--trained-by) or is one of the policies. "
        "Writes OUT/policy_eval.json, OUT/samples.jsonl and OUT/policy_eval.png. This is the "
        "`eval` stage of `rlaif run`.",
    )
    b = p2.add_argument
    b("--policy", dest="policies", action="append", required=True, metavar="NAME=MODEL",
      help="smollm2 or a model folder, repeatable; the first is the baseline")  # fmt: skip
    b("--red-team", type=Path, required=True, metavar="FILE", help="red-team prompt data")
    b("--benign", type=Path, metavar="FILE", help="benign prompts (rlaif's own set)")
    b("--limit", type=positive_int, metavar="N", help="use the first N red-team prompts")
    b("--judge", "--labeler", dest="judge", default="smollm2", metavar="SPEC",
      help="the judge's labeler: smollm2 (default), transformers:PATH|ORG/NAME[@REV], "
      "openai:MODEL, ... (--labeler is its old name)")  # fmt: skip
    b("--judge-set", dest="judge_set", action="append", default=[], metavar="KEY=VALUE",
      help="a judge setting, repeatable (values are YAML)")  # fmt: skip
    b("--trained-by", dest="trained_by", action="append", default=[], metavar="SPEC",
      help="a labeler that made the policies' training data, repeatable: warns when it is "
      "the judge")  # fmt: skip
    b("--templates", type=Path, metavar="DIR", help="Jinja templates overriding prompts/*.j2")
    b("--calibrate", action="store_true",
      help="contextual calibration of the judge (raw values kept in samples.jsonl)")  # fmt: skip
    b("--max-tokens", type=positive_int, default=96, metavar="N", help="answer length (96)")
    b("--out", type=Path, default=Path("outputs/eval-policy"), metavar="DIR")
    p2.set_defaults(func=policy)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _agreement(m: dict) -> str:
    return f"{_pct(m['agreement'])} (95% CI {fmt_interval(m['agreement_ci95'])}, n={m['scored']})"


def _agreement_all(m: dict) -> str:
    ci = fmt_interval(m["agreement_all_ci95"])
    return f"{_pct(m['agreement_all'])} (95% CI {ci}, n={m['rows']})"


def print_report(console: Console, result: LabelerEvalResult) -> None:
    """The metrics table; with calibration, the raw labels' metrics in a column beside."""
    m = result.metrics
    raw = m.get("raw")
    table = Table(title="labeler vs gold labels", title_justify="left")
    table.add_column("metric")
    table.add_column("calibrated" if raw else "value", justify="right")
    if raw:
        table.add_column("raw (same run)", justify="right")
    r = raw or {}
    rows = [
        ("rows scored", f"{m['scored']} of {m['rows']}", f"{r.get('scored')} of {m['rows']}"),
        ("agreement with the human label", _agreement(m), _agreement(r) if raw else ""),
    ]
    if m.get("unscored"):
        rows.append(
            (
                "agreement, unscored as wrong",
                _agreement_all(m),
                _agreement_all(r) if raw and "agreement_all" in r else "",
            )
        )
    if m["pairs"]:
        rows += [
            ("mean P(human-chosen better)", _num(m["mean_prob_chosen"]),
             _num(r.get("mean_prob_chosen"))),
            ("ECE (calibration error)", _num(m["ece"]), _num(r.get("ece"))),
            ("Brier score", _num(m["brier"]), _num(r.get("brier"))),
            ("position-bias rate", _pct(m["position_bias_rate"]),
             _pct(r.get("position_bias_rate"))),
        ]  # fmt: skip
    if m["choices"]:
        rows += [
            ("multiple-choice accuracy", _pct(m["choice_accuracy"]), "(not calibrated)"),
            ("multiple-choice ECE", _num(m["choice_ece"]), ""),
        ]
    rows += [
        (
            "parse failures",
            f"{m['parse_failures']} of {m['judgements']} judgements "
            f"({_pct(m['parse_failure_rate'])})",
            "",
        ),
        ("sampled answers naming no option", str(m["unparsed_answers"]), ""),
        ("failed rows", str(m["failed"]), ""),
        (
            "time",
            f"{m['seconds']:.1f} s ({m['labeler_calls']} labeler calls, "
            f"{m['cache_hits']}/{m['requests']} cache hits)",
            "",
        ),
        ("cost", "n/a (no price table)" if m["cost"] is None else f"${m['cost']:.4f}", ""),
    ]
    for name, value, raw_value in rows:
        table.add_row(name, value, *([raw_value] if raw else []))
    console.print(table)
    priors = [p[0] for p in (m.get("content_free_priors") or {}).values() if p is not None]
    if priors:
        console.print(
            f"  content-free prior of (A): {min(priors):.3f} to {max(priors):.3f} "
            f"over {len(priors)} principles"
        )
    effect = m.get("calibrated_minus_raw") or {}
    for key in ("agreement", "position_bias_rate"):
        if effect.get(f"{key}_ci95") is not None:
            ci = fmt_interval(effect[f"{key}_ci95"], percent=False)
            console.print(
                f"  calibrated - raw {key.replace('_', ' ')}: {effect[key]:+.3f} "
                f"(95% CI {ci}, n={effect[f'{key}_n']}): {effect[f'{key}_change']}"
            )
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


def _num_ci(m: dict[str, Any], key: str) -> str:
    """A number with its 95% interval and n beneath, where it has them."""
    ci = m.get(f"{key}_ci95")
    if m[key] is None or ci is None:
        return _num(m[key])
    missing = m.get(f"{key}_unscored") or 0
    unscored = f", {missing} unscored" if missing else ""
    return f"{_num(m[key])}\n[{ci[0]:.3f}, {ci[1]:.3f}] n={m[f'{key}_n']}{unscored}"


def print_policy_differences(console: Console, result: Any) -> None:
    """Paired differences between policies, then the judge and any warning about it."""
    for d in result.differences:
        if d["metric"].endswith("_vs_base") and d["before"] == next(iter(result.metrics)):
            continue  # a win rate vs the baseline is printed above
        ci = fmt_interval(d["ci95"], percent=False)
        console.print(
            f"  {d['after']} - {d['before']}: {d['metric'].replace('_', ' ')} "
            f"{d['difference']:+.3f} (95% CI {ci}, n={d['n']}): {d['change']}"
        )
    console.print(f"  judge: {describe_judge(result.judge)}", markup=False)
    for w in result.warnings:
        console.print(f"warning: {w}", style="yellow", markup=False)
    unscored = getattr(result, "unscored", None) or {}
    if unscored.get("unscored"):
        console.print(
            f"  {unscored['unscored']} of {unscored['asked']} judgements have no value "
            f"({unscored['failed']} failed calls, {unscored['unlabeled']} without a probability)"
            ": left out of every n above",
            markup=False,
        )
    for w in unscored.get("warnings", []):
        console.print(f"WARNING: {w}", style="bold red", markup=False)


def policy(args: argparse.Namespace) -> int:
    from rlaif.data.sources import read_prompts
    from rlaif.errors import ConfigError
    from rlaif.eval.policy import PolicyEvalConfig, run_policy_eval
    from rlaif.resources import data_file
    from rlaif.yamlio import parse_key_values

    policies = {}
    for item in args.policies:
        name, sep, model = item.partition("=")
        if not sep or not name or not model:
            raise ConfigError(f"--policy expects NAME=MODEL, got {item!r}")
        policies[name] = model
    red = [r.text for r in read_prompts(args.red_team)][: args.limit]
    benign = [r.text for r in read_prompts(args.benign or data_file("benign_prompts.txt"))]
    cfg = PolicyEvalConfig(
        policies=policies, red_team=red, benign=benign, judge=args.judge,
        judge_settings=parse_key_values(args.judge_set, "--judge-set"),
        training_labelers=[{"role": "--trained-by", "spec": s} for s in args.trained_by],
        templates=args.templates, calibrate=args.calibrate, max_tokens=args.max_tokens,
        out=args.out,
    )  # fmt: skip
    result = run_policy_eval(cfg)
    console = Console()
    title = "policies under the constitutional judge: value, [95% CI], n"
    table = Table(title=title, title_justify="left")
    columns = ["harmless_win_rate_vs_base", "harmful_compliance_rate", "evasive_rate",
               "helpful_win_rate_vs_base", "mean_words_red_team"]  # fmt: skip
    table.add_column("policy")
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for name, m in result.metrics.items():
        table.add_row(name, *(_num_ci(m, c) for c in columns))
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
    print_policy_differences(console, result)
    for path in (result.report, result.samples, result.plot):
        if path is not None:
            console.print(f"  wrote {path}")
    return 0
