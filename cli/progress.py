"""One progress adapter for every command: a rich bar on stderr, started on first use, silent when quiet."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interrupt; clean-up must not be cut short again
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``timeout``, ``kill``, a batch system) stops the command as Ctrl-C does: its clean-up
    runs, so measuring children are killed and finished rows are kept. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProgressBar:
    """``label [bar] done/total status elapsed ETA``; ``counts=False`` for a budget in seconds."""

    def __init__(self, label: str, quiet: bool = False, counts: bool = True) -> None:
        self.label = label
        self.counts = counts
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.quiet = quiet

    def start(self, total: float | None) -> None:
        if self.quiet or self.progress is not None:
            return
        columns: list[ProgressColumn | str] = [TextColumn(self.label), BarColumn()]
        if self.counts:
            columns.append(MofNCompleteColumn())
        columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn()]
        self.progress = Progress(*columns, console=stderr)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=total, status="")

    def update(self, *, completed: float | None = None, advance: float | None = None, status: str | None = None,
               total: float | None = None) -> None:
        if self.progress is None or self.task is None:
            return
        fields = {"status": status} if status is not None else {}
        self.progress.update(self.task, completed=completed, advance=advance, total=total, **fields)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
