"""The two helpers every kind of test needs: wait for a condition, read a topic.

Test modules import helpers from support modules (this one, ``worker_support``, ``builders``,
``promstack``, ``metric_sets``) and fixtures from ``conftest``, never from each other
(tests/test_architecture.py checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import TopicPartition

from nirwatch.messages.prediction import Prediction, decode_prediction
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import make_consumer

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


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 30.0,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    settle_polls: int = 1,
) -> list[Any]:
    """Every record of ``topic`` from its beginning, without a consumer group.

    Reads until ``expected`` records have arrived, or ``until(records)`` holds, or (neither
    given) every partition is read to its end; then polls on until ``settle_polls`` polls in a
    row bring nothing, so late records (redeliveries) are seen, not hidden. Returns what
    arrived by ``timeout_s`` otherwise: the caller's assertion says what was missing.
    """
    consumer = make_consumer(kafka, None)
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            return records
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def done() -> bool:
            if until is not None:
                return until(records)
            if expected is not None:
                return len(records) >= expected
            # Tansu under-reports end_offsets(); highwater() is known once a fetch returned.
            highs = [consumer.highwater(tp) for tp in tps]
            return all(
                h is not None and consumer.position(tp) >= h
                for tp, h in zip(tps, highs, strict=True)
            )

        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                records.extend(recs)
            if done():
                break
        quiet = 0
        while quiet < settle_polls and time.monotonic() < deadline + 10:
            got = [r for recs in consumer.poll(timeout_ms=300).values() for r in recs]
            records.extend(got)
            quiet = 0 if got else quiet + 1
    finally:
        consumer.close()
    return records


def read_predictions(
    kafka: KafkaSettings, expected: int, timeout_s: float = 30.0
) -> list[Prediction]:
    """Predictions in (partition, offset) order; within an instrument that is publish order."""
    records = read_topic(kafka, kafka.topic_predictions, expected, timeout_s)
    records.sort(key=lambda r: (r.partition, r.offset))
    return [decode_prediction(r.value) for r in records]
