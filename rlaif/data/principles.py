"""Per-principle numbers of a dataset: what each principle of the constitution did to the rows.

A constitution is a list of principles, and a swap of constitution (or of a principle's wording)
changes the data through them. A card that only counts how often each principle was sampled hides
whether a principle ever changed an answer, or whether the labeler under it just picks a
position. These functions compute, from the rows as written, one line per principle:

- SL-CAI (over every round of every row): rounds, rows, the share of rounds whose revision changed
  the text it revised, the mean edit distance of a round, and the clean-up flags it raised.
- Preferences (over the judgements of every labeled pair): pairs judged, the mean soft label
  P(chosen better) under that principle, and, where both orders were asked, the share of pairs
  whose two orders picked the same response (agreement) and the share that picked the same
  *position* instead (flips, the position bias). An exact 0.5 in either order picks no side, so
  such a pair is neither an agreement nor a flip.

Edit distance is counted in **words** (whitespace-separated tokens; Levenshtein over the word
sequences, ``rapidfuzz``): a revision that rewrites one sentence of a paragraph scores the words
it touched, not the characters, which is what a reader means by "how much did it change".

The dataset cards and ``rlaif compare`` both use these, so the card of a run and the comparison
of two runs never disagree on a number. ``table_rows`` gives the same table as strings for either
Markdown or HTML.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rapidfuzz.distance import Levenshtein


def edit_distance(before: str, after: str) -> int:
    """Word-level Levenshtein distance: insertions, deletions and substitutions of words."""
    return Levenshtein.distance(before.split(), after.split())


def prompt_text(prompt: Any) -> str:
    """A row's prompt for display: the text itself, or the last user turn of a message list."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else (prompt[-1] if prompt else {})
        content = last.get("content", "") if isinstance(last, dict) else last
        return content if isinstance(content, str) else str(content)
    return str(prompt)


def sl_cai_rounds(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each round of an SL-CAI row with the text it revised: ``principle_id``, ``changed`` (the
    revision differs from that text, surrounding whitespace aside), ``edit`` (word edit
    distance), ``flags``."""
    out = []
    before = row.get("response", "")
    for r in row.get("rounds", []):
        after = r.get("revision", "")
        out.append(
            {
                "principle_id": r["principle_id"],
                "changed": after.strip() != before.strip(),
                "edit": edit_distance(before, after),
                "flags": list(r.get("flags", [])),
            }
        )
        before = after
    return out


def sl_cai_principles(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per principle id, most-used first (ties by id)."""
    acc: dict[str, dict[str, Any]] = {}
    for row in rows:
        for r in sl_cai_rounds(row):
            p = acc.setdefault(
                r["principle_id"],
                {"rounds": 0, "rows": set(), "changed": 0, "edit": 0, "flags": Counter()},
            )
            p["rounds"] += 1
            p["rows"].add(str(row.get("id")))
            p["changed"] += r["changed"]
            p["edit"] += r["edit"]
            p["flags"].update(r["flags"])
    out = []
    for pid, p in acc.items():
        out.append(
            {
                "principle_id": pid,
                "rounds": p["rounds"],
                "rows": len(p["rows"]),
                "changed": p["changed"],
                "changed_share": p["changed"] / p["rounds"],
                "mean_edit_words": p["edit"] / p["rounds"],
                "flags": dict(p["flags"].most_common()),
            }
        )
    return sorted(out, key=lambda x: (-x["rounds"], x["principle_id"]))


def chose_a(row: dict[str, Any]) -> bool:
    """Whether a labeled pair chose ``response_a`` (``prob_a >= 0.5``, as the job decides)."""
    return row["prob_a"] >= 0.5


def judgement_sides(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per principle of a pair: P(response_a better) in each order that has a probability
    (``{"ab": p, "ba": p}``)."""
    out: dict[str, dict[str, float]] = {}
    for j in row.get("judgements", []):
        sides = out.setdefault(j["principle_id"], {})
        if j.get("prob_a") is not None:
            sides[j["order"]] = j["prob_a"]
    return out


def prefs_principles(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per feedback principle of the labeled pairs, most-used first (ties by id).

    ``mean_soft_label``: the mean over the pairs of P(chosen better) under this principle alone
    (its orders averaged), where *chosen* is the response the pair's label chose; below 0.5, the
    principle mostly disagreed with the label. ``agreement`` and ``position_bias``: shares of the
    pairs with both orders judged."""
    acc: dict[str, dict[str, Any]] = {}
    for row in rows:
        a_won = chose_a(row)
        for pid, sides in judgement_sides(row).items():
            p = acc.setdefault(
                pid, {"pairs": 0, "soft": 0.0, "scored": 0, "checked": 0, "agree": 0, "flips": 0}
            )
            p["pairs"] += 1
            if not sides:
                continue
            prob_a = sum(sides.values()) / len(sides)
            p["soft"] += prob_a if a_won else 1.0 - prob_a
            p["scored"] += 1
            if len(sides) == 2:
                product = (sides["ab"] - 0.5) * (sides["ba"] - 0.5)
                p["checked"] += 1
                p["agree"] += product > 0
                p["flips"] += product < 0
    out = []
    for pid, p in acc.items():
        checked = p["checked"]
        out.append(
            {
                "principle_id": pid,
                "pairs": p["pairs"],
                "scored": p["scored"],
                "mean_soft_label": p["soft"] / p["scored"] if p["scored"] else None,
                "both_orders": checked,
                "agree": p["agree"],
                "agreement": p["agree"] / checked if checked else None,
                "position_bias": p["flips"] / checked if checked else None,
                "flips": p["flips"],
            }
        )
    return sorted(out, key=lambda x: (-x["pairs"], x["principle_id"]))


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "n/a"


SL_CAI_HEADER = (
    "principle", "rounds", "rows", "revision changed the text", "mean edit distance (words)",
    "clean-up flags",
)  # fmt: skip
PREFS_HEADER = (
    "principle", "pairs judged", "mean P(chosen better)", "both orders agree",
    "position flips (bias)",
)  # fmt: skip


def table_rows(kind: str, stats: list[dict[str, Any]]) -> list[list[str]]:
    """The per-principle table of ``sl_cai_principles`` or ``prefs_principles`` as cells
    (columns: ``SL_CAI_HEADER`` / ``PREFS_HEADER``)."""
    if kind == "sl_cai":
        return [
            [
                s["principle_id"],
                str(s["rounds"]),
                str(s["rows"]),
                _share(s["changed"], s["rounds"]),
                _num(s["mean_edit_words"], 1),
                ", ".join(f"{k} {n}" for k, n in s["flags"].items()) or "none",
            ]
            for s in stats
        ]
    return [
        [
            s["principle_id"],
            str(s["pairs"]) + (f" ({s['pairs'] - s['scored']} without a probability)"
                               if s["scored"] < s["pairs"] else ""),
            _num(s["mean_soft_label"]),
            _share(s["agree"], s["both_orders"]),
            _share(s["flips"], s["both_orders"]),
        ]
        for s in stats
    ]  # fmt: skip


def markdown_table(kind: str, stats: list[dict[str, Any]]) -> list[str]:
    """The per-principle table as Markdown lines (principle ids in backticks)."""
    header = SL_CAI_HEADER if kind == "sl_cai" else PREFS_HEADER
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    if kind == "prefs":
        lines[1] = "|---|" + "---:|" * (len(header) - 1)
    for cells in table_rows(kind, stats):
        cells = [f"`{cells[0]}`", *(c.replace("|", "\\|") for c in cells[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
