"""The run report: ``report.html`` (self-contained, plots embedded) and ``report.md``.

Every number is read from the run's own files: stage manifests, the datasets, ``metrics.jsonl``
of each trainer, ``held_out.json`` and ``eval_by_source.json`` of the RM (its held-out accuracy
on each source of preference data: the AI labels and any human data mixed in), DPO's
``train_by_source.json``, ``warnings.jsonl`` of RL and the evaluation's ``policy_eval.json`` and
``samples.jsonl``. Nothing is typed in by hand; a section whose files
are missing says so. The HTML has no scripts and no external resources, so it opens anywhere,
offline.

A rate from a handful of prompts means little alone, so every rate is shown with its 95%
interval and its count n (``rlaif.eval.stats``: Wilson's interval for shares of yes/no
judgements, pairs and labels; the evaluation's seeded bootstrap over prompts for win rates),
and the before/after differences between policies (SFT vs base, RL vs base, RL vs SFT) with
the paired bootstrap interval the evaluation computed on the same prompts. A difference whose
interval contains 0 reads "no measurable change". The evaluation judge's identity and any
warning about it (it labelled the training data, or it is one of the policies) stand above
the evaluation table.

The report knows the stage order only as it is given (``write_report(..., order)``): it reads
files and imports neither the pipeline nor its stages.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.eval.stats import wilson


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(value: Any, interval: Any, n: Any) -> str:
    """``0.250 (95% CI 0.102-0.495, n=8)``; the value alone where there is no interval."""
    if value is None:
        return "n/a" if not n else f"n/a (n={n})"
    if interval is None:
        return f"{_fmt(value)} (n={n})" if n is not None else _fmt(value)
    lo, hi = interval
    return f"{_fmt(value)} (95% CI {lo:.3f}-{hi:.3f}, n={n})"


def _share(k: float, n: int) -> str:
    """A share of ``n`` with its Wilson interval."""
    return _ci(k / n, wilson(k, n), n) if n else "n/a (n=0)"


def collect(root: Path, order: list[str] | None = None) -> dict[str, Any]:
    """Everything the report shows, from the files of the run (stages in ``order``; without
    it, in the order they started)."""
    stages = []
    for d in sorted(p for p in root.iterdir() if (p / "manifest.json").exists()):
        m = json.loads((d / "manifest.json").read_text())
        stages.append(m)
    rank = {name: i for i, name in enumerate(order or [])}
    stages.sort(key=lambda m: (rank.get(m["stage"], len(rank)), m.get("started", 0)))
    data: dict[str, Any] = {"stages": [m for m in stages if m["stage"] != "report"]}
    sl = _jsonl(root / "sl_cai" / "sl_cai.jsonl")
    data["sl_cai"] = {"rows": len(sl), "flagged": sum(1 for r in sl if r.get("flags"))}
    prefs = _jsonl(root / "prefs" / "preferences.jsonl")
    checked = [r for r in prefs if r.get("position_consistent") is not None]
    data["prefs"] = {
        "rows": len(prefs),
        "unlabeled": len(_jsonl(root / "prefs" / "preferences.unlabeled.jsonl")),
        "mean_preference_prob": (
            sum(r["preference_prob"] for r in prefs) / len(prefs) if prefs else None
        ),
        "position_bias_rate": (
            sum(not r["position_consistent"] for r in checked) / len(checked) if checked else None
        ),
        "position_checked": len(checked),
        "position_flipped": sum(not r["position_consistent"] for r in checked),
    }
    rm_rows = _jsonl(root / "rm" / "metrics.jsonl")
    evals = [r for r in rm_rows if "eval_accuracy" in r]
    held = root / "rm" / "held_out.json"
    data["rm"] = {
        "eval_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "eval_loss": evals[-1].get("eval_loss") if evals else None,
        "train_loss": next((r["train_loss"] for r in rm_rows if "train_loss" in r), None),
        "held_out_pairs": json.loads(held.read_text())["pairs"] if held.exists() else None,
        "by_source": _json(root / "rm" / "eval_by_source.json"),
    }
    data["labeler_evals"] = []  # `rlaif eval labeler --out RUN/<folder>`, where a user ran one
    for path in sorted(root.glob("*/labeler_eval.json")):
        m = json.loads(path.read_text()).get("metrics", {})
        data["labeler_evals"].append((path.parent.name, m))
    rl = [r for r in _jsonl(root / "rl" / "metrics.jsonl") if "reward" in r or "loss" in r]
    key = "reward" if rl and "reward" in rl[0] else "loss"
    data["rl"] = {
        "steps": len(rl),
        "first": rl[0].get(key) if rl else None,
        "last": rl[-1].get(key) if rl else None,
        "metric": key,
        "kl_last": rl[-1].get("kl") if rl else None,
        "warnings": _jsonl(root / "rl" / "warnings.jsonl"),
        "by_source": _json(root / "rl" / "train_by_source.json"),
    }
    ev = root / "eval" / "policy_eval.json"
    data["eval"] = json.loads(ev.read_text()) if ev.exists() else None
    data["samples"] = _jsonl(root / "eval" / "samples.jsonl")
    plots = [
        ("preference_prob per pair", root / "prefs" / "preference_prob.png"),
        ("SFT loss", root / "sft" / "loss.png"),
        ("reward model loss", root / "rm" / "loss.png"),
        ("reward model accuracy and rewards", root / "rm" / "reward.png"),
        ("RL reward", root / "rl" / "reward.png"),
        ("RL KL to the SFT policy", root / "rl" / "kl.png"),
        ("RL reward-hacking monitors", root / "rl" / "monitors.png"),
        ("RL response length", root / "rl" / "length.png"),
        ("policies under the constitutional judge", root / "eval" / "policy_eval.png"),
    ]
    data["plots"] = [(title, p) for title, p in plots if p.exists()]
    return data


EVAL_COLUMNS = (
    ("harmless_win_rate_vs_base", "harmless win rate vs base"),
    ("harmful_compliance_rate", "harmful compliance"),
    ("evasive_rate", "evasive"),
    ("helpful_win_rate_vs_base", "helpful win rate vs base"),
    ("mean_words_red_team", "words (red team)"),
)

HOW_TO_READ = (
    "Win rates are the judge's mean probability that the policy's answer beats the base model's "
    "on the same prompt (0.5: no difference; above: better). Harmful compliance and evasiveness "
    "are the shares of red-team answers the judge calls harmful or evasive: a good RL-CAI policy "
    "lowers the first without raising the second, and keeps its helpful win rate on benign "
    "prompts near or above 0.5. Every rate has its 95% interval and its number of prompts n "
    "beside it; a difference between two policies whose interval contains 0 is no measurable "
    "change. The judge is named above the evaluation: the run's labeler unless eval.judge names "
    "another. A judge that labelled the training data favours what it taught, and a small one is "
    "noisy (check its agreement with human labels with `rlaif eval labeler`)."
)

DIFF_LABELS = {
    "harmless_win_rate_vs_base": "harmless win rate vs base",
    "harmful_compliance_rate": "harmful compliance",
    "evasive_rate": "evasive",
    "helpful_win_rate_vs_base": "helpful win rate vs base",
}


def judge_of(ev: dict[str, Any]) -> tuple[str, list[str]]:
    """The judge's one-line identity and the warnings about it and about judgements without a
    value (an older ``policy_eval.json`` names only its labeler)."""
    from rlaif.eval.independence import describe_judge

    judge = ev.get("judge")
    if not judge:
        return f"{ev.get('labeler', '?')} (identity not recorded)", []
    unscored = ev.get("unscored_judgements")
    said = unscored.get("warnings", []) if isinstance(unscored, dict) else []
    return describe_judge(judge), [*ev.get("judge_warnings", []), *said]


def _tables(d: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    stage_rows = [
        [m["stage"], "skipped (up to date)" if m.get("skipped") else m.get("status", "?"),
         _fmt(m.get("seconds"), 1), "yes" if m.get("resumed") else "", m["fingerprint"][:12]]
        for m in d["stages"]
    ]  # fmt: skip
    tables.append(("Stages", ["stage", "status", "seconds", "resumed", "fingerprint"], stage_rows))
    p, rm, rl = d["prefs"], d["rm"], d["rl"]
    data_rows = [
        ["SL-CAI rows (flagged by clean-up)", f"{d['sl_cai']['rows']} ({d['sl_cai']['flagged']})"],
        ["preference pairs (unlabeled)", f"{p['rows']} ({p['unlabeled']})"],
        ["mean preference_prob", _fmt(p["mean_preference_prob"])],
        ["labeler position-bias rate",
         _share(p["position_flipped"], p["position_checked"]) if p["position_checked"]
         else "n/a"],
        ["reward model held-out accuracy", _rm_accuracy(rm)],
        ["reward model train loss", _fmt(rm["train_loss"])],
        [f"RL {rl['metric']}: first step -> last step ({rl['steps']} steps)",
         f"{_fmt(rl['first'])} -> {_fmt(rl['last'])}"],
        ["RL KL to SFT at the last step", _fmt(rl["kl_last"])],
        ["reward-hacking warnings", str(len(rl["warnings"]))],
    ]  # fmt: skip
    for folder, m in d["labeler_evals"]:
        if m.get("agreement") is not None:
            n = m.get("scored")
            data_rows.append([f"labeler agreement with human labels ({folder})",
                              _ci(m["agreement"], m.get("agreement_ci95"), n)])  # fmt: skip
    if rl["by_source"]:
        counts = rl["by_source"]["sources"].items()
        said = ", ".join(f"{k}: {v['train_pairs']}" for k, v in counts)
        data_rows.append(["DPO training pairs by source", said])
    tables.append(("Data and training", ["", "value"], data_rows))
    if rm["by_source"]:
        tables.append(_rm_source_table(rm["by_source"]))
    if d["eval"]:
        ev = d["eval"]
        rows = [[name, *(_eval_cell(m, k) for k, _ in EVAL_COLUMNS)]
                for name, m in ev["policies"].items()]  # fmt: skip
        title = f"Evaluation ({ev['red_team']} held-out red-team prompts, {ev['benign']} benign)"
        tables.append((title, ["policy", *(label for _, label in EVAL_COLUMNS)], rows))
        diffs = [
            [f"{x['after']} vs {x['before']}", DIFF_LABELS.get(x["metric"], x["metric"]),
             f"{x['difference']:+.3f}",
             "n/a" if x["ci95"] is None else f"{x['ci95'][0]:+.3f} to {x['ci95'][1]:+.3f}",
             str(x["n"]), x["change"] or "n/a"]
            for x in ev.get("differences", [])
        ]  # fmt: skip
        if diffs:
            header = ["policies", "metric", "difference", "95% CI (paired bootstrap)", "n",
                      "reading"]  # fmt: skip
            tables.append(("Before and after: paired differences on the same prompts", header,
                           diffs))  # fmt: skip
    return tables


def _rm_source_table(by: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Held-out accuracy per source of preference data (AI labels, human data mixed in)."""
    rows = []
    for label, s in by["sources"].items():
        skipped = ", ".join(f"{n} {why}" for why, n in (s.get("skipped") or {}).items())
        weight = "" if s.get("weight") is None else _fmt(float(s["weight"]), 2)
        rows.append([label, _ci(s["accuracy"], s["ci95"], s["n"]), str(s["train_pairs"]),
                     weight, skipped or "none"])  # fmt: skip
    header = ["source", "held-out accuracy (95% CI, n)", "training pairs", "weight", "skipped"]
    return "Reward model held-out accuracy by source", header, rows


