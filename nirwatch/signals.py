"""The stop signal of every long-running command: SIGTERM and SIGINT only set an event.

A handler that does more (closes a consumer, raises) runs between two bytecodes of whatever the
main thread was doing, so it could interrupt a publish before its commit. Here the handler only
sets a :class:`threading.Event`; the command's loop sees it, drains what it holds, commits and
closes in its ``finally``. The previous handlers come back on exit, so a command run inside a
test, or a second command in the same process, finds the process as it was.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

#: what ``docker stop``, systemd and Ctrl-C send
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_on_signals(
    stop: threading.Event | None = None, signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> Iterator[threading.Event]:
    """Within the block, each of ``signals`` sets ``stop`` (a new event when ``None``).

    Parameters
    ----------
    stop
        The event to set, e.g. one shared with threads started before; ``None``: a new one.
    signals
        The signals that mean "stop" (default SIGTERM and SIGINT).

    Yields
    ------
    threading.Event
        The event the signals set.

    Raises
    ------
    ValueError
        Outside the main thread, where Python cannot install signal handlers.
    """
    event = stop if stop is not None else threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous: dict[signal.Signals, object] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield event
    finally:
        for sig, old in previous.items():
            # None: the handler was not installed from Python; the default is the best guess.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]
