"""A progress bar for MapRun.wait: on a terminal for runs longer than about a second,
silent in pipes and logs. Built on tqdm, without its monitor thread (the local backend
forks workers, and forking is safest with no stray threads)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from kubemap.core.status import RunStatus

AUTO_DELAY_SECONDS = 1.0


class _Bar(tqdm):  # type: ignore[misc]
    monitor_interval = 0  # no TMonitor thread


def want_progress(progress: bool | None, stream: TextIO | None = None) -> bool:
    """progress=None means: only when the stream (stderr) is a terminal."""
    if progress is not None:
        return progress
    out = stream if stream is not None else sys.stderr
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """`with ProgressBar(total, name) as bar: bar.show(status)`; appears after `delay` s."""

    def __init__(
        self,
        total: int,
        name: str,
        *,
        delay: float = AUTO_DELAY_SECONDS,
        stream: TextIO | None = None,
    ) -> None:
        self._bar = _Bar(
            total=total,
            desc=name,
            unit="item",
            delay=delay,
            file=stream if stream is not None else sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self._failed = 0

    def show(self, status: RunStatus) -> None:
        if status.failed != self._failed:  # before update(), which draws the bar
            self._failed = status.failed
            self._bar.set_postfix(failed=status.failed, refresh=False)
        done = status.succeeded + status.failed
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        # No forced redraw when the run finishes: the bar is erased on exit (leave=False), and
        # tqdm erases only a bar it drew itself after its delay; a forced redraw of a short
        # run stayed on screen, glued to the first line of results.

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()