def _rm_accuracy(rm: dict[str, Any]) -> str:
    by = rm.get("by_source")
    if by and by["overall"]["n"]:  # every held-out pair scored once by the trained model
        o = by["overall"]
        return _ci(o["accuracy"], o["ci95"], o["n"])
    n = rm["held_out_pairs"]
    if rm["eval_accuracy"] is None or not n:
        return _fmt(rm["eval_accuracy"]) + ("" if n is None else f" (n={n})")
    return _ci(rm["eval_accuracy"], wilson(rm["eval_accuracy"] * n, n), n)


def _eval_cell(m: dict[str, Any], key: str) -> str:
    if f"{key}_ci95" not in m:  # mean answer length; an older file without intervals
        return _fmt(m.get(key))
    cell = _ci(m.get(key), m[f"{key}_ci95"], m.get(f"{key}_n"))
    missing = m.get(f"{key}_unscored") or 0
    return f"{cell}, {missing} unscored" if missing else cell


def _warning(w: dict[str, Any]) -> str:
    if "value" in w:
        return f"{w['warning']}: {w['value']} ({w['side']} the threshold {w['threshold']})"
    return str(w["warning"])


def _sample_blocks(d: dict[str, Any], n_red: int = 3, n_benign: int = 2) -> list[dict[str, Any]]:
    red = [s for s in d["samples"] if s["set"] == "red_team"][:n_red]
    ben = [s for s in d["samples"] if s["set"] == "benign"][:n_benign]
    return red + ben


