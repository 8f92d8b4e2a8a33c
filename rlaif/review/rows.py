"""The rows of an output folder as the review page sees them: one ``Item`` per row, filters, a
reproducible sample, and the row page's details.

Every dataset kind becomes the same small summary (prompt, principles, flags, soft label,
position-bias flip, failed), so one list and one set of filters serve them all; the details of a
row keep its own shape. Two rules shape what the page is sent:

- **The AI's label is not sent before the person answers.** For a pair, which response the AI
  chose (``prob_a``, the probability of each order, the chosen/rejected columns) stays on the
  server until this person has labelled the row; the list shows only how *sure* the labeler was
  (``preference_prob``, which does not say which side it picked). A label the page never had
  cannot anchor the person, whatever the browser shows.
- **Rows are addressed by (dataset, id)**, never by position: ids are stable across reruns, and a
  run folder holds several datasets whose ids overlap (``prefs`` and ``prefs_2``).

The word diff (answer vs revision) is difflib over words with their whitespace kept, so the page
can show the revision's text with deletions and insertions marked, not a list of tokens.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field
from typing import Any

from rlaif.data import principles as pr
from rlaif.data.outputs import DatasetFile, read_jsonl

LABELABLE = {"sl_cai", "pair"}
PAIR_QUESTIONS = ("pair",)
SL_CAI_QUESTIONS = ("revision_better", "critique_real")
ANSWERS = {
    "pair": ("a", "b", "tie", "skip"),  # A better / B better / tie / skip
    "revision_better": ("a", "b", "tie", "skip"),  # A = the first answer, B = the revision
    "critique_real": ("yes", "no", "skip"),
}


@dataclass
class Item:
    dataset: str
    kind: str  # sl_cai | pair | red_team | policy_eval
    id: str
    row: dict[str, Any]
    principles: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    soft: float | None = None  # P(chosen better): how sure the labeler was, not which it chose
    flip: bool = False  # the two orders picked different responses under some principle
    failed: str | None = None  # why the row has no output (failed or unlabeled)
    search: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset, self.id

    @property
    def labelable(self) -> bool:
        if self.kind == "pair":  # unlabeled by the AI too, unless there is nothing to choose
            a, b = self.row.get("response_a"), self.row.get("response_b")
            return isinstance(a, str) and isinstance(b, str) and a.strip() != b.strip()
        return self.kind == "sl_cai" and not self.failed

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "id": self.id,
            "prompt": _clip(pr.prompt_text(self.row.get("prompt", "")), 160),
            "principles": self.principles,
            "flags": self.flags,
            "soft": self.soft,
            "flip": self.flip,
            "failed": self.failed,
            "labelable": self.labelable,
        }


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    return []


def _flips(row: dict[str, Any]) -> bool:
    for sides in pr.judgement_sides(row).values():
        if len(sides) == 2 and (sides["ab"] - 0.5) * (sides["ba"] - 0.5) < 0:
            return True
    return False


def _item(ds: DatasetFile, row: dict[str, Any], side: str | None, n: int) -> Item:
    kind = "pair" if ds.kind == "prefs" else ds.kind
    rid = str(row.get("id", f"{row.get('set', 'row')}-{row.get('index', n)}"))
    item = Item(ds.name, kind, rid, row, flags=[str(f) for f in row.get("flags") or []])
    if side is not None:
        reason = (row.get(side) or {}).get("reason") if isinstance(row.get(side), dict) else None
        item.failed = f"{side}: {reason}" if reason else side
    words = _texts(row.get("prompt"))
    if kind == "sl_cai":
        item.principles = list(dict.fromkeys(r["principle_id"] for r in row.get("rounds", [])))
        for r in row.get("rounds", []):
            item.flags += [str(f) for f in r.get("flags", []) if str(f) not in item.flags]
            words += [r.get("critique", ""), r.get("revision", "")]
        words.append(row.get("response", ""))
    elif kind == "pair":
        item.principles = list(dict.fromkeys(j["principle_id"] for j in row.get("judgements", [])))
        if row.get("preference_prob") is not None and side is None:
            item.soft = float(row["preference_prob"])
        item.flip = _flips(row)
        # one name per flag across kinds, so "truncated" or "refused" filters pairs too: the job
        # flags a provider stop per response (response_a_refused) and a cut answer not at all
        for f in list(item.flags):
            if (bare := re.sub(r"^response_[ab]_", "", f)) not in item.flags:
                item.flags.append(bare)
        if "length" in (row.get("finish_reasons") or []) and "truncated" not in item.flags:
            item.flags.append("truncated")
        words += [row.get("response_a", ""), row.get("response_b", "")]
    elif kind == "policy_eval":
        words += _texts({k: v.get("text", "") for k, v in row.get("answers", {}).items()})
    elif kind == "red_team":
        words.append(str(row.get("nearest_seed") or ""))
    item.search = " ".join(words).lower()
    return item


def load_items(datasets: list[DatasetFile]) -> list[Item]:
    """Every row of the datasets, each dataset's rows in file order, then its side files'."""
    items: list[Item] = []
    for ds in datasets:
        for n, row in enumerate(read_jsonl(ds.path), 1):
            items.append(_item(ds, row, None, n))
        for side, path in ds.side_files:
            for n, row in enumerate(read_jsonl(path), 1):
                items.append(_item(ds, row, side, n))
    return items


def sample(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """``n`` labelable rows drawn with ``seed`` (the same folder, n and seed give the same rows),
    in the list's order; every row when ``n`` is None."""
    if n is None:
        return items
    pool = [i for i, it in enumerate(items) if it.labelable]
    picked = set(random.Random(seed).sample(pool, min(n, len(pool))))
    return [it for i, it in enumerate(items) if i in picked]


