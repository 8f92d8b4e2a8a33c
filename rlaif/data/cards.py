"""Dataset cards: a README.md beside each generated dataset, written from the data itself.

A card says what is in the file and how it was made, so a dataset found on disk months later
still explains itself: counts, a histogram of the principles used, clean-up flags, the models and
sampling settings, content hashes of the constitution and templates, a few examples, and the
exact command that reproduces it. Every number is computed from the rows written. The YAML
front matter follows the Hugging Face dataset-card convention, so the folder can be pushed to a
hub as it is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # data/ does not depend on the engine at run time
    from rlaif.engine.scheduler import EngineStats

_BAR = "█"


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


def _model_line(role: str, desc: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in desc.items() if k not in {"backend", "model"})
    return f"- {role}: `{desc.get('backend')}` / `{desc.get('model')}` ({extra})"


def write_sl_cai_card(
    out: Path,
    rows: list[dict[str, Any]],
    provenance: dict[str, Any],
    stats: EngineStats,
    seconds: float,
    command: str,
    resumed: int,
    failed: list[dict[str, Any]] | None = None,
) -> Path:
    principles = Counter(r["principle_id"] for row in rows for r in row["rounds"])
    flags = Counter(f for row in rows for r in row["rounds"] for f in r["flags"])
    flagged_rows = sum(1 for row in rows if row["flags"])
    tokens = sum(row["tokens"] for row in rows)
    const = provenance["constitution"]
    params = provenance["params"]
    lines = [
        "---",
        "pretty_name: SL-CAI critiques and revisions",
        "task_categories: [text-generation]",
        "tags: [rlaif, constitutional-ai, sl-cai, synthetic]",
        "configs:",
        "  - config_name: default",
        "    data_files: sl_cai.jsonl",
        "---",
        "",
        "# SL-CAI dataset",
        "",
        f"Made by rlaif {provenance['rlaif']}: each prompt was answered by the policy, then "
        f"critiqued and revised {provenance['rounds']} time(s) by the critic, each round under a "
        f"principle sampled from the constitution `{const['name']}` v{const['version']}. The last "
        "revision is the SFT target (`messages`).",
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
        "Columns: `id`, `prompt`, `response` (first answer), `rounds` (`principle_id`, `critique`, "
        "`revision`, `flags`), `revision` (final), `messages` (`[user, assistant]`), `flags`, "
        "`tokens`, `provenance`. Wall-clock timings per row are in `sl_cai.timings.jsonl`.",
        "",
        *_histogram("Principles used", principles, "No principles were used."),
        *_histogram(
            f"Clean-up flags (mode `{provenance['cleanup']}`)",
            flags,
            "No revision raised a clean-up flag.",
        ),
        "## How it was made",
        "",
        _model_line("policy (first answers)", provenance["policy"]),
        _model_line("critic (critiques, revisions)", provenance["critic"]),
        f"- sampling: temperature {params['temperature']}, top_p {params['top_p']}, "
        f"max_tokens {params['max_tokens']}, seed {params['seed']}",
        f"- few-shot examples: {'yes' if provenance['few_shot'] else 'no'}",
        f"- constitution sha256: `{const['sha256']}`",
        *[f"- template `{k}.j2` sha256: `{v}`" for k, v in provenance["templates"].items()],
        "",
        "## This run",
        "",
        f"- {seconds:.1f} s wall time; {stats.labeler_calls} labeler calls; "
        f"{stats.cache_hits} of {stats.requests} requests answered from the cache; "
        f"{resumed} rows resumed from an earlier run",
        f"- {stats.generated_tokens} tokens generated by the labeler in this run; "
        f"{stats.retries} calls retried"
        + (f"; cost by the price table ${stats.cost:.4f}" if stats.cost is not None else ""),
        *[
            f"- failed: `{r['id']}`: {r['failed']['reason']} ({r['failed']['attempts']} attempts)"
            for r in (failed or [])[:10]
        ],
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("json", data_files="sl_cai.jsonl", split="train")',
        "# TRL's SFTTrainer: pass only `messages` (a `prompt` column would make TRL expect",
        "# prompt/completion pairs)",
        'sft_data = ds.select_columns(["messages"])',
        "```",
        "",
        "## Examples",
        "",
    ]
    for row in rows[:3]:
        last = row["rounds"][-1]
        lines += [
            f"**Prompt:** {_cell(row['prompt'])}",
            "",
            "| first answer | critique (`" + last["principle_id"] + "`) | final revision |",
            "|---|---|---|",
            f"| {_cell(row['response'])} | {_cell(last['critique'])} | {_cell(row['revision'])} |",
            "",
        ]
    path = out / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
