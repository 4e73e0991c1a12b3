"""Progress of CNN training: one rich bar on a terminal, plain lines when stderr is not one.

An ensemble trains its members one after another; the bar spans all of them ("member k/5",
epoch, validation RMSE) instead of one transient bar per member. Piped into a log or another
program a bar draws nothing useful, so there a line is written when a member starts, at
most every ``every_s`` seconds while it trains, and when it ends.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO


class TrainingProgress:
    """Progress over ``n_members`` networks of at most ``epochs`` epochs each.

    Parameters
    ----------
    n_members, epochs : int
    enabled : bool
        False shows nothing (the calls still work).
    stream : text stream, optional
        Default ``sys.stderr``; the bar is used only when it is a terminal.
    every_s : float
        Least seconds between two plain epoch lines.
    """

    def __init__(
        self,
        n_members: int,
        epochs: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 5.0,
    ) -> None:
        self.n_members, self.epochs, self.enabled = n_members, epochs, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.member = 0
        self._bar: Any = None
        self._task: Any = None
        self._last_line = 0.0
        self._member_started = 0.0

    def __enter__(self) -> TrainingProgress:
        if self.enabled and _is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("CNN member {task.fields[member]}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                "", total=self.n_members * self.epochs, member=self._label()
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None

    def _label(self) -> str:
        return f"{self.member + 1}/{self.n_members}"

    def start_member(self, k: int) -> None:
        """Member ``k`` (0-based) starts training."""
        self.member = k
        self._member_started = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=k * self.epochs, member=self._label())
        elif self.enabled:
            self._say(f"CNN member {self._label()}: training (at most {self.epochs} epochs)")

    def epoch(self, record: dict[str, float]) -> None:
        """One epoch of the current member ended (``record`` as in the training history)."""
        e, rmse = int(record["epoch"]) + 1, record["val_rmse"]
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=self.member * self.epochs + e,
                description=f"epoch {e}/{self.epochs} val RMSE {rmse:.3f}",
            )
        elif self.enabled and time.monotonic() - self._last_line >= self.every_s:
            self._say(f"CNN member {self._label()}: epoch {e}/{self.epochs}, val RMSE {rmse:.4g}")

    def end_member(self, best_epoch: int, best_rmse: float) -> None:
        """The current member stopped (early or after its last epoch)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=(self.member + 1) * self.epochs)
        elif self.enabled:
            seconds = time.monotonic() - self._member_started
            self._say(
                f"CNN member {self._label()}: done, best epoch {best_epoch + 1}, "
                f"val RMSE {best_rmse:.4g} ({seconds:.1f} s)"
            )

    def _say(self, line: str) -> None:
        self._last_line = time.monotonic()
        print(line, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False
