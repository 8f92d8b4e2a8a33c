"""The page and plots of ``rlaif compare``: one self-contained HTML file and its PNGs.

The page is read by someone deciding whether a constitution swap did what they meant, so it puts
the numbers first (a summary table of A, B and the difference), then the per-principle tables of
each run next to each other (principle ids belong to a constitution; a difference per principle
only where an id is in both runs), then the prompts that changed most, A beside B, with the words
one final revision has and the other lacks marked. Plain HTML and CSS, no scripts, every text
escaped, the plots embedded as data URIs (and written beside the page as PNG files too), so the
file opens anywhere, offline, and a model's output cannot inject markup into it.
"""

from __future__ import annotations

import difflib
import html
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.compare import KIND_NAMES, largest_changes
from rlaif.data import principles as pr
from rlaif.plots import paired_scatter, side_by_side_bars

e = html.escape

CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left;vertical-align:top;font-size:14px}th{background:#f3f3f3}"
    ".pair{display:grid;grid-template-columns:1fr 1fr;gap:1.2em}.pair>div{min-width:0}"
    ".text{white-space:pre-wrap;font-size:13px;background:#fafafa;border:1px solid #e5e5e5;"
    "padding:6px;margin:.3em 0}ins{background:#d4f7d4;text-decoration:none}"
    "del{background:#fbd3d3;text-decoration:none}.muted{color:#666;font-size:13px}"
    ".plots img{max-width:100%;border:1px solid #eee;margin:.6em 0}"
    ".item{border-top:2px solid #ddd;margin-top:1.5em;padding-top:.5em}.flip{color:#b22}"
    "code{background:#f3f3f3;padding:0 3px}"
)


