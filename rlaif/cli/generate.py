"""``rlaif generate sl-cai|prefs|red-team``: turn prompt data into SL-CAI or RL-CAI training
data, or seed red-team prompts into new ones.

The kinds share the input flags (``add_input_arguments``) and the same config handling: flags,
optionally over a ``--config`` YAML file, validated by the job's pydantic model.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console

from rlaif.cli.args import positive_int
from rlaif.cli.progress import RowProgress
from rlaif.engine.prefs import DATASET_FILE as PREFS_FILE
from rlaif.engine.prefs import PrefsConfig, PrefsResult, run_prefs
from rlaif.engine.red_team import GENERATIONS_FILE, RedTeamConfig, RedTeamResult, run_red_team
from rlaif.engine.sl_cai import DATASET_FILE as SL_CAI_FILE
from rlaif.engine.sl_cai import SLCAIConfig, SLCAIResult, run_sl_cai
from rlaif.errors import ConfigError, ConfigFileError
from rlaif.labelers.base import run_sync
from rlaif.resources import locate
from rlaif.yamlio import parse_key_values, parse_yaml, validate_yaml

M = TypeVar("M", bound=BaseModel)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate datasets: SL-CAI revisions, RL-CAI preference pairs"
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    s = kinds.add_parser(
        "sl-cai",
        help="first answer -> N x (critique -> revision) for every prompt",
        description="For every prompt: the policy answers; then, N times, the critic critiques "
        "the current answer under a principle sampled from the constitution and revises it. "
        "Writes OUT/sl_cai.jsonl (one row per prompt, in input order, conversational prompt/"
        "completion for TRL's SFTTrainer, and `messages`), "
        "OUT/README.md (dataset card) and OUT/cache.sqlite. Rerunning the same command costs no "
        "labeler calls; after a crash or Ctrl-C it resumes where it stopped. Every setting can "
        "also come from --config FILE.yaml (same names, underscores); flags win.",
    )
    add_sl_cai_arguments(s)
    add_push_arguments(s)
    s.set_defaults(func=sl_cai)
    r = kinds.add_parser(
        "prefs",
        help="K responses per prompt -> AI-labeled preference pairs with soft labels",
        description="For every prompt the policy samples K responses; every pair is put to the "
        "labeler as a multiple-choice question under feedback principles sampled from the "
        "constitution. The soft label P(A better) comes from the option tokens' log-probs "
        "(or sampled votes where a backend has none), averaged over both orders of the pair and "
        "over the principles. Writes OUT/preferences.jsonl (conversational prompt/chosen/"
        "rejected + preference_prob, ready for TRL's RewardTrainer and DPOTrainer), a dataset "
        "card with a histogram, and OUT/cache.sqlite; cached and resumable like sl-cai. Feedback "
        "settings in --config YAML go under `feedback:`.",
    )
    add_prefs_arguments(r)
    add_push_arguments(r)
    r.set_defaults(func=prefs)
    t = kinds.add_parser(
        "red-team",
        help="new red-team prompts, few-shot from seed prompts, deduplicated and filtered",
        description="N requests to the labeler, each showing K seed prompts (drawn per request) "
        "as a numbered list of requests that test whether an AI assistant can be led into harm, "
        "and asking for one new one. The answers are parsed, then filtered in order: unparsable, "
        "length, exact and near duplicates of the seeds, of each other (MinHash LSH over word "
        "shingles), and optionally a Yes/No classifier by the labeler. Writes OUT/prompts.jsonl "
        "(id + prompt: --prompts of sl-cai and prefs reads it as it is), "
        "OUT/prompts.removed.jsonl (everything removed, with its filter and reason), "
        "OUT/generations.jsonl (every raw output), OUT/README.md (dataset card with the filter "
        "table and a novelty histogram) and OUT/cache.sqlite; cached and resumable like sl-cai. "
        "docs/red-team.md explains the method and settings.",
    )
    add_red_team_arguments(t)
    add_push_arguments(t)
    t.set_defaults(func=red_team)


def add_push_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="when every row succeeded, upload the dataset and its card to this Hub dataset "
        "repo (as `rlaif push OUT REPO_ID`)",
    )
    s.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")


def add_input_arguments(s: argparse.ArgumentParser, out_default: str, seeds: bool = False) -> None:
    """Flags every dataset job shares (``seeds``: the prompt data are red-team seeds, and the
    job has no policy and no constitution)."""
    a = s.add_argument
    a("--config", type=Path, metavar="FILE", help="YAML file with any of these settings")
    a(
        "--seeds" if seeds else "--prompts",
        dest="prompts",
        type=Path,
        metavar="SRC",
        help=("seed red-team prompts, in any prompt format: " if seeds else "prompt data: ")
        + ".txt (a prompt a line), .jsonl, .csv, .parquet, hh-rlhf .jsonl(.gz), "
        "a dataset folder (save_to_disk, or data files laid out like a Hub repo), or a Hugging "
        "Face Hub dataset id (ORG/NAME[@REVISION] or hf://datasets/ORG/NAME), read through the "
        "Hub cache",
    )
    a(
        "--prompt-format",
        choices=["auto", "text", "jsonl", "csv", "parquet", "hh-rlhf", "dataset", "hub"],
        help="format of --prompts (default: auto, from the name and the first record)",
    )
    a("--split", metavar="NAME", help="datasets: the split to read (needed when there are several)")
    a("--data-dir", metavar="DIR", help="datasets: a folder inside the dataset (harmless-base)")
    a("--subset", metavar="NAME", help="datasets: the configuration (load_dataset's name)")
    a(
        "--streaming",
        action="store_true",
        default=None,
        help="datasets: read only the first --limit records instead of preparing the whole source",
    )
    a("--prompt-field", metavar="NAME", help="JSONL/CSV/dataset field with the prompt (prompt)")
    a("--id-field", metavar="NAME", help="field with a stable row id, if any (id)")
    a(
        "--hh-context",
        choices=["first", "context"],
        help="hh-rlhf: the first Human turn (default) or the whole context to the last Human turn",
    )
    a("--limit", type=positive_int, metavar="N", help="use the first N prompts")
    if not seeds:
        a("--constitution", type=Path, metavar="FILE", help="constitution YAML (harmless.yaml)")
    a("--templates", type=Path, metavar="DIR", help="Jinja templates overriding prompts/*.j2")
    a("--labeler", metavar="NAME", help="the AI labeler: smollm2 (default), "
      "transformers:PATH|ORG/NAME[@REV], vllm:PATH|ORG/NAME[@REV], openai:MODEL, "
      "anthropic:MODEL")  # fmt: skip
    a("--labeler-set", dest="labeler_set", action="append", metavar="KEY=VALUE",
      help="a labeler setting, repeatable: base_url=http://127.0.0.1:8000/v1, concurrency=64, "
      "batch_size=16 (values are YAML)")  # fmt: skip
    if not seeds:
        a("--policy", metavar="NAME", help="writes the responses (default: the --labeler)")
        a("--policy-set", dest="policy_set", action="append", metavar="KEY=VALUE",
          help="a policy labeler setting, repeatable")  # fmt: skip
    a("--seed", type=int, help="seed for " + ("the seeds shown per request" if seeds
      else "principle sampling") + " and generation (0)")  # fmt: skip
    a("--temperature", type=float, help=("sampling temperature (1.0)" if seeds
      else "policy sampling temperature") + "; 0 = greedy")  # fmt: skip
    a("--top-p", type=float, help="nucleus sampling (1.0)")
    a("--max-tokens", type=positive_int, metavar="N",
      help=f"max new tokens per generation ({64 if seeds else 256})")  # fmt: skip
    a(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="conversations per batch for local backends (the backend's own default)",
    )
    a("--concurrency", type=positive_int, metavar="N", help="API requests in flight")
    a(
        "--breaker",
        type=positive_int,
        metavar="K",
        help="stop the run (exit 4) when K rows in a row have failed (20)",
    )
    a("--ray", nargs="?", const=True, metavar="ADDRESS",
      help="compute the local labelers' calls in Ray actors: alone, a local Ray instance (or "
      "the cluster RAY_ADDRESS names); local (always a new instance); or a cluster address: "
      "auto, HOST:6379, ray://HOST:10001. "
      "The journal, cache and dataset stay here (pip install 'rlaif[ray]'; "
      "docs/scaling.md)")  # fmt: skip
    a("--ray-actors", type=positive_int, metavar="N",
      help="labeler actors (default: one per GPU, or per CPU for transformers on CPU)")  # fmt: skip
    a("--ray-set", dest="ray_set", action="append", metavar="KEY=VALUE",
      help="a Ray setting, repeatable: num_cpus, num_gpus (of a local instance), "
      "cpus_per_actor, gpus_per_actor, max_restarts")  # fmt: skip
    a("--estimate", action="store_true",
      help="print the requests, tokens and (with prices) cost this run would have, and run "
      "nothing (docs/cost.md)")  # fmt: skip
    a("--max-cost", type=float, metavar="DOLLARS",
      help="stop (exit 4, resumable) before the labelers' billed cost passes this; needs "
      "price_input_per_million and price_output_per_million (docs/cost.md)")  # fmt: skip
    a("--out", type=Path, metavar="DIR", help=f"output folder ({out_default})")
    a("--cache", type=Path, metavar="FILE", help="SQLite cache (OUT/cache.sqlite)")
    a("--parquet", action="store_const", const=True, help="also write the dataset as parquet")


def add_sl_cai_arguments(s: argparse.ArgumentParser) -> None:
    add_input_arguments(s, "outputs/sl-cai")
    a = s.add_argument
    a("--rounds", type=positive_int, metavar="N", help="critique/revision rounds (1)")
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


def add_prefs_arguments(s: argparse.ArgumentParser) -> None:
    add_input_arguments(s, "outputs/prefs")
    add_feedback_arguments(s)
    s.add_argument(
        "--responses", type=positive_int, metavar="K", help="responses per prompt, >= 2 (2)"
    )


def add_red_team_arguments(s: argparse.ArgumentParser) -> None:
    add_input_arguments(s, "outputs/red-team", seeds=True)
    a = s.add_argument
    a("--n", type=positive_int, metavar="N", help="generation requests (100)")
    a("--examples", type=positive_int, metavar="K", help="seed prompts shown per request (5)")
    a("--classify", action=argparse.BooleanOptionalAction, default=None,
      help="keep only prompts the labeler judges a careful assistant should decline or handle "
      "with care (P(yes) from option log-probs; default: off, see docs/red-team.md)")  # fmt: skip
    a("--classify-threshold", type=float, metavar="P", help="keep P(yes) >= P (0.5)")
    a("--min-chars", type=int, metavar="N", help="drop prompts shorter than N characters (15)")
    a("--max-chars", type=positive_int, metavar="N", help="drop prompts longer than N (500)")
    a("--near-duplicate", type=float, metavar="J",
      help="near-duplicate at Jaccard >= J of word shingles, against the seeds and each other "
      "(0.5)")  # fmt: skip
    a("--shingle-words", type=positive_int, metavar="W", help="words per shingle (2)")


def add_feedback_arguments(s: argparse.ArgumentParser) -> None:
    """How the labeler is asked and read (also used by `rlaif eval labeler`)."""
    a = s.add_argument
    a("--principles", type=positive_int, metavar="M",
      help="feedback principles per comparison, averaged (1)")  # fmt: skip
    a("--no-both-orders", dest="both_orders", action="store_const", const=False,
      help="ask each pair in one order only (position bias is then not averaged out)")  # fmt: skip
    a("--cot", action="store_const", const=True,
      help="chain of thought: the labeler reasons first; probabilities are clamped")  # fmt: skip
    a("--clamp", nargs=2, type=float, metavar=("LOW", "HIGH"),
      help="clamp for chain-of-thought probabilities (0.4 0.6)")  # fmt: skip
    a("--scoring", choices=["auto", "logprobs", "votes"],
      help="read option log-probs, or count sampled votes (auto: log-probs where the backend "
      "has them)")  # fmt: skip
    a("--votes", type=positive_int, metavar="N", help="answers sampled per question, votes (8)")
    a("--calibrate", action="store_const", const=True,
      help="contextual calibration: divide out the labeler's prior for each option, measured "
      "on content-free inputs (log-probs only, not with --cot); raw values are kept")  # fmt: skip


_NOT_SETTINGS = {
    "config", "func", "command", "kind", "argv", "push_to_hub", "private", "estimate"
}  # fmt: skip
_FEEDBACK_FLAGS = {"principles", "both_orders", "cot", "clamp", "scoring", "votes", "calibrate"}


def feedback_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Pop the feedback flags out of ``flags`` as ``FeedbackSettings`` fields."""
    out = {k: flags.pop(k) for k in list(flags) if k in _FEEDBACK_FLAGS}
    if "clamp" in out:
        out["clamp_low"], out["clamp_high"] = out.pop("clamp")
    return out


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None, model: type[M] = SLCAIConfig
) -> M:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    for flag, key in (
        ("labeler_set", "labeler_settings"),
        ("policy_set", "policy_settings"),
        ("ray_set", "ray_settings"),
    ):
        if flag in flags:
            flags[key] = parse_key_values(flags.pop(flag), "--" + flag.replace("_", "-"))
    feedback = feedback_flags(flags)
    if args.config is None:
        if feedback:
            flags["feedback"] = feedback
        try:
            return model(**{**(defaults or {}), **flags})
        except ValidationError as e:
            problems = "; ".join(
                f"--{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}"
                for err in e.errors()
            )
            raise ConfigError(problems) from None
    args.config = locate(args.config, "recipe")  # a path, or a shipped recipe by name
    root, _ = parse_yaml(args.config, ConfigFileError)
    if root is None or not hasattr(root, "items"):
        raise ConfigFileError(args.config, [(1, "expected a YAML mapping of settings")])
    for key, value in {**(defaults or {}), **flags}.items():
        if key not in root or key in flags:
            root[key] = str(value) if isinstance(value, Path) else value
    if "prompts" in flags and "seeds" in root:  # --seeds wins over the file's `seeds:`
        del root["seeds"]
    if feedback:
        if not hasattr(root.get("feedback") or {}, "items"):
            raise ConfigFileError(args.config, [(1, "`feedback` must be a mapping")])
        root["feedback"] = {**(root.get("feedback") or {}), **feedback}
    return validate_yaml(model, root, args.config, ConfigFileError)