@dataclass
class Filters:
    dataset: str | None = None
    kind: str | None = None
    principle: str | None = None
    flags: list[str] = field(default_factory=list)  # every one of them
    soft_min: float | None = None
    soft_max: float | None = None
    flips: bool = False
    failed: bool = False
    q: str = ""

    def match(self, it: Item) -> bool:
        if self.dataset and it.dataset != self.dataset:
            return False
        if self.kind and it.kind != self.kind:
            return False
        if self.principle and self.principle not in it.principles:
            return False
        if any(f not in it.flags for f in self.flags):
            return False
        if self.soft_min is not None or self.soft_max is not None:
            if it.soft is None:
                return False
            if self.soft_min is not None and it.soft < self.soft_min:
                return False
            if self.soft_max is not None and it.soft > self.soft_max:
                return False
        if self.flips and not it.flip:
            return False
        if self.failed and not it.failed:
            return False
        return all(w in it.search for w in self.q.lower().split())


_WORDS = re.compile(r"\s+|\S+\s*")  # leading whitespace, then each word with the space after it


def word_diff(before: str, after: str) -> list[list[str]]:
    """``[[op, text], ...]`` turning ``before`` into ``after``; op is ``=``, ``-`` or ``+``.

    Words are compared without their spacing. A rewrite shares short words ("you", "and") with
    the text it replaces; matched alone they cut one rewritten sentence into a dozen alternating
    pieces. So an unchanged run between two changes, each at least as long as it, counts as
    changed too (the rule of diff-match-patch's semantic clean-up), and each change is shown as
    the old text, then the new."""
    a, b = _WORDS.findall(before), _WORDS.findall(after)
    matcher = difflib.SequenceMatcher(
        None, [t.strip() for t in a], [t.strip() for t in b], autojunk=False
    )
    ops = matcher.get_opcodes()
    out: list[list[str]] = []
    gone, added = [], []
    for n, (op, i1, i2, j1, j2) in enumerate(ops):
        if op == "equal":
            nxt = ops[n + 1] if n + 1 < len(ops) else None
            after_len = max(nxt[2] - nxt[1], nxt[4] - nxt[3]) if nxt else 0
            swallow = i2 - i1 <= min(max(len(gone), len(added)), after_len)
        if op == "equal" and not swallow:
            if gone:
                out.append(["-", "".join(gone)])
            if added:
                out.append(["+", "".join(added)])
            gone, added = [], []
            out.append(["=", "".join(a[i1:i2])])
            continue
        gone += a[i1:i2]
        added += b[j1:j2]
    if gone:
        out.append(["-", "".join(gone)])
    if added:
        out.append(["+", "".join(added)])
    return out


def _turns(prompt: Any) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return [
            {"role": str(m.get("role", "user")), "content": " ".join(_texts([m]))}
            for m in prompt
            if isinstance(m, dict)
        ]
    return [{"role": "user", "content": str(prompt)}]


def questions(it: Item) -> list[str]:
    """What the page asks about a row; the first one's answer reveals the AI's label."""
    if not it.labelable:
        return []
    return list(PAIR_QUESTIONS if it.kind == "pair" else SL_CAI_QUESTIONS)


def ai_view(it: Item) -> dict[str, Any] | None:
    """What the AI said about a labelable row: revealed only after the person answered."""
    row = it.row
    if it.kind == "pair" and row.get("prob_a") is not None:
        per = []
        for pid, sides in pr.judgement_sides(row).items():
            per.append({"principle_id": pid, "ab": sides.get("ab"), "ba": sides.get("ba")})
        return {
            "label": "a" if pr.chose_a(row) else "b",
            "prob_a": row["prob_a"],
            "preference_prob": row.get("preference_prob"),
            "position_consistent": row.get("position_consistent"),
            "principles": per,
        }
    if it.kind == "sl_cai":
        changed = row.get("revision", "").strip() != row.get("response", "").strip()
        return {"label": "b" if changed else "tie", "changed": changed}
    return None


def details(it: Item, reveal: bool) -> dict[str, Any]:
    """The row page's content; the AI's label only when ``reveal``."""
    row = it.row
    out: dict[str, Any] = {**it.summary(), "turns": _turns(row.get("prompt", ""))}
    if it.failed:
        out["failure"] = row.get("failed") or row.get("unlabeled")
    if it.kind == "sl_cai":
        before, rounds = row.get("response", ""), []
        for r in row.get("rounds", []):
            rounds.append({**{k: r.get(k) for k in ("principle_id", "critique", "revision")},
                           "flags": r.get("flags", []),
                           "diff": word_diff(before, r.get("revision", ""))})  # fmt: skip
            before = r.get("revision", "")
        out |= {"response": row.get("response", ""), "revision": row.get("revision", ""),
                "rounds": rounds, "diff": word_diff(row.get("response", ""),
                                                    row.get("revision", ""))}  # fmt: skip
    elif it.kind == "pair":
        out |= {"response_a": row.get("response_a", ""), "response_b": row.get("response_b", ""),
                "errors": row.get("errors", [])}  # fmt: skip
    elif it.kind == "red_team":
        keep = ("source", "nearest_seed", "nearest_seed_similarity", "shown_seeds", "p_yes")
        out["fields"] = {k: row[k] for k in keep if k in row}
    elif it.kind == "policy_eval":
        out["answers"] = row.get("answers", {})
        out["set"] = row.get("set")
    if it.labelable:
        out["questions"] = questions(it)
    out["ai"] = ai_view(it) if reveal else None
    return out
