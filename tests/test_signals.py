"""The one stop-signal handler (nirwatch.signals): a real signal sets the event, nothing more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from nirwatch.signals import stop_on_signals


@pytest.fixture
def sentinel_handlers() -> Iterator[dict[signal.Signals, object]]:
    """SIGTERM/SIGINT handlers of the test's own, restored afterwards whatever happens."""
    received: list[int] = []

    def sentinel(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in saved:
        signal.signal(s, sentinel)
    yield {s: sentinel for s in saved}
    for s, h in saved.items():
        signal.signal(s, h)  # type: ignore[arg-type]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_sets_the_event_and_nothing_else(
    sig: signal.Signals, sentinel_handlers: dict[signal.Signals, object]
) -> None:
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill returns here
        assert stop.wait(5), f"{sig.name} did not set the stop event"
    # the previous handlers are back, untouched by the signal
    for s, h in sentinel_handlers.items():
        assert signal.getsignal(s) is h


def test_the_given_event_is_set_and_handlers_come_back_after_an_error(
    sentinel_handlers: dict[signal.Signals, object],
) -> None:
    stop = threading.Event()
    with pytest.raises(RuntimeError), stop_on_signals(stop) as got:
        assert got is stop
        assert signal.getsignal(signal.SIGTERM) is not sentinel_handlers[signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)
        raise RuntimeError("the command failed")
    assert stop.is_set()
    for s, h in sentinel_handlers.items():
        assert signal.getsignal(s) is h


def test_only_the_named_signals_are_taken(sentinel_handlers: dict[signal.Signals, object]) -> None:
    with stop_on_signals(signals=[signal.SIGTERM]):
        assert signal.getsignal(signal.SIGINT) is sentinel_handlers[signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is not sentinel_handlers[signal.SIGTERM]


def test_outside_the_main_thread_it_refuses() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with stop_on_signals():
                pass
        except ValueError as exc:
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert len(errors) == 1


def test_sigterm_from_another_process_ends_the_loop_cleanly() -> None:
    """A separate process: SIGTERM ends its wait loop, its ``finally`` runs, exit status 0."""
    code = (
        "import sys\n"
        "from nirwatch.signals import stop_on_signals\n"
        "with stop_on_signals() as stop:\n"
        "    print('ready', flush=True)\n"
        "    try:\n"
        "        while not stop.wait(0.05):\n"
        "            pass\n"
        "    finally:\n"
        "        print('drained', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "drained"
