"""A live progress bar (rich) showing step, loss or reward, accuracy, tokens/s and ETA."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    """Context manager around one stage's bar; ``update(step, **fields)`` refreshes it.

    When disabled (``logging.progress: false``) or not attached to a terminal, it prints one
    plain line every ``every`` steps instead, so CI logs still show progress. ``silent``
    shows nothing (a trainer rank other than 0: rank 0 speaks for all).
    """

    def __init__(self, title: str, total: int, start: int = 0, enabled: bool = True, every: int = 10,
                 silent: bool = False) -> None:
        self.console = Console()
        self.silent = silent
        enabled = enabled and not silent
        self.live = enabled and self.console.is_terminal
        self.title, self.total, self.every = title, total, every
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console,
        ) if self.live else None
        self._task = None
        self._start = start

    def __enter__(self) -> "StageProgress":
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, completed=self._start, info="")
        return self

    def update(self, step: int, **fields: float) -> None:
        info = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif not self.silent and (step % self.every == 0 or step == self.total):
            self.console.print(f"{self.title} {step}/{self.total}  {info}", highlight=False)

    def note(self, text: str) -> None:
        """A line above the bar (a warning during the stage); plain print without one."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        elif not self.silent:
            print(text, flush=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
