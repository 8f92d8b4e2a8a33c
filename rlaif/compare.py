"""``rlaif compare``: what a swap of constitution (or of templates) changed in the data.

Two output folders made from the same prompts, under two constitutions or two template sets,
hold rows with the same ids: an SL-CAI row per prompt id, a preference row per ``<prompt>/<i>-<j>``
pair. Rows are matched by id and never by position, so a run that failed or skipped some rows
still lines up. What is compared:

- **Per principle, per run.** Principle ids belong to a constitution, so the tables of
  ``rlaif.data.principles`` (the same numbers as the dataset cards) are shown for each run, and
  a difference per principle only where an id is in both runs (a template swap).
- **Per prompt (SL-CAI).** Whether the revisions changed the first answer in each run, the word
  edit distance from first answer to final revision, the flags, and the word distance between
  the two final revisions, which are the SFT targets that differ: the prompts where it is
  largest are shown side by side.
- **Per pair (preferences).** Whether the label flipped (the chosen response differs) and how far
  the soft label moved (P(response_a better) in B minus in A). A flip only means something when
  both runs judged the same two responses; pairs whose responses differ are counted apart.

Everything lands in one folder: ``compare.json`` (the numbers), ``compare.html`` (self-contained:
plots embedded, text escaped, no scripts), the PNG plots beside it, and a short printed summary.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.data import principles as pr
from rlaif.errors import CompareError

# where each dataset sits: directly in the folder (`rlaif generate --out DIR`) or in the stage
# folder of `rlaif run`
DATASETS = {"sl_cai": ("sl_cai.jsonl", "sl_cai"), "prefs": ("preferences.jsonl", "prefs")}
KIND_NAMES = {"sl_cai": "SL-CAI", "prefs": "preferences"}
# the columns each comparison reads; a file without them is not that dataset
REQUIRED = {
    "sl_cai": ("id", "prompt", "response", "rounds", "revision"),
    "prefs": ("id", "prompt", "prob_a", "preference_prob", "judgements"),
}


@dataclass
class Run:
    label: str  # "A" or "B"
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The folder and, from the first row's provenance, the constitution and templates."""
        out: dict[str, Any] = {"folder": str(self.folder)}
        for kind, rows in self.rows.items():
            prov = rows[0].get("provenance", {}) if rows else {}
            const = prov.get("constitution") or {}
            out[kind] = {
                "file": str(self.files[kind]),
                "rows": len(rows),
                "constitution": const.get("name"),
                "constitution_sha256": const.get("sha256"),
                "templates": prov.get("templates", {}),
            }
        return out


def _read_jsonl(path: Path, kind: str) -> list[dict[str, Any]]:
    """The rows, each with its full provenance (``data.provenance``)."""
    from rlaif.data.provenance import expand_rows

    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CompareError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in REQUIRED[kind] if k not in row] if isinstance(row, dict) else ["id"]
        if missing:
            raise CompareError(
                f"{path}:{n}: not an rlaif {KIND_NAMES[kind]} row (no {', '.join(missing)})"
            )
        rows.append(row)
    return expand_rows(rows, path)


def find_dataset(folder: Path, kind: str) -> Path | None:
    name, stage = DATASETS[kind]
    return next((p for p in (folder / name, folder / stage / name) if p.is_file()), None)


def load_run(folder: Path, label: str) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"{folder}: no such folder (run {label})")
    run = Run(label, folder)
    for kind in DATASETS:
        path = find_dataset(folder, kind)
        if path is not None:
            run.files[kind] = path
            run.rows[kind] = _read_jsonl(path, kind)
    if not run.files:
        raise CompareError(
            f"{folder}: no rlaif dataset here (run {label}): expected sl_cai.jsonl or "
            "preferences.jsonl, in the folder or in its sl_cai/ and prefs/ stage folders "
            "(as `rlaif generate` and `rlaif run` write them)"
        )
    return run


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


Matched = list[tuple[str, dict[str, Any], dict[str, Any]]]