def print_summary(console: Console, result: SLCAIResult | PrefsResult, name: str) -> None:
    s = result.stats
    console.print(
        f"[bold]{len(result.rows)} rows[/] ({result.resumed} resumed) in {result.seconds:.1f} s · "
        f"labeler calls: [bold]{s.labeler_calls}[/] · cache hits {s.cache_hits}/{s.requests} · "
        f"{s.generated_tokens:,} tokens generated · {s.retries} calls retried"
    )
    if s.usage is not None:
        console.print(f"  billed: {s.usage.summary()}")
    if s.cost is not None:
        console.print(f"  cost by the price table: ${s.cost:.4f}")
    stem = name.removesuffix(".jsonl")
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} rows failed[/] (kept with their reason in "
            f"{stem}.failed.jsonl; run the same command again to retry exactly those rows)"
        )
    unlabeled = getattr(result, "unlabeled", [])
    if unlabeled:
        console.print(
            f"[yellow]{len(unlabeled)} pairs unlabeled[/] (kept with their reason in "
            f"{stem}.unlabeled.jsonl)"
        )
    for path in (result.dataset, result.card, *result.extra_files):
        console.print(f"  wrote {path}")


def run_job(console: Console, cfg: Any, command: str, runner: Any = run_sl_cai) -> Any:
    """Run a job with a progress bar; on Ctrl-C say what was kept and how to resume."""
    name = {run_prefs: PREFS_FILE, run_red_team: GENERATIONS_FILE}.get(runner, SL_CAI_FILE)
    with RowProgress(console) as progress:
        try:
            return run_sync(runner(cfg, command, progress.on_row, progress.on_start))
        except KeyboardInterrupt:
            pass
    console.print(
        f"[yellow]interrupted[/]: {progress.written} rows written to "
        f"{cfg.out}/.{name}.partial, finished answers kept in the cache. "
        "Run the same command again to resume."
    )
    return None


