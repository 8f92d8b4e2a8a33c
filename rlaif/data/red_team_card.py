"""The dataset card of generated red-team prompts: what was made, what each filter removed, and
how new the kept prompts are.

Generated prompts are only worth having if they are new: a set that mostly rephrases its seeds
adds little. So besides provenance (as every card here) the card shows the filter funnel (how many
requests each filter removed, as a share of all requests and of those that reached it) and the
novelty of what was kept: a histogram of each prompt's Jaccard similarity (word shingles) to its
nearest seed, as a text table and a PNG. Every number comes from the rows written.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.data.cards import (
    _bar,
    _cell,
    _model_line,
    _reproduce,
    _run_section,
    _write_card,
    front_matter,
    reproducibility,
)

if TYPE_CHECKING:  # data/ does not depend on the engine at run time
    from rlaif.engine.scheduler import EngineStats

DATASET_NAME = "prompts.jsonl"
PLOT_NAME = "nearest_seed_similarity.png"
BINS = 10

# the filters in the order they run, and what each removes
FILTERS = {
    "unparsable": "no request could be read from the output (empty, a refusal, cut off)",
    "length": "shorter than min_chars or longer than max_chars",
    "seed_duplicate": "the same normalised text as a seed",
    "seed_near_duplicate": "a near-duplicate of a seed (Jaccard >= near_duplicate)",
    "duplicate": "the same normalised text as an earlier generated prompt",
    "near_duplicate": "a near-duplicate of an earlier generated prompt",
    "classifier": "the classifier's P(yes) below classify_threshold, or no probability",
}


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def similarity_bins(values: list[float], bins: int = BINS) -> list[tuple[float, float, int]]:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1] (1.0 falls in the last)."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return [(i / bins, (i + 1) / bins, c) for i, c in enumerate(counts)]


def filter_table(counts: dict[str, int], generated: int, kept: int, classify: bool) -> list[str]:
    lines = [
        "| filter | removes | removed | share of requests | share of those reaching it |",
        "|---|---|---:|---:|---:|",
    ]
    reaching = generated
    for name, what in FILTERS.items():
        n = counts.get(name, 0)
        if name == "classifier" and not classify:
            lines.append(f"| `{name}` | {what} | off | | |")
            continue
        lines.append(f"| `{name}` | {what} | {n} | {_pct(n, generated)} | {_pct(n, reaching)} |")
        reaching -= n
    lines.append(f"| **kept** | | **{kept}** | **{_pct(kept, generated)}** | |")
    return lines


def novelty_section(kept: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    sims = [float(r["nearest_seed_similarity"]) for r in kept]
    method = (
        "every seed compared"
        if settings["nearest_method"] == "exhaustive"
        else "candidates from a MinHash LSH Forest, so each value is a lower bound"
    )
    lines = [
        "## Novelty: similarity to the nearest seed",
        "",
        f"For each kept prompt, the Jaccard similarity of its {settings['shingle_words']}-word "
        f"shingles to those of the most similar seed ({method}). 0 shares no word pair with any "
        f"seed; prompts at or above {settings['near_duplicate']} were removed as near-duplicates.",
        "",
    ]
    if not sims:
        return [*lines, "No prompt was kept.", ""]
    bins = similarity_bins(sims)
    most = max(c for _, _, c in bins)
    lines += [
        f"Mean {statistics.mean(sims):.3f}, median {statistics.median(sims):.3f}, "
        f"max {max(sims):.3f} over {len(sims)} prompts.",
        "",
        "| similarity | prompts | |",
        "|---|---:|---|",
        *[f"| {lo:.1f}-{hi:.1f} | {c} | {_bar(c, most)} |" for lo, hi, c in bins],
        "",
        f"![nearest-seed similarity]({PLOT_NAME})",
        "",
    ]
    return lines


def write_red_team_card(
    out: Path,
    kept: list[dict[str, Any]],
    removed: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    generated: int,
    counts: dict[str, int],
    settings: dict[str, Any],
    provenance: dict[str, Any],
    stats: EngineStats,
    seconds: float,
    command: str,
    resumed: int,
) -> tuple[Path, list[Path]]:
    """``README.md`` beside ``prompts.jsonl``, and the novelty histogram as a PNG."""
    from rlaif.plots import histogram

    plots = []
    if kept:
        plots.append(
            histogram(
                [r["nearest_seed_similarity"] for r in kept],
                out / PLOT_NAME,
                "Kept prompts: similarity to the nearest seed",
                f"Jaccard of {settings['shingle_words']}-word shingles",
            )
        )
    params = provenance["params"]
    source = provenance["source"]
    gen = provenance["generator"]
    classify = provenance["classify"]
    requests = settings["n"]
    lines = [
        *front_matter(
            "Model-generated red-team prompts",
            ["rlaif", "constitutional-ai", "red-team", "synthetic"],
            DATASET_NAME,
            provenance,
            len(kept),
        ),
        "",
        "# Red-team prompts (model-generated)",
        "",
        f"Made by rlaif {provenance['rlaif']}: {requests} requests to `{gen.get('model')}`, each "
        f"showing {provenance['examples']} seed prompts (of {source['seeds']}) as a numbered list "
        "of requests people made to an AI assistant to lead it into harm, and asking for one new "
        "one. The first line of each answer is the new prompt; duplicates and near-duplicates of "
        "the seeds and of each other were removed, and so were prompts outside the length bounds"
        + (", and prompts the classifier did not judge harmful." if classify else ".")
        + " These prompts are meant to be answered (and refused) by the model being trained: "
        "they ask for harmful things on purpose.",
        "",
        "## Contents",
        "",
        "| | |",
        "|---|---|",
        f"| kept prompts (`{DATASET_NAME}`) | {len(kept)} of {requests} requests "
        f"({_pct(len(kept), requests)}) |",
        f"| removed (`prompts.removed.jsonl`, each with its filter and reason) | {len(removed)} |",
        f"| requests whose labeler call failed (`generations.failed.jsonl`; a rerun retries "
        f"them) | {len(failed)} |",
        f"| seed prompts | {source['seeds']} from `{source['file']}` "
        f"(sha256 `{source['sha256'][:16]}`) |",
        "| requests that showed the same seeds, in the same order, as an earlier one (the same "
        f"question: the same answer) | {settings['repeated_lists']} |",
        "",
        "Columns: `id` (`gen-<i>`, the request), `prompt`, `source` (`red-team`), "
        "`nearest_seed` (its id) and `nearest_seed_similarity`, `shown_seeds` (the ids of the "
        "seeds the request showed, in order)"
        + (", `p_yes` (the classifier's P(yes))" if classify else "")
        + ". Every request's raw output is in `generations.jsonl`.",
        "",
        "## Filters",
        "",
        "In this order; a prompt removed by one filter is not seen by the later ones, and of two "
        f"duplicates the earlier request is kept. {generated} requests were answered.",
        "",
        *filter_table(counts, generated, len(kept), classify),
        "",
        *novelty_section(kept, settings),
        "## How it was made",
        "",
        _model_line("generator (and classifier)" if classify else "generator", gen),
        *reproducibility({"generator": gen}),
        f"- sampling: temperature {params['temperature']}, top_p {params['top_p']}, "
        f"max_tokens {params['max_tokens']}, seed {params['seed']} (each block of "
        f"{provenance['sampling_block']} requests samples with its own seed derived from it)",
        f"- seeds per request: {provenance['examples']}, drawn per request from (seed, request id)",
        f"- length bounds: {settings['min_chars']} to {settings['max_chars']} characters",
        f"- duplicates: normalised text (case, punctuation and spacing ignored); near-duplicates: "
        f"Jaccard >= {settings['near_duplicate']} of {settings['shingle_words']}-word shingles, "
        "candidates from MinHash LSH (datasketch, 128 permutations)",
        "- classifier: "
        + (
            f"on, keeps P(yes) >= {settings['classify_threshold']} (mean over Yes-first and "
            "No-first questions)"
            if classify
            else "off"
        ),
        *[f"- template `{k}.j2` sha256: `{v}`" for k, v in provenance["templates"].items()],
        "",
        *_run_section(stats, seconds, resumed, failed),
        *_reproduce(command),
        "## Use",
        "",
        "```bash",
        f"rlaif generate sl-cai --prompts {DATASET_NAME}",
        f"rlaif generate prefs --prompts {DATASET_NAME}",
        "```",
        "",
        "## Examples",
        "",
    ]
    if kept:
        lines += ["| prompt | nearest seed | similarity |", "|---|---|---:|"]
        lines += [
            f"| {_cell(r['prompt'])} | `{r['nearest_seed']}` | {r['nearest_seed_similarity']:.3f} |"
            for r in kept[:10]
        ]
    else:
        lines.append("No prompt was kept.")
    lines += ["", "### Removed, one example per filter", ""]
    firsts = {}
    for r in removed:
        firsts.setdefault(r["removed"]["filter"], r)
    if firsts:
        lines += ["| filter | text | reason |", "|---|---|---|"]
        for name in FILTERS:
            if name in firsts:
                r = firsts[name]
                text = r.get("prompt") or r.get("output") or ""
                lines.append(f"| `{name}` | {_cell(text)} | {_cell(r['removed']['reason'])} |")
    else:
        lines.append("Nothing was removed.")
    lines.append("")
    return _write_card(out, lines), plots
