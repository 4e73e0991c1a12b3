"""The two helpers every kind of test needs: wait for a condition, read a topic.

Test modules import helpers from support modules (this one, ``worker_support``, ``builders``,
``promstack``, ``metric_sets``) and fixtures from ``conftest``, never from each other
(tests/test_architecture.py checks it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from nirwatch.messages.prediction import Prediction, decode_prediction
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import read_topic as transport_read_topic

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout_s: float = 30.0,
    what: str = "condition",
    *,
    interval_s: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Call ``check()`` until it returns something truthy, and return that.

    Parameters
    ----------
    check
        The condition; its truthy result is returned (a value, a list, True).
    timeout_s, what
        How long to wait, and what for (in the failure message).
    interval_s
        Pause between calls.
    ignore
        Exceptions that mean "not yet" (a server still starting refuses connections).
    abort
        Called between tries: a message it returns stops the wait at once (a process died).

    Raises
    ------
    AssertionError
        On timeout or abort, naming ``what``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value: T | None = check()
        except ignore:
            value = None
        if value:
            return value
        why = abort() if abort is not None else None
        if why:
            raise AssertionError(f"gave up waiting for {what}: {why}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


#: :func:`nirwatch.transport.kafka.read_topic`, polling on once more by default so that late
#: records (redeliveries) are seen, not hidden; the caller's assertion says what was missing.
read_topic = functools.partial(transport_read_topic, settle_polls=1)


def read_predictions(
    kafka: KafkaSettings, expected: int, timeout_s: float = 30.0
) -> list[Prediction]:
    """Predictions in (partition, offset) order; within an instrument that is publish order."""
    records = read_topic(kafka, kafka.topic_predictions, expected, timeout_s)
    return [decode_prediction(r.value) for r in records]
