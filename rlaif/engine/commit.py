"""Group commit: buffered writes made durable together, at most a short window apart.

Making every finished row and every labeler answer durable on its own (an fsync per journal
line, a SQLite transaction per answer) costs more CPU than the rest of the engine's work per
request at a few hundred requests a second. The journal and the cache therefore buffer what they
are given and commit it together: when ``items`` are waiting, when ``seconds`` have passed since
the last commit (a timer on the running event loop sees to that even when nothing else arrives),
and always on close. Outside an event loop nothing would come back to commit, so there every
write commits at once.

What a ``kill -9`` can lose is bounded by the window: what arrived after the last commit, at most
``seconds`` old. The engine rebuilds such rows from the cache or asks again, so a run never has a
gap or a duplicate, only a little repeated work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

COMMIT_SECONDS = 0.25  # the longest a finished row or answer waits before it is durable
COMMIT_ITEMS = 512


class CommitWindow:
    """Calls ``commit()`` for what was buffered, every ``seconds`` or ``items``, whichever first.

    The owner buffers, then calls ``added(n)``; ``flush()`` commits now (on close, on error).
    A commit that fails in the timer is raised by the next ``added`` or ``flush``, never lost.
    """

    def __init__(
        self,
        commit: Callable[[], None],
        seconds: float = COMMIT_SECONDS,
        items: int = COMMIT_ITEMS,
    ):
        self._commit = commit
        self.seconds = seconds
        self.items = items
        self.pending = 0
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None

    def added(self, n: int = 1) -> None:
        self._raise_timer_error()
        self.pending += n
        waited = time.monotonic() - self._last
        if self.pending >= self.items or waited >= self.seconds:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to come back to it: commit now
                self.flush()
                return
            self._timer = loop.call_later(self.seconds - waited, self._on_timer)

    def flush(self) -> None:
        self._raise_timer_error()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pending:
            self._commit()
            self.pending = 0
        self._last = time.monotonic()

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except BaseException as e:  # raised to the owner at its next call
            self._error = e

    def _raise_timer_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
