"""Human labels out of ``review.sqlite`` into the files the rest of rlaif reads.

- ``gold``: the ``pairs`` format of ``rlaif eval labeler --gold`` (``rlaif.eval.gold``): one row
  per labelled pair, ``prompt`` as chat messages, ``chosen``/``rejected`` as texts, the row's id.
  A gold row is *the* human answer for a pair, so where several people labelled it their A/B
  answers are counted and the majority wins; a pair whose people split evenly is left out (and
  counted), as are ties and skips: a gold pair needs a side.
- ``prefs``: ``prompt``/``chosen``/``rejected`` rows (TRL's conversational format, as the
  preference datasets are) with ``source: human:<name>``, one per person and pair, for a reward
  model or DPO ``mix`` entry (``rlaif.data.mix``). Each person's answer is kept: two people who
  disagree are two opposite pairs, as in any human preference set.

Both read the dataset rows through ``rlaif.data.outputs`` and never write next to them under a
dataset's name.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import ReviewError
from rlaif.review.rows import Item
from rlaif.review.storage import Label


@dataclass
class Exported:
    path: Path
    rows: int
    left_out: Counter[str]


def _pair_labels(
    items: dict[tuple[str, str], Item], labels: list[Label], labeler: str | None
) -> dict[tuple[str, str], list[Label]]:
    by_row: dict[tuple[str, str], list[Label]] = {}
    for lab in labels:
        if lab.question != "pair" or (labeler and lab.labeler != labeler):
            continue
        it = items.get((lab.dataset, lab.row_id))
        if it is not None and it.kind == "pair" and it.labelable:
            by_row.setdefault(it.key, []).append(lab)
    return by_row


def _messages(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
            for m in prompt if isinstance(m, dict)]  # fmt: skip


def _ids(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A row's id, or ``dataset/id`` when two datasets hold the same id."""
    counts = Counter(rid for _, rid in keys)
    return {(d, r): r if counts[r] == 1 else f"{d}/{r}" for d, r in keys}


def _check_target(path: Path, datasets: list[Path]) -> None:
    if path.resolve() in {p.resolve() for p in datasets}:
        raise ReviewError(f"{path}: that is a dataset file; export to another file")


def _labelled_pairs(
    path: str | Path,
    items: dict[tuple[str, str], Item],
    labels: list[Label],
    datasets: list[Path],
    labeler: str | None,
) -> tuple[Path, dict[tuple[str, str], list[Label]], dict[tuple[str, str], str]]:
    """The export's target (never a dataset file), each labelled pair's labels and its id."""
    path = Path(path)
    _check_target(path, datasets)
    by_row = _pair_labels(items, labels, labeler)
    return path, by_row, _ids(list(by_row))


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_gold(
    path: str | Path,
    items: dict[tuple[str, str], Item],
    labels: list[Label],
    datasets: list[Path],
    labeler: str | None = None,
) -> Exported:
    path, by_row, ids = _labelled_pairs(path, items, labels, datasets, labeler)
    rows, left_out = [], Counter[str]()
    for key, labs in by_row.items():
        votes = Counter(lab.answer for lab in labs if lab.answer in ("a", "b"))
        if not votes:
            left_out["tie or skip only"] += 1
            continue
        if votes["a"] == votes["b"]:
            left_out["people split evenly"] += 1
            continue
        row = items[key].row
        a_wins = votes["a"] > votes["b"]
        chosen, rejected = (
            (row["response_a"], row["response_b"])
            if a_wins
            else (row["response_b"], row["response_a"])
        )
        rows.append({"id": ids[key], "prompt": _messages(row["prompt"]), "chosen": chosen,
                     "rejected": rejected, "labelers": sorted({lab.labeler for lab in labs}),
                     "votes": dict(votes)})  # fmt: skip
    if not rows:
        raise ReviewError(_nothing(labeler, left_out))
    _write(path, rows)
    return Exported(path, len(rows), left_out)


def write_prefs(
    path: str | Path,
    items: dict[tuple[str, str], Item],
    labels: list[Label],
    datasets: list[Path],
    labeler: str | None = None,
) -> Exported:
    path, by_row, ids = _labelled_pairs(path, items, labels, datasets, labeler)
    rows, left_out = [], Counter[str]()
    for key, labs in by_row.items():
        row = items[key].row
        for lab in labs:
            if lab.answer not in ("a", "b"):
                left_out[lab.answer] += 1
                continue
            a, b = row["response_a"], row["response_b"]
            chosen, rejected = (a, b) if lab.answer == "a" else (b, a)
            rows.append({
                "id": ids[key], "prompt": _messages(row["prompt"]),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "source": f"human:{lab.labeler}", "labeled_at": lab.created_at,
                **({"note": lab.note} if lab.note else {}),
            })  # fmt: skip
    if not rows:
        raise ReviewError(_nothing(labeler, left_out))
    _write(path, rows)
    return Exported(path, len(rows), left_out)


def _nothing(labeler: str | None, left_out: Counter[str]) -> str:
    who = f" by {labeler}" if labeler else ""
    why = f" ({', '.join(f'{k}: {n}' for k, n in left_out.items())})" if left_out else ""
    return f"no pair labelled A or B{who} to export{why}"
