"""Progress of a replay: what the reader reports each batch to (`ReadProgress`), a progress bar on
stderr for terminals (`ProgressBar`) and `NoProgress` for everything else."""

from __future__ import annotations

import sys
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ReadProgress(Protocol):
    def advance(self, messages: int) -> None:
        """Count `messages` more offsets of the planned ranges as read."""
        ...


class NoProgress:
    """Shows nothing: stderr is not a terminal, or the caller is not a person."""

    def advance(self, messages: int) -> None:
        pass


class ProgressBar:
    """A rich progress bar on stderr: messages read of those between the planned offsets."""

    def __init__(self, total: int) -> None:
        self._progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._task = self._progress.add_task("replay", total=total)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._progress.stop()

    def advance(self, messages: int) -> None:
        self._progress.advance(self._task, messages)
