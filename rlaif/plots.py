"""PNG plots for dataset cards and evaluation reports (matplotlib, headless).

People look at a histogram faster than they read a table of numbers, so the cards and reports
embed these images next to the numbers they show. matplotlib is imported on first use with the
``Agg`` backend, so nothing here needs a display and ``rlaif --help`` never pays for the import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram(values: Iterable[float], path: Path, title: str, xlabel: str, bins: int = 20) -> Path:
    """A histogram of values in [0, 1] (any iterable: a generator over rows on disk is read once).

    The counts are numpy's, and matplotlib draws ``bins`` bars: given the values themselves,
    ``Axes.hist`` held several Python-object copies of them, the peak memory of a 10^5-row card
    (~0.2 KB a value); here they are 8 bytes each, once."""
    import numpy as np

    counts, edges = np.histogram(np.fromiter(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(
        edges[:-1], counts, width=np.diff(edges), align="edge", color="#4C72B0", edgecolor="white"
    )
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _save(plt, fig, path)


def reliability_diagram(
    bins: Sequence[dict[str, float]], ece: float, path: Path, title: str
) -> Path:
    """Accuracy against confidence per bin (``{"low", "high", "confidence", "accuracy",
    "count"}``), with the diagonal of perfect calibration and the bin sizes beneath."""
    plt = _pyplot()
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5, 5.5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"]]
    width = [b["high"] - b["low"] for b in filled]
    ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=width,
           align="edge", color="#4C72B0", edgecolor="white", label="accuracy")  # fmt: skip
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="k",
            markersize=3, label="mean confidence")  # fmt: skip
    low = bins[0]["low"] if bins else 0.0
    ax.plot([low, 1], [low, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    counts.bar([b["low"] for b in filled], [b["count"] for b in filled], width=width,
               align="edge", color="#999999", edgecolor="white")  # fmt: skip
    counts.set_xlabel("confidence")
    counts.set_ylabel("count")
    counts.set_xlim(low, 1)
    return _save(plt, fig, path)


def line_plot(
    series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str
) -> Path:
    """One line per named series of ``(x, y)`` points (training curves)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def grouped_bars(groups: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """One group of bars per metric (values in [0, 1]), one bar per series (policy)."""
    plt = _pyplot()
    series = list(dict.fromkeys(name for g in groups.values() for name in g))
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        ys = [groups[m].get(name, 0.0) for m in groups]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def paired_scatter(
    points: Sequence[tuple[float, float]],
    path: Path,
    title: str,
    labels: tuple[str, str],
    marked: Sequence[bool] | None = None,
    marked_label: str = "",
    threshold: float | None = None,
    other_label: str = "other",
) -> Path:
    """One point per item measured in two runs (x: the first, y: the second), with the
    diagonal of no change; ``marked`` points are drawn in another colour, and ``threshold``
    draws the lines that split the plane into quadrants (e.g. 0.5 for a label's side). The axes
    fit the points (and the threshold), the same range on both, so a cluster of soft labels
    near 0.5 is spread out instead of squeezed into a corner of [0, 1]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    flags = list(marked) if marked is not None else [False] * len(points)
    for want, colour, name in ((False, "#4C72B0", other_label), (True, "#C44E52", marked_label)):
        chosen = [p for p, m in zip(points, flags, strict=True) if m == want]
        if chosen:
            xs, ys = zip(*chosen, strict=True)
            ax.scatter(xs, ys, s=22, color=colour, alpha=0.8, label=name if marked else None)
    values = [v for p in points for v in p] + ([threshold] if threshold is not None else [])
    low, top = min(values, default=0.0), max(values, default=1.0)
    pad = max(top - low, 0.02) * 0.08
    low, top = low - pad, top + pad
    ax.plot([low, top], [low, top], "--", color="grey", linewidth=0.8)
    ax.set_xlim(low, top)
    ax.set_ylim(low, top)
    if threshold is not None:
        ax.axvline(threshold, color="#999999", linewidth=0.6)
        ax.axhline(threshold, color="#999999", linewidth=0.6)
    ax.set_xlabel(labels[0], fontsize=8)
    ax.set_ylabel(labels[1], fontsize=8)
    ax.set_title(title, fontsize=9)
    if marked is not None and any(flags):
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def side_by_side_bars(
    panels: dict[str, dict[str, float]], path: Path, title: str, xlabel: str, xmax: float = 1.0
) -> Path:
    """One panel of horizontal bars per run (its own categories, e.g. its principles)."""
    plt = _pyplot()
    tallest = max([1, *(len(v) for v in panels.values())])
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 1.2 + 0.28 * tallest),
        dpi=100, squeeze=False,
    )  # fmt: skip
    for ax, (name, values) in zip(axes[0], panels.items(), strict=False):
        keys = list(values)[::-1]
        ax.barh(keys, [values[k] for k in keys], color="#4C72B0")
        ax.set_xlim(0, xmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)