def _matched(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[Matched, int, int]:
    """The rows of each id in both (id, A's row, B's row; in A's order), and how many ids are
    only in A, only in B."""
    by_b = {str(r["id"]): r for r in b}
    shared = [(str(r["id"]), r, by_b[str(r["id"])]) for r in a if str(r["id"]) in by_b]
    return shared, len(a) - len(shared), len(by_b) - len(shared)


def _sl_cai_side(row: dict[str, Any]) -> dict[str, Any]:
    rounds = pr.sl_cai_rounds(row)
    return {
        "principles": [r["principle_id"] for r in rounds],
        "changed": row.get("revision", "").strip() != row.get("response", "").strip(),
        "rounds_changed": sum(r["changed"] for r in rounds),
        "edit_words": pr.edit_distance(row.get("response", ""), row.get("revision", "")),
        "flags": list(row.get("flags", [])),
    }


def compare_sl_cai(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    shared, only_a, only_b = _matched(a, b)
    items = []
    for i, ra, rb in shared:
        sa, sb = _sl_cai_side(ra), _sl_cai_side(rb)
        items.append(
            {
                "id": i,
                "prompt": pr.prompt_text(ra.get("prompt")),
                "same_first_answer": ra.get("response", "").strip()
                == rb.get("response", "").strip(),
                "a": sa,
                "b": sb,
                "change_differs": sa["changed"] != sb["changed"],
                "revision_distance_words": pr.edit_distance(
                    ra.get("revision", ""), rb.get("revision", "")
                ),
            }
        )
    summary = {
        "shared": len(shared),
        "only_a": only_a,
        "only_b": only_b,
        "same_first_answer": sum(x["same_first_answer"] for x in items),
        "identical_final_revision": sum(x["revision_distance_words"] == 0 for x in items),
        "change_differs": sum(x["change_differs"] for x in items),
        "mean_revision_distance_words": _mean([x["revision_distance_words"] for x in items]),
    }
    for side in ("a", "b"):
        summary[side] = {
            "changed": sum(x[side]["changed"] for x in items),
            "mean_edit_words": _mean([x[side]["edit_words"] for x in items]),
            "flagged": sum(bool(x[side]["flags"]) for x in items),
        }
    return {
        "summary": summary,
        "principles": {"a": pr.sl_cai_principles(a), "b": pr.sl_cai_principles(b)},
        "items": items,
    }


def compare_prefs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    shared, only_a, only_b = _matched(a, b)
    items = []
    for i, ra, rb in shared:
        same = (ra.get("response_a"), ra.get("response_b")) == (
            rb.get("response_a"),
            rb.get("response_b"),
        )
        items.append(
            {
                "id": i,
                "prompt": pr.prompt_text(ra.get("prompt")),
                "same_responses": same,
                "a": _prefs_side(ra),
                "b": _prefs_side(rb),
                "flipped": pr.chose_a(ra) != pr.chose_a(rb),
                "shift": rb["prob_a"] - ra["prob_a"],
            }
        )
    same = [x for x in items if x["same_responses"]]
    summary = {
        "shared": len(shared),
        "only_a": only_a,
        "only_b": only_b,
        "same_responses": len(same),
        "flipped": sum(x["flipped"] for x in same),
        "flip_rate": _mean([float(x["flipped"]) for x in same]),
        "mean_shift": _mean([x["shift"] for x in same]),
        "mean_abs_shift": _mean([abs(x["shift"]) for x in same]),
    }
    for side, rows in (("a", a), ("b", b)):
        checked = [r for r in rows if r.get("position_consistent") is not None]
        summary[side] = {
            "pairs": len(rows),
            "mean_preference_prob": _mean([r["preference_prob"] for r in rows]),
            "position_checked": len(checked),
            "position_flipped": sum(not r["position_consistent"] for r in checked),
        }
    return {
        "summary": summary,
        "principles": {"a": pr.prefs_principles(a), "b": pr.prefs_principles(b)},
        "items": items,
    }


def _prefs_side(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "prob_a": row["prob_a"],
        "chosen": "a" if pr.chose_a(row) else "b",
        "preference_prob": row["preference_prob"],
        "principles": list(pr.judgement_sides(row)),
        "position_consistent": row.get("position_consistent"),
    }


def shared_principles(kind: str, stats: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per principle id found in both runs (a template swap): its numbers in A, in B, and B - A."""
    keys = ("changed_share", "mean_edit_words") if kind == "sl_cai" else (
        "mean_soft_label", "agreement", "position_bias")  # fmt: skip
    in_b = {s["principle_id"]: s for s in stats["b"]}
    out = []
    for sa in stats["a"]:
        sb = in_b.get(sa["principle_id"])
        if sb is None:
            continue
        entry: dict[str, Any] = {"principle_id": sa["principle_id"]}
        for k in keys:
            va, vb = sa.get(k), sb.get(k)
            entry[k] = {"a": va, "b": vb, "diff": None if va is None or vb is None else vb - va}
        out.append(entry)
    return out


def compare(folder_a: Path, folder_b: Path) -> dict[str, Any]:
    """The numbers of the comparison (what ``compare.json`` holds, plus the texts the page
    shows, which ``write`` keeps out of the JSON)."""
    run_a, run_b = load_run(folder_a, "A"), load_run(folder_b, "B")
    kinds = [k for k in DATASETS if k in run_a.rows and k in run_b.rows]
    if not kinds:
        have = {r.label: ", ".join(DATASETS[k][0] for k in r.rows) for r in (run_a, run_b)}
        raise CompareError(
            f"no dataset in common: {folder_a} holds {have['A']}, {folder_b} holds {have['B']}"
        )
    result: dict[str, Any] = {
        "rlaif": __version__,
        "runs": {"a": run_a.describe(), "b": run_b.describe()},
        "edit_distance_unit": "words",
    }
    texts: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        rows_a, rows_b = run_a.rows[kind], run_b.rows[kind]
        part = (compare_sl_cai if kind == "sl_cai" else compare_prefs)(rows_a, rows_b)
        part["shared_principles"] = shared_principles(kind, part["principles"])
        result[kind] = part
        texts[kind] = {
            "a": {str(r["id"]): r for r in rows_a},
            "b": {str(r["id"]): r for r in rows_b},
        }
    if not any(result[k]["summary"]["shared"] for k in kinds):
        detail = "; ".join(
            f"{KIND_NAMES[k]}: A has {len(run_a.rows[k])} rows (e.g. "
            f"{_first_id(run_a.rows[k])}), B has {len(run_b.rows[k])} (e.g. "
            f"{_first_id(run_b.rows[k])})"
            for k in kinds
        )
        raise CompareError(
            f"{folder_a} and {folder_b} share no row id ({detail}): compare two runs over the "
            "same prompts (ids come from the prompt file, `--id-field` or the line number)"
        )
    result["_texts"] = texts
    return result


def _first_id(rows: list[dict[str, Any]]) -> str:
    return repr(str(rows[0]["id"])) if rows else "none"


def largest_changes(result: dict[str, Any], kind: str, top: int) -> list[dict[str, Any]]:
    """The prompts (SL-CAI) or pairs (preferences) that changed most, largest first."""
    items = result[kind]["items"]
    if kind == "sl_cai":
        ranked = sorted(
            items,
            key=lambda x: (-x["revision_distance_words"], -x["change_differs"], x["id"]),
        )
    else:
        ranked = sorted(
            items, key=lambda x: (-x["same_responses"], -x["flipped"], -abs(x["shift"]), x["id"])
        )
    return ranked[:top]


def write(result: dict[str, Any], out: Path, top: int = 5) -> dict[str, Path]:
    """``compare.json``, the PNG plots and ``compare.html`` in ``out``."""
    from rlaif.compare_html import render_html, write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = {"json": out / "compare.json"}
    paths["json"].write_text(json.dumps(numbers, indent=1, ensure_ascii=False) + "\n")
    plots = write_plots(result, out)
    paths.update(plots)
    page = render_html(result, {k: _data_uri(p) for k, p in plots.items()}, top)
    paths["html"] = out / "compare.html"
    paths["html"].write_text(page, encoding="utf-8")
    return paths


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The few lines ``rlaif compare`` prints."""
    runs = result["runs"]
    lines = []
    for kind in DATASETS:
        if kind not in result:
            continue
        s = result[kind]["summary"]
        ca = runs["a"][kind]["constitution"]
        cb = runs["b"][kind]["constitution"]
        unit = "prompts" if kind == "sl_cai" else "pairs"
        head = f"{KIND_NAMES[kind]}: {s['shared']} {unit} in both runs (A `{ca}`, B `{cb}`"
        head += f"; only in A {s['only_a']}, only in B {s['only_b']})"
        lines.append(head)
        if kind == "sl_cai":
            n = s["shared"]
            lines.append(
                f"  revision changed the first answer: A {s['a']['changed']}/{n}, "
                f"B {s['b']['changed']}/{n}; mean edit A {_num(s['a']['mean_edit_words'])} words, "
                f"B {_num(s['b']['mean_edit_words'])}; flagged A {s['a']['flagged']}, "
                f"B {s['b']['flagged']}"
            )
            lines.append(
                f"  final revisions differ by {_num(s['mean_revision_distance_words'])} words "
                f"on average; identical in {s['identical_final_revision']}/{n}"
            )
        else:
            lines.append(
                f"  label flipped: {s['flipped']}/{s['same_responses']} pairs with the same "
                f"responses ({_pct(s['flip_rate'])}); mean soft-label shift "
                f"{_num(s['mean_shift'], 3)} (|shift| {_num(s['mean_abs_shift'], 3)}); "
                f"position bias A {s['a']['position_flipped']}/{s['a']['position_checked']}, "
                f"B {s['b']['position_flipped']}/{s['b']['position_checked']}"
            )
    return lines
