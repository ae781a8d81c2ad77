"""One progress adapter for every command: a rich bar on stderr, started on first use, silent when quiet."""

from __future__ import annotations

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
