"""rlaif.plots: the histogram counts values from any iterable, read once."""

from __future__ import annotations

import rlaif.plots as plots


def test_histogram_counts_a_generator_into_its_bins(tmp_path, monkeypatch):
    drawn = {}
    real_save = plots._save

    def keep(plt, fig, path):
        (ax,) = fig.axes
        drawn["heights"] = [bar.get_height() for bar in ax.patches]
        return real_save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    values = ((v + 0.5) / 1000 for v in range(1000))  # 100 in each tenth
    path = plots.histogram(values, tmp_path / "h.png", "t", "x", bins=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn["heights"] == [100] * 10


def test_histogram_of_no_values_is_still_a_plot(tmp_path):
    assert plots.histogram(iter(()), tmp_path / "empty.png", "t", "x").stat().st_size > 0