def _command(args: argparse.Namespace) -> str:
    return "rlaif " + " ".join(shlex.quote(a) for a in args.argv)


def print_estimate(console: Console, estimate: Any) -> int:
    from rlaif.engine.estimate import report_lines

    for line in report_lines(estimate):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def sl_cai(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args)
    if args.estimate:
        from rlaif.engine.estimate import estimate_sl_cai

        return print_estimate(console, estimate_sl_cai(cfg))
    result = run_job(console, cfg, _command(args))
    if result is None:
        return 130
    print_summary(console, result, SL_CAI_FILE)
    return finish(console, args, result, cfg.out)


def prefs(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args, model=PrefsConfig)
    if args.estimate:
        from rlaif.engine.estimate import estimate_prefs

        return print_estimate(console, estimate_prefs(cfg))
    result = run_job(console, cfg, _command(args), run_prefs)
    if result is None:
        return 130
    print_summary(console, result, PREFS_FILE)
    if result.rows:
        # one pass over the rows (read from disk), keeping none: a list of rows held them all
        probs: list[float] = []
        flipped = checked = 0
        for r in result.rows:
            probs.append(r["preference_prob"])
            flipped += r.get("position_consistent") is False
            checked += r.get("position_consistent") is not None
        console.print(
            f"  preference_prob: mean {sum(probs) / len(probs):.3f}, min {min(probs):.3f}, "
            f"max {max(probs):.3f} · position bias {flipped}/{checked} pairs"
        )
    return finish(console, args, result, cfg.out)


