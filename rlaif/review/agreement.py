"""How often people agree with the AI's labels, and with each other, from the labels so far.

**Human-AI, pairs.** Each person's A/B answer on a pair is one trial: it agrees when it picks the
response the AI chose (``prob_a >= 0.5``). Ties and skips are counted but are no trial: a tie
says neither is better, which the AI's two-way label cannot express. Per principle, the trial
compares the answer with that principle's own verdict (its orders' P(A better) averaged); an
exact 0.5 picks no side and is left out. Several people labelling one pair are several trials:
the number is "how often a person agrees with the labeler", not a majority vote.

**Human-AI, SL-CAI.** The job claims each revision improves the answer; "is the revision better"
answered B (revision) agrees, A (the first answer) disagrees, on rows whose revision changed the
text (an unchanged revision claims nothing). "Did the critique name a real problem" is a share of
yes among yes/no. Per principle: a row counts under every principle of its rounds.

Every rate comes with its 95% Wilson interval and n (``rlaif.eval.stats``), because 12 labels
say much less than 300 and the page should show it.

**Between people.** For every two people who answered the same question on the same rows (skips
left out): raw agreement and Cohen's kappa, which discounts the agreement two people would reach
by chance given how often each picks each answer (two people who always say A agree 100% and
have kappa undefined: no variation to agree on).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from rlaif.data import principles as pr
from rlaif.eval.stats import wilson
from rlaif.review.rows import Item
from rlaif.review.storage import Label


def rate(k: float, n: int) -> dict[str, Any]:
    ci = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(ci) if ci else None}


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' answers on the same items; None when chance agreement is
    certain (both always gave one same answer) or there are no items."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    cats = set(a) | set(b)
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def _principle_label(sides: dict[str, float]) -> str | None:
    if not sides:
        return None
    p = sum(sides.values()) / len(sides)
    return None if p == 0.5 else ("a" if p > 0.5 else "b")


def _count(totals: dict[str, int], by: dict[str, list[int]], principles: Any, agreed: bool) -> None:
    """One counted answer: in the totals and under each of the row's principles."""
    totals["n"] += 1
    totals["k"] += agreed
    for pid in principles:
        by[pid][0] += agreed
        by[pid][1] += 1


def human_ai(items: dict[tuple[str, str], Item], labels: list[Label]) -> dict[str, Any]:
    """Agreement of the people's current labels with the AI's, overall and per principle."""
    pair = {"k": 0, "n": 0, "ties": 0, "skips": 0}
    pair_by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rev = {"k": 0, "n": 0, "ties": 0, "skips": 0, "unchanged": 0}
    rev_by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    crit = {"k": 0, "n": 0, "skips": 0}
    crit_by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for lab in labels:
        it = items.get((lab.dataset, lab.row_id))
        if it is None:
            continue
        if lab.question == "pair" and it.row.get("prob_a") is not None:
            if lab.answer in ("tie", "skip"):
                pair["ties" if lab.answer == "tie" else "skips"] += 1
                continue
            pair["n"] += 1
            pair["k"] += lab.answer == ("a" if pr.chose_a(it.row) else "b")
            for pid, sides in pr.judgement_sides(it.row).items():
                ai = _principle_label(sides)
                if ai is not None:
                    pair_by[pid][0] += lab.answer == ai
                    pair_by[pid][1] += 1
        elif lab.question == "revision_better" and it.kind == "sl_cai":
            changed = it.row.get("revision", "").strip() != it.row.get("response", "").strip()
            if lab.answer in ("tie", "skip"):
                rev["ties" if lab.answer == "tie" else "skips"] += 1
                continue
            if not changed:
                rev["unchanged"] += 1
                continue
            _count(rev, rev_by, it.principles, lab.answer == "b")
        elif lab.question == "critique_real" and it.kind == "sl_cai":
            if lab.answer == "skip":
                crit["skips"] += 1
                continue
            _count(crit, crit_by, it.principles, lab.answer == "yes")

    def table(by: dict[str, list[int]]) -> list[dict[str, Any]]:
        return [{"principle_id": p, **rate(k, n)} for p, (k, n) in sorted(by.items())]

    return {
        "pairs": {**rate(pair["k"], pair["n"]), "ties": pair["ties"], "skips": pair["skips"],
                  "by_principle": table(pair_by)},
        "revision_better": {**rate(rev["k"], rev["n"]), "ties": rev["ties"],
                            "skips": rev["skips"], "unchanged": rev["unchanged"],
                            "by_principle": table(rev_by)},
        "critique_real": {**rate(crit["k"], crit["n"]), "skips": crit["skips"],
                          "by_principle": table(crit_by)},
    }  # fmt: skip


def between_people(labels: list[Label]) -> list[dict[str, Any]]:
    """Raw agreement and Cohen's kappa for every two people and question with shared rows."""
    answers: dict[tuple[str, str], dict[tuple[str, str], str]] = defaultdict(dict)
    for lab in labels:
        if lab.answer != "skip":
            answers[(lab.question, lab.labeler)][(lab.dataset, lab.row_id)] = lab.answer
    out = []
    people = sorted({p for _, p in answers})
    questions = sorted({q for q, _ in answers})
    for q in questions:
        for p1, p2 in combinations(people, 2):
            a1, a2 = answers.get((q, p1), {}), answers.get((q, p2), {})
            shared = sorted(set(a1) & set(a2))
            if not shared:
                continue
            x, y = [a1[r] for r in shared], [a2[r] for r in shared]
            same = sum(u == v for u, v in zip(x, y, strict=True))
            out.append({"question": q, "labelers": [p1, p2], **rate(same, len(shared)),
                        "kappa": cohen_kappa(x, y)})  # fmt: skip
    return out


def summary(items: dict[tuple[str, str], Item], labels: list[Label]) -> dict[str, Any]:
    return {
        "human_ai": human_ai(items, labels),
        "between_people": between_people(labels),
        "labels": len(labels),
        "labelers": sorted({lab.labeler for lab in labels}),
    }
