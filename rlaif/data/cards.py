"""Dataset cards: a README.md beside each generated dataset, written from the data itself.

A card says what is in the file and how it was made, so a dataset found on disk months later
still explains itself: counts, a histogram of the principles used, clean-up flags, the models and
sampling settings, content hashes of the constitution and templates, a few examples, and the
exact command that reproduces it. Every number is computed from the rows written. The YAML
front matter follows the Hugging Face dataset-card convention, so the folder can be pushed to a
hub as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.data.principles import markdown_table, prefs_principles, sl_cai_principles

if TYPE_CHECKING:  # data/ does not depend on the engine at run time
    from rlaif.engine.scheduler import EngineStats

_BAR = "█"
DATASET_NAME = "preferences.jsonl"


def _bar(count: int, most: int, width: int = 30) -> str:
    return _BAR * max(1, round(width * count / most)) if count else ""


def _clip(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str) -> str:
    return _clip(text, 300).replace("|", "\\|")


def _histogram(title: str, counts: Counter[str], empty: str) -> list[str]:
    if not counts:
        return [f"### {title}", "", empty, ""]
    most = max(counts.values())
    lines = [f"### {title}", "", "| | count | |", "|---|---:|---|"]
    for key, n in counts.most_common():
        lines.append(f"| `{key}` | {n} | {_bar(n, most)} |")
    return [*lines, ""]


def _principles_section(kind: str, stats: list[dict[str, Any]], note: str) -> list[str]:
    """The per-principle table, with a bar for how often each principle was used."""
    if not stats:
        return ["### Principles used", "", "No principles were used.", ""]
    key = "rounds" if kind == "sl_cai" else "pairs"
    most = max(s[key] for s in stats)
    lines = markdown_table(kind, stats)
    lines[0] += " |"
    lines[1] += "---|"
    lines[2:] = [f"{line} {_bar(s[key], most)} |" for line, s in zip(lines[2:], stats, strict=True)]
    return ["### Principles used", "", note, "", *lines, ""]


def front_matter(
    pretty_name: str, tags: list[str], data_file: str, provenance: dict[str, Any], rows: int
) -> list[str]:
    """Hugging Face dataset-card metadata. The licence is ``unknown`` until the user says (it
    depends on the terms of their prompts and models; ``rlaif push --license`` sets it)."""
    source = provenance.get("source", {}).get("file")
    sizes = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"))
    size = next((name for limit, name in sizes if rows < limit), "n>100K")
    lines = [
        "---",
        f"pretty_name: {pretty_name}",
        "license: unknown",
        "language: [en]",
        "task_categories: [text-generation]",
        f"tags: [{', '.join(tags)}]",
        f"size_categories: [{size}]",
    ]
    if source:
        lines.append(f"source_datasets: [{json.dumps(str(source))}]")
    return [
        *lines,
        "configs:",
        "  - config_name: default",
        f"    data_files: {data_file}",
        "---",
    ]


def _model_line(role: str, desc: dict[str, Any]) -> str:
    skip = {"backend", "model", "not_reproducible", "model_rules"}
    extra = ", ".join(f"{k}={v}" for k, v in desc.items() if k not in skip)
    line = f"- {role}: `{desc.get('backend')}` / `{desc.get('model')}` ({extra})"
    rules = desc.get("model_rules")
    if rules:
        refused = ", ".join(rules.get("refused") or []) or "nothing"
        line += f"; model rules `{rules.get('family')}`: refuses {refused}"
    return line


def reproducibility(roles: dict[str, dict[str, Any]]) -> list[str]:
    """Lines saying which models could not be asked for reproducible sampling, if any."""
    lines = [
        f"- **not reproducible by rerunning**: {role} `{desc.get('model')}`: "
        f"{desc['not_reproducible']}. The cache in this folder keeps every answer, so the same "
        "command over it gives this dataset again."
        for role, desc in roles.items()
        if desc.get("not_reproducible")
    ]
    return lines


def write_sl_cai_card(
    out: Path,
    rows: Sequence[dict[str, Any]],
    provenance: dict[str, Any],
    stats: EngineStats,
    seconds: float,
    command: str,
    resumed: int,
    failed: list[dict[str, Any]] | None = None,
) -> Path:
    flags = Counter(f for row in rows for r in row["rounds"] for f in r["flags"])
    flagged_rows = sum(1 for row in rows if row["flags"])
    tokens = sum(row["tokens"] for row in rows)
    const = provenance["constitution"]
    params = provenance["params"]
    lines = [
        *front_matter(
            "SL-CAI critiques and revisions",
            ["rlaif", "constitutional-ai", "sl-cai", "synthetic"],
            "sl_cai.jsonl",
            provenance,
            len(rows),
        ),
        "",
        "# SL-CAI dataset",
        "",
        f"Made by rlaif {provenance['rlaif']}: each prompt was answered by the policy, then "
        f"critiqued and revised {provenance['rounds']} time(s) by the critic, each round under a "
        f"principle sampled from the constitution `{const['name']}` v{const['version']}. The last "
        "revision is the SFT target (`completion`).",
        "",
        "## Contents",
        "",
        "| | |",
        "|---|---|",
        f"| rows | {len(rows)} |",
        f"| rounds per row | {provenance['rounds']} |",
        f"| rows with clean-up flags | {flagged_rows} |",
        f"| failed rows (in `sl_cai.failed.jsonl`; a rerun retries them) | {len(failed or [])} |",
        f"| tokens (prompt + completion, all requests) | {tokens} |",
        f"| prompt source | `{provenance['source']['file']}` "
        f"(sha256 `{provenance['source']['sha256'][:16]}`) |",
        "",
        "Columns: `id`, `prompt` (`[user]`, or every turn of a multi-turn prompt) and "
        "`completion` (`[assistant]`: the final "
        "revision), TRL's conversational prompt/completion format, which SFT trains on by "
        "default (loss on the revision only, as in the paper); `messages` (`prompt + completion`) "
        "for full-conversation SFT; `response` (first answer), `rounds` (`principle_id`, "
        "`critique`, `revision`, `flags`), `revision` (final, as text), `flags`, `tokens`, "
        "`provenance`. Wall-clock timings per row are in `sl_cai.timings.jsonl`.",
        "",
        *_principles_section(
            "sl_cai",
            sl_cai_principles(rows),
            "Per principle, over every round: the share of rounds whose revision changed the "
            "text it revised, the mean word-level edit distance of a round (Levenshtein over "
            "words) and the clean-up flags its rounds raised.",
        ),
        *_histogram(
            f"Clean-up flags (mode `{provenance['cleanup']}`)",
            flags,
            "No revision raised a clean-up flag.",
        ),
        "## How it was made",
        "",
        _model_line("policy (first answers)", provenance["policy"]),
        _model_line("critic (critiques, revisions)", provenance["critic"]),
        *reproducibility({"policy": provenance["policy"], "critic": provenance["critic"]}),
        f"- sampling: temperature {params['temperature']}, top_p {params['top_p']}, "
        f"max_tokens {params['max_tokens']}, seed {params['seed']}",
        f"- few-shot examples: {'yes' if provenance['few_shot'] else 'no'}",
        f"- constitution sha256: `{const['sha256']}`",
        *[f"- template `{k}.j2` sha256: `{v}`" for k, v in provenance["templates"].items()],
        "",
        *_run_section(stats, seconds, resumed, failed or []),
        *_reproduce(command),
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("json", data_files="sl_cai.jsonl", split="train")',
        "# each row's `provenance` is a reference ({'sha256': ...}) to the record in",
        "# sl_cai.provenance.json; the parquet twin and rlaif's readers hold the full record",
        "# TRL's SFTTrainer reads the file as written: conversational prompt/completion, so it",
        "# trains on the completion (the final revision) alone, as the paper did.",
        "# For full-conversation SFT (loss on the prompt too) keep only `messages`:",
        'full = ds.select_columns(["messages"])',
        "```",
        "",
        "## Examples",
        "",
    ]
    for row in rows[:3]:
        last = row["rounds"][-1]
        lines += [
            f"**Prompt:** {_cell(row['prompt'][-1]['content'])}",
            "",
            "| first answer | critique (`" + last["principle_id"] + "`) | final revision |",
            "|---|---|---|",
            f"| {_cell(row['response'])} | {_cell(last['critique'])} | {_cell(row['revision'])} |",
            "",
        ]
    return _write_card(out, lines)


def _run_section(
    stats: EngineStats, seconds: float, resumed: int, failed: list[dict[str, Any]]
) -> list[str]:
    return [
        "## This run",
        "",
        f"- {seconds:.1f} s wall time; {stats.labeler_calls} labeler calls; "
        f"{stats.cache_hits} of {stats.requests} requests answered from the cache; "
        f"{resumed} rows resumed from an earlier run",
        f"- {stats.generated_tokens} tokens generated by the labeler in this run; "
        f"{stats.retries} calls retried"
        + (f"; cost by the price table ${stats.cost:.4f}" if stats.cost is not None else ""),
        *([f"- billed by the API: {stats.usage.summary()}"] if stats.usage else []),
        *[
            f"- failed: `{r['id']}`: {r['failed']['reason']} ({r['failed']['attempts']} attempts)"
            for r in failed[:10]
        ],
        "",
    ]


def _reproduce(command: str) -> list[str]:
    return ["## Reproduce", "", "```bash", command, "```", ""]


def _write_card(out: Path, lines: list[str]) -> Path:
    path = out / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "n/a"


def prefs_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers a preference card reports, computed from the labeled rows in one pass that
    keeps no row (they are read from disk: lists of rows here held a large run in memory)."""
    n = probs = confident = checked = flipped = ensembles = 0
    prob_sum = agreement_sum = 0.0
    judgements = no_probability = unparsed = stopped = 0
    for r in rows:
        n += 1
        p = r["preference_prob"]
        probs += 1
        prob_sum += p
        confident += p >= 0.75
        if r.get("position_consistent") is not None:
            checked += 1
            flipped += not r["position_consistent"]
        if r.get("principle_agreement") is not None:
            ensembles += 1
            agreement_sum += r["principle_agreement"]
        for j in r["judgements"]:
            judgements += 1
            no_probability += j["prob_a"] is None
            unparsed += j["unparsed"]
        stopped += bool(r.get("flags"))
    return {
        "rows": n,
        "mean_preference_prob": prob_sum / probs if probs else None,
        "confident_rows": confident,
        "position_checked": checked,
        "position_flipped": flipped,
        "ensembles": ensembles,
        "mean_principle_agreement": agreement_sum / ensembles if ensembles else None,
        "judgements": judgements,
        "judgements_without_probability": no_probability,
        "unparsed_answers": unparsed,
        "stopped_by_provider": stopped,
    }