def render_html(cfg: Any, d: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>rlaif run {e(cfg.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}"
        "img{max-width:100%;border:1px solid #eee}.warn{color:#a40}</style></head><body>",
        f"<h1>rlaif run: {e(cfg.name)}</h1>",
        f"<p>rlaif {e(__version__)} · base model <code>{e(str(cfg.base_model))}</code> · labeler "
        f"<code>{e(cfg.labeler)}</code> · constitution <code>{e(Path(cfg.constitution).name)}"
        f"</code> · RL <code>{e(cfg.rl.algorithm)}</code> · written "
        f"{e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        f"<p>{e(HOW_TO_READ)}</p>",
    ]
    if d["eval"]:
        judge, warnings = judge_of(d["eval"])
        parts.append(f"<p><b>Evaluation judge:</b> <code>{e(judge)}</code></p>")
        parts += [f"<p class='warn'><b>Warning:</b> {e(w)}</p>" for w in warnings]
    for title, header, rows in _tables(d):
        parts.append(f"<h2>{e(title)}</h2><table><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if d["rl"]["warnings"]:
        parts.append("<h2>Reward-hacking warnings</h2><ul>")
        for w in d["rl"]["warnings"][:20]:
            parts.append(f"<li class='warn'>step {w['step']}: {e(_warning(w))}</li>")
        parts.append("</ul>")
    parts.append("<h2>Plots</h2>")
    for title, path in d["plots"]:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,"
                     f"{data}'>")  # fmt: skip
    blocks = _sample_blocks(d)
    if blocks:
        parts.append("<h2>Before and after</h2>")
        for s in blocks:
            parts.append(f"<h3>{e(s['set'])}: {e(s['prompt'])}</h3><table><tr>"
                         "<th>policy</th><th>answer</th><th>judge</th></tr>")  # fmt: skip
            for name, a in s["answers"].items():
                judged = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in a.items() if k != "text")
                parts.append(f"<tr><td>{e(name)}</td><td>{e(a['text'])}</td>"
                             f"<td>{e(judged)}</td></tr>")  # fmt: skip
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(cfg: Any, d: dict[str, Any], root: Path) -> str:
    lines = [
        f"# rlaif run: {cfg.name}",
        "",
        f"rlaif {__version__} · base model `{cfg.base_model}` · labeler `{cfg.labeler}` · "
        f"constitution `{Path(cfg.constitution).name}` · RL `{cfg.rl.algorithm}`",
        "",
        HOW_TO_READ,
        "",
    ]
    if d["eval"]:
        judge, warnings = judge_of(d["eval"])
        lines += [f"**Evaluation judge:** `{judge}`", ""]
        lines += [f"> **Warning:** {w}\n" for w in warnings]
    for title, header, rows in _tables(d):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]  # fmt: skip
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    if d["rl"]["warnings"]:
        lines += ["## Reward-hacking warnings", ""]
        lines += [f"- step {w['step']}: {_warning(w)}" for w in d["rl"]["warnings"][:20]]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{t}]({p.relative_to(root)})" for t, p in d["plots"]]
    lines.append("")
    for s in _sample_blocks(d):
        lines += [f"### {s['set']}: {s['prompt']}", "", "| policy | answer |", "|---|---|"]
        for name, a in s["answers"].items():
            text = " ".join(a["text"].split()).replace("|", "\\|")
            lines.append(f"| {name} | {text} |")
        lines.append("")
    return "\n".join(lines)


def write_report(cfg: Any, root: Path, order: list[str] | None = None) -> tuple[Path, Path]:
    """``report.html`` and ``report.md`` in ``root``; ``order``: the stage names in run order."""
    d = collect(root, order)
    html_path, md_path = root / "report.html", root / "report.md"
    html_path.write_text(render_html(cfg, d), encoding="utf-8")
    md_path.write_text(render_markdown(cfg, d, root), encoding="utf-8")
    return html_path, md_path