def write_plots(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """The PNGs the page shows, by key; nothing for a kind with no shared rows."""
    plots: dict[str, Path] = {}
    names = _run_names(result)
    sl = result.get("sl_cai")
    if sl and sl["items"]:
        items = sl["items"]
        plots["sl_cai_edits"] = paired_scatter(
            [(x["a"]["edit_words"], x["b"]["edit_words"]) for x in items],
            out / "sl_cai_edits.png",
            "Words changed from first answer to final revision, per prompt",
            (f"A ({names['a']})", f"B ({names['b']})"),
            [x["change_differs"] for x in items],
            "revised in one run only",
            other_label="revised in both or in neither",
        )
        plots["sl_cai_principles"] = side_by_side_bars(
            {f"{k.upper()}: {names[k]}": {s["principle_id"]: s["changed_share"]
                                          for s in sl["principles"][k]} for k in ("a", "b")},
            out / "sl_cai_principles.png",
            "Share of rounds whose revision changed the text, per principle",
            "share of rounds",
        )  # fmt: skip
    prefs = result.get("prefs")
    if prefs and prefs["items"]:
        items = [x for x in prefs["items"] if x["same_responses"]] or prefs["items"]
        plots["prefs_labels"] = paired_scatter(
            [(x["a"]["prob_a"], x["b"]["prob_a"]) for x in items],
            out / "prefs_labels.png",
            "P(response_a better) per pair",
            (f"A ({names['a']})", f"B ({names['b']})"),
            [x["flipped"] for x in items],
            "label flipped",
            threshold=0.5,
            other_label="same label",
        )
        plots["prefs_principles"] = side_by_side_bars(
            {f"{k.upper()}: {names[k]}": {s["principle_id"]: s["position_bias"] or 0.0
                                          for s in prefs["principles"][k]} for k in ("a", "b")},
            out / "prefs_principles.png",
            "Position flips (both orders picked the same position), per principle",
            "share of pairs asked in both orders",
        )  # fmt: skip
    return plots


def _run_names(result: dict[str, Any]) -> dict[str, str]:
    """Each run's constitution name (or its folder name), for labels."""
    out = {}
    for side in ("a", "b"):
        run = result["runs"][side]
        const = next((v["constitution"] for k, v in run.items() if k != "folder"
                      and v.get("constitution")), None)  # fmt: skip
        out[side] = const or Path(run["folder"]).name
    return out


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _d(a: float | None, b: float | None, digits: int = 3) -> str:
    return "n/a" if a is None or b is None else f"{b - a:+.{digits}f}"


def _text(label: str, body: str) -> str:
    return f"<p><b>{e(label)}</b></p><div class='text'>{e(body)}</div>"


def _words(n: int) -> str:
    return f"{n} word" if n == 1 else f"{n} words"


def _word_diff(a: str, b: str) -> tuple[str, str]:
    """Both texts escaped, with the words only A has in <del> and only B has in <ins>."""
    wa, wb = a.split(), b.split()
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        ta, tb = e(" ".join(wa[i1:i2])), e(" ".join(wb[j1:j2]))
        if op == "equal":
            out_a.append(ta)
            out_b.append(tb)
            continue
        if ta:
            out_a.append(f"<del>{ta}</del>")
        if tb:
            out_b.append(f"<ins>{tb}</ins>")
    return " ".join(out_a), " ".join(out_b)


def _summary_sl_cai(s: dict[str, Any]) -> str:
    n = s["shared"]
    rows = [
        ["revision changed the first answer", f"{s['a']['changed']}/{n}",
         f"{s['b']['changed']}/{n}", f"{s['b']['changed'] - s['a']['changed']:+d}"],
        ["mean edit distance, first answer to final revision (words)",
         _f(s["a"]["mean_edit_words"], 1), _f(s["b"]["mean_edit_words"], 1),
         _d(s["a"]["mean_edit_words"], s["b"]["mean_edit_words"], 1)],
        ["rows with clean-up flags", str(s["a"]["flagged"]), str(s["b"]["flagged"]),
         f"{s['b']['flagged'] - s['a']['flagged']:+d}"],
    ]  # fmt: skip
    both = [
        ["rows in both runs (only in A, only in B)", f"{n} ({s['only_a']}, {s['only_b']})"],
        ["same first answer in both", f"{s['same_first_answer']}/{n}"],
        ["revised in one run only", f"{s['change_differs']}/{n}"],
        ["final revisions identical", f"{s['identical_final_revision']}/{n}"],
        ["mean distance between the two final revisions (words)",
         _f(s["mean_revision_distance_words"], 1)],
    ]  # fmt: skip
    return _table(["", "A", "B", "B - A"], rows, "summary") + _table(
        ["across the two runs", ""], both, "summary"
    )


def _summary_prefs(s: dict[str, Any]) -> str:
    a, b = s["a"], s["b"]
    rate = f"{s['flipped']}/{s['same_responses']} ({_f(s['flip_rate'], 3)})"
    rows = [
        ["labeled pairs", str(a["pairs"]), str(b["pairs"]), f"{b['pairs'] - a['pairs']:+d}"],
        ["mean preference_prob", _f(a["mean_preference_prob"]), _f(b["mean_preference_prob"]),
         _d(a["mean_preference_prob"], b["mean_preference_prob"])],
        ["position bias (pairs whose preferred response flips with the order)",
         f"{a['position_flipped']}/{a['position_checked']}",
         f"{b['position_flipped']}/{b['position_checked']}",
         f"{b['position_flipped'] - a['position_flipped']:+d}"],
    ]  # fmt: skip
    both = [
        ["pairs in both runs (only in A, only in B)",
         f"{s['shared']} ({s['only_a']}, {s['only_b']})"],
        ["pairs with the same two responses in both", f"{s['same_responses']}/{s['shared']}"],
        ["label flipped (chosen response differs)", rate],
        ["mean soft-label shift, P(response_a better) B - A", _f(s["mean_shift"])],
        ["mean |shift|", _f(s["mean_abs_shift"])],
    ]  # fmt: skip
    return _table(["", "A", "B", "B - A"], rows, "summary") + _table(
        ["across the two runs", ""], both, "summary"
    )


def _principles(kind: str, part: dict[str, Any], names: dict[str, str]) -> str:
    header = pr.SL_CAI_HEADER if kind == "sl_cai" else pr.PREFS_HEADER
    cols = []
    for side in ("a", "b"):
        rows = pr.table_rows(kind, part["principles"][side])
        cols.append(f"<div><h4>{side.upper()}: {e(names[side])}</h4>"
                    f"{_table(header, rows, 'principles')}</div>")  # fmt: skip
    out = [f"<div class='pair'>{''.join(cols)}</div>"]
    shared = part["shared_principles"]
    if not shared:
        out.append("<p class='muted'>No principle id is in both runs (different constitutions): "
                   "compare the two tables above; the per-prompt changes below are by row id."
                   "</p>")  # fmt: skip
        return "".join(out)
    keys = [k for k in shared[0] if k != "principle_id"]
    header2 = ["principle"] + [f"{k} (A → B, B - A)" for k in keys]
    rows2 = [
        [s["principle_id"]]
        + [f"{_f(s[k]['a'])} → {_f(s[k]['b'])} ({_d(s[k]['a'], s[k]['b'])})" for k in keys]
        for s in shared
    ]
    out.append("<h4>Principles in both runs</h4>" + _table(header2, rows2, "shared"))
    return "".join(out)


def _sl_cai_items(result: dict[str, Any], top: int) -> str:
    texts = result["_texts"]["sl_cai"]
    out = []
    for x in largest_changes(result, "sl_cai", top):
        ra, rb = texts["a"][x["id"]], texts["b"][x["id"]]
        fa, fb = _word_diff(ra.get("revision", ""), rb.get("revision", ""))
        out.append(
            f"<div class='item'><h3>{e(x['id'])}: {e(x['prompt'])}</h3>"
            f"<p class='muted'>final revisions differ by {_words(x['revision_distance_words'])}; "
            f"revision changed the first answer: A {'yes' if x['a']['changed'] else 'no'}, "
            f"B {'yes' if x['b']['changed'] else 'no'}</p>"
        )
        if x["same_first_answer"]:
            out.append(_text("First answer (both runs)", ra.get("response", "")))
        cols = []
        for side, row, final in (("a", ra, fa), ("b", rb, fb)):
            s = x[side]
            first = "" if x["same_first_answer"] else _text("First answer", row.get("response", ""))
            cols.append(
                f"<div><h4>{side.upper()}</h4>"
                f"<p class='muted'>principles {e(', '.join(s['principles']))}; "
                f"{_words(s['edit_words'])} edited; flags {e(', '.join(s['flags']) or 'none')}</p>"
                f"{first}<p><b>Final revision</b></p><div class='text'>{final}</div></div>"
            )  # fmt: skip
        out.append(f"<div class='pair'>{''.join(cols)}</div></div>")
    return "".join(out)


def _prefs_items(result: dict[str, Any], top: int) -> str:
    texts = result["_texts"]["prefs"]
    out = []
    for x in largest_changes(result, "prefs", top):
        ra, rb = texts["a"][x["id"]], texts["b"][x["id"]]
        flip = "<span class='flip'>label flipped</span>" if x["flipped"] else "same label"
        note = "" if x["same_responses"] else " (the runs judged different responses)"
        out.append(
            f"<div class='item'><h3>{e(x['id'])}: {e(x['prompt'])}</h3>"
            f"<p class='muted'>{flip}{e(note)}; P(response_a better) "
            f"{_f(x['a']['prob_a'])} → {_f(x['b']['prob_a'])} ({x['shift']:+.3f})</p>"
        )
        if x["same_responses"]:
            out.append("<p><b>The two responses (the same in both runs)</b></p>"
                       + _responses(ra))  # fmt: skip
        cols = []
        for side, row in (("a", ra), ("b", rb)):
            texts_html = "" if x["same_responses"] else _responses(row)
            cols.append(
                f"<div><h4>{side.upper()}: chose response_{x[side]['chosen']} "
                f"(P(chosen better) {x[side]['preference_prob']:.3f})</h4>"
                f"<p class='muted'>P(response_a better) per principle and order: "
                f"{e(_judged(row))}</p>{texts_html}</div>"
            )  # fmt: skip
        out.append(f"<div class='pair'>{''.join(cols)}</div></div>")
    return "".join(out)


def _responses(row: dict[str, Any]) -> str:
    return (
        "<div class='pair'>"
        f"<div>{_text('response_a', row.get('response_a', ''))}</div>"
        f"<div>{_text('response_b', row.get('response_b', ''))}</div></div>"
    )


def _judged(row: dict[str, Any]) -> str:
    """``harm: ab 0.80, ba 0.60; calm: no probability`` for a pair's judgements."""
    parts = [
        f"{pid}: " + (", ".join(f"{o} {p:.2f}" for o, p in sides.items()) or "no probability")
        for pid, sides in pr.judgement_sides(row).items()
    ]
    return "; ".join(parts) or "none"


HOW_TO_READ = (
    "Rows are matched by id. SL-CAI: edit distances are in words (Levenshtein over the word "
    "sequences); a revision 'changed' the text when it differs from what it revised. "
    "Preferences: a label flipped when the two runs chose different responses of the same pair; "
    "the shift is P(response_a better) in B minus in A. Per-principle tables are per run, "
    "because principle ids belong to a constitution. In the side-by-side texts, words only A's "
    "final revision has are red, words only B's has are green."
)


def render_html(result: dict[str, Any], images: dict[str, str], top: int = 5) -> str:
    names = _run_names(result)
    runs = result["runs"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>rlaif compare: {e(names['a'])} vs {e(names['b'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>rlaif compare: A {e(names['a'])} vs B {e(names['b'])}</h1>",
        f"<p class='muted'>rlaif {e(__version__)}</p>",
        _runs_table(runs),
        f"<p>{e(HOW_TO_READ)}</p>",
    ]
    for kind in ("sl_cai", "prefs"):
        part = result.get(kind)
        if part is None:
            continue
        summary = _summary_sl_cai if kind == "sl_cai" else _summary_prefs
        img = next((k for k in images if k.startswith(kind) and "principles" not in k), None)
        plot = f"<img alt='{e(img)}' src='{images[img]}'>" if img else ""
        parts.append(
            f"<h2 id='{kind}'>{e(KIND_NAMES[kind])}</h2><div class='pair'>"
            f"<div>{summary(part['summary'])}</div><div class='plots'>{plot}</div></div>"
        )
        bars = images.get(f"{kind}_principles")
        parts.append(f"<h3>Per principle</h3>{_principles(kind, part, names)}")
        if bars:
            parts.append(f"<div class='plots'><img alt='{kind}_principles' src='{bars}'></div>")
        what = "prompts" if kind == "sl_cai" else "pairs"
        parts.append(f"<h3>The {what} that changed most</h3>")
        items = _sl_cai_items(result, top) if kind == "sl_cai" else _prefs_items(result, top)
        parts.append(items or "<p class='muted'>No rows in both runs.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _runs_table(runs: dict[str, Any]) -> str:
    rows = []
    for side in ("a", "b"):
        run = runs[side]
        for kind, info in run.items():
            if kind == "folder":
                continue
            other = runs["b" if side == "a" else "a"].get(kind, {}).get("templates", {})
            changed = [t for t, h in info["templates"].items() if other.get(t) not in (None, h)]
            rows.append([
                side.upper(), KIND_NAMES[kind], info["file"], str(info["rows"]),
                f"{info['constitution']} ({(info['constitution_sha256'] or '')[:12]})",
                ", ".join(changed) or "same as the other run",
            ])  # fmt: skip
    header = ["run", "dataset", "file", "rows", "constitution (sha256)", "templates that differ"]
    return _table(header, rows, "runs")