def write_prefs_card(
    out: Path,
    rows: Sequence[dict[str, Any]],
    unlabeled: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    provenance: dict[str, Any],
    stats: EngineStats,
    seconds: float,
    command: str,
    resumed: int,
) -> tuple[Path, list[Path]]:
    """The card of ``preferences.jsonl``, with a PNG histogram of ``preference_prob``."""
    from rlaif.plots import histogram

    s = prefs_summary(rows)
    fb = provenance["feedback"]
    const = provenance["constitution"]
    params = provenance["params"]
    plots = []
    if rows:
        plots.append(
            histogram(
                (r["preference_prob"] for r in rows),
                out / "preference_prob.png",
                "P(chosen better) per pair",
                "preference_prob",
            )
        )
    reasons = Counter(r["unlabeled"]["reason"].split(";")[0] for r in unlabeled)
    mean = s["mean_preference_prob"]
    agreement = s["mean_principle_agreement"]
    cot = f"yes, clamped to [{fb['clamp_low']}, {fb['clamp_high']}]" if fb["cot"] else "no"
    lines = [
        *front_matter(
            "RL-CAI AI-feedback preferences",
            ["rlaif", "constitutional-ai", "rl-cai", "preference", "synthetic"],
            DATASET_NAME,
            provenance,
            len(rows),
        ),
        "",
        "# RL-CAI preference dataset",
        "",
        f"Made by rlaif {provenance['rlaif']}: for each prompt the policy sampled "
        f"{params['n']} responses; each pair was put to the labeler as a multiple-choice question "
        f"under {fb['principles']} feedback principle(s) sampled from the constitution "
        f"`{const['name']}` v{const['version']}. `preference_prob` is P(chosen better), read from "
        + (
            "the option tokens' log-probabilities"
            if fb["mode"] == "logprobs"
            else f"the share of {fb['votes']} sampled answers naming each option (votes mode"
            + (
                ": the labeler gives no log-probs)"
                if fb.get("scoring", "auto") == "auto"
                else ", as asked)"
            )
        )
        + (", averaged over both orders of the pair" if fb["both_orders"] else "")
        + " and over the principles.",
        "",
        "## Contents",
        "",
        "| | |",
        "|---|---|",
        f"| labeled pairs | {len(rows)} |",
        f"| unlabeled pairs (`preferences.unlabeled.jsonl`, with reasons) | {len(unlabeled)} |",
        f"| failed pairs (in `preferences.failed.jsonl`; a rerun retries them) | {len(failed)} |",
        f"| mean preference_prob | {mean:.3f} |" if mean is not None else "| mean | n/a |",
        f"| pairs with preference_prob >= 0.75 | {_rate(s['confident_rows'], len(rows))} |",
        f"| position bias: pairs whose preferred response flips with the order | "
        f"{_rate(s['position_flipped'], s['position_checked'])} |",
        "| agreement between principles (share agreeing with the majority, mean) | "
        + (f"{agreement:.3f} over {s['ensembles']} pairs |" if agreement is not None else "n/a |"),
        f"| judgements without a probability | "
        f"{_rate(s['judgements_without_probability'], s['judgements'])} |",
        f"| sampled answers naming no option (votes mode) | {s['unparsed_answers']} |",
        "| pairs with a response the provider stopped (refused, filtered, a tool call; `flags`) "
        f"| {s['stopped_by_provider']} |",
        f"| prompt source | `{provenance['source']['file']}` "
        f"(sha256 `{provenance['source']['sha256'][:16]}`) |",
        "",
        "![preference_prob histogram](preference_prob.png)" if rows else "",
        "",
        "Columns: `id` (`<prompt id>/<i>-<j>`), `prompt_id`, `pair`, `prompt` / `chosen` / "
        "`rejected` (conversational, as TRL expects), `preference_prob`, `response_a`, "
        "`response_b`, `prob_a` (P(response_a better)), `judgements` (per principle and order: "
        "`prob_first`, `prob_a`, `logprobs` or `votes`, `reasoning`, `error`), "
        "`position_consistent`, `principle_agreement`, `errors`, `finish_reasons`, `provenance`.",
        "",
        *_principles_section(
            "prefs",
            prefs_principles(rows),
            "Per feedback principle: the pairs it judged, the mean P(chosen better) under it "
            "alone (below 0.5: it mostly disagreed with the pair's label), and over the pairs "
            "asked in both orders, the share whose two orders picked the same response and the "
            "share that picked the same position instead (flips: position bias; a 0.5 picks "
            "neither).",
        ),
        *_histogram("Why pairs were left unlabeled", reasons, "Every pair got a label."),
        "## How it was made",
        "",
        _model_line("policy (responses)", provenance["policy"]),
        _model_line("labeler (feedback)", provenance["labeler"]),
        *reproducibility({"policy": provenance["policy"], "labeler": provenance["labeler"]}),
        f"- policy sampling: {params['n']} responses per prompt, temperature "
        f"{params['temperature']}, top_p {params['top_p']}, max_tokens {params['max_tokens']}, "
        f"seed {params['seed']}",
        f"- feedback: mode `{fb['mode']}`, both orders: {'yes' if fb['both_orders'] else 'no'}, "
        f"principles per pair: {fb['principles']}, chain of thought: {cot}, "
        f"contextual calibration: {'yes' if fb.get('calibrate') else 'no'}"
        + (" (raw values in `prob_a_raw` and each judgement)" if fb.get("calibrate") else ""),
        f"- constitution sha256: `{const['sha256']}`",
        *[f"- template `{k}.j2` sha256: `{v}`" for k, v in provenance["templates"].items()],
        "",
        *_run_section(stats, seconds, resumed, failed),
        *_reproduce(command),
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("json", data_files="{DATASET_NAME}", split="train")',
        "# each row's `provenance` is a reference ({'sha256': ...}) to the record in",
        f"# {Path(DATASET_NAME).stem}.provenance.json; the parquet twin and rlaif's readers "
        "hold the full record",
        "# TRL's RewardTrainer / DPOTrainer read prompt, chosen and rejected",
        'pairs = ds.select_columns(["prompt", "chosen", "rejected"])',
        "```",
        "",
        "## Examples",
        "",
    ]
    for row in rows[:3]:
        lines += [
            f"**Prompt:** {_cell(row['prompt'][-1]['content'])} "
            f"(preference_prob {row['preference_prob']:.3f})",
            "",
            "| chosen | rejected |",
            "|---|---|",
            f"| {_cell(row['chosen'][0]['content'])} | {_cell(row['rejected'][0]['content'])} |",
            "",
        ]
    return _write_card(out, lines), plots