def red_team(args: argparse.Namespace) -> int:
    console = Console()
    cfg = config_from_args(args, model=RedTeamConfig)
    if args.estimate:
        from rlaif.engine.estimate import estimate_red_team

        return print_estimate(console, estimate_red_team(cfg))
    result = run_job(console, cfg, _command(args), run_red_team)
    if result is None:
        return 130
    print_red_team_summary(console, result)
    return finish(console, args, result, cfg.out)


def print_red_team_summary(console: Console, result: RedTeamResult) -> None:
    from rlaif.data.red_team_card import FILTERS

    s = result.stats
    kept, answered = len(result.rows), result.generated
    console.print(
        f"[bold]{kept} prompts kept[/] of {answered} requests answered ({result.resumed} "
        f"resumed) in {result.seconds:.1f} s · labeler calls: [bold]{s.labeler_calls}[/] · "
        f"cache hits {s.cache_hits}/{s.requests} · {s.generated_tokens:,} tokens generated · "
        f"{s.retries} calls retried"
    )
    if s.usage is not None:
        console.print(f"  billed: {s.usage.summary()}")
    if s.cost is not None:
        console.print(f"  cost by the price table: ${s.cost:.4f}")
    removed = ", ".join(f"{name} {result.counts[name]}" for name in FILTERS if result.counts[name])
    console.print(f"  removed: {removed or 'nothing'}")
    sims = [r["nearest_seed_similarity"] for r in result.rows]
    if sims:
        console.print(
            f"  nearest-seed similarity: mean {sum(sims) / len(sims):.3f}, max {max(sims):.3f}"
        )
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} requests failed[/] (kept with their reason in "
            "generations.failed.jsonl; run the same command again to retry exactly those)"
        )
    for path in (result.dataset, result.card, *result.extra_files):
        console.print(f"  wrote {path}")


def finish(console: Console, args: argparse.Namespace, result: Any, out: Path) -> int:
    """The exit code (3: some rows failed), after ``--push-to-hub`` when every row succeeded."""
    if result.failed:
        if args.push_to_hub:
            console.print("  [yellow]not pushed[/]: some rows failed; rerun to fill them first")
        return 3
    if not args.push_to_hub:
        return 0
    from rlaif.data.hub import prepare, push

    files = ", ".join(prepare(out).paths_in_repo)
    url = push(out, args.push_to_hub, private=args.private)
    console.print(f"  pushed {files} to {url}")
    return 0
