"""The progress display for row-wise jobs: rows done/total, rate, ETA, tokens, cache hits.

Rich draws it live on a terminal and prints the final state once elsewhere (logs, CI).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rlaif.engine.scheduler import EngineStats


class _Rate(ProgressColumn):
    """Rows made in this run per second of this run (resumed rows do not count)."""

    def render(self, task: Task) -> Text:
        made, elapsed = task.fields.get("made", 0), task.elapsed or 0.0
        if not made or elapsed <= 0:
            return Text("-- rows/s", style="cyan")
        return Text(f"{made / elapsed:.2f} rows/s", style="cyan")


class _Stats(ProgressColumn):
    """Reads the live engine counters at every refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: EngineStats | None = None

    def render(self, task: Task) -> Text:
        s = self.stats
        if s is None:
            return Text("")
        return Text(
            f"{s.total_tokens:,} tok · cache {s.cache_hits}/{s.requests} · {s.labeler_calls} calls",
            style="dim",
        )


class RowProgress:
    """Use as a context manager; pass ``on_start`` and ``on_row`` to the job."""

    def __init__(self, console: Console, label: str = "rows"):
        self._stats_col = _Stats()
        self._progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            self._stats_col,
            console=console,
            transient=False,
        )
        self._task: Any = None
        self.written = 0

    def __enter__(self) -> RowProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def on_start(self, total: int, stats: EngineStats) -> None:
        self._stats_col.stats = stats
        self._task = self._progress.add_task("rows", total=total, made=0)
        self._made = 0

    def on_row(self, row: dict[str, Any], resumed: bool) -> None:
        self.written += 1
        self._made += 0 if resumed else 1
        self._progress.update(self._task, advance=1, made=self._made)
