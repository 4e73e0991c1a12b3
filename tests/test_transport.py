"""nirwatch.transport.kafka without a broker: poll_decoded and ProducerSlot."""

from __future__ import annotations

import logging
from collections import namedtuple
from typing import Any

import pytest
from kafka import TopicPartition

from nirwatch.messages.lab_result import LabResult, decode_lab_result
from nirwatch.messages.prediction import decode_prediction
from nirwatch.transport.kafka import ProducerSlot, poll_decoded

Record = namedtuple("Record", "offset value")


class _Consumer:
    def __init__(self, polled: dict[TopicPartition, list[Record]]) -> None:
        self.polled = polled
        self.timeouts: list[int] = []

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        self.timeouts.append(timeout_ms)
        return self.polled


def _lab(sample: str) -> bytes:
    return LabResult(sample, 1.0, 2.0).encode()


def test_poll_decoded_decodes_per_topic_and_skips_what_it_cannot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _Consumer(
        {
            TopicPartition("labs", 0): [Record(5, _lab("a")), Record(6, b"{}"), Record(7, None)],
            TopicPartition("labs", 1): [Record(0, _lab("b"))],
            TopicPartition("preds", 2): [Record(9, b"not json")],
            TopicPartition("other", 0): [Record(0, b"ignored")],
        }
    )
    decoders = {"labs": decode_lab_result, "preds": decode_prediction}
    with caplog.at_level(logging.WARNING, logger="nirwatch.transport.kafka"):
        got = poll_decoded(consumer, decoders, timeout_ms=123)
    assert consumer.timeouts == [123]
    assert [r.sample_id for r in got["labs"]] == ["a", "b"]
    assert got["preds"] == [] and "other" not in got
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("skipping undecodable record labs[0]@6: missing_field")
    assert "labs[0]@7: bad_header" in lines[1] and "preds[2]@9: bad_header" in lines[2]


def test_poll_decoded_logs_at_the_level_asked(caplog: pytest.LogCaptureFixture) -> None:
    consumer = _Consumer({TopicPartition("labs", 0): [Record(1, b"[]")]})
    with caplog.at_level(logging.INFO, logger="nirwatch.transport.kafka"):
        poll_decoded(consumer, {"labs": decode_lab_result}, 0, log_level=logging.DEBUG)
    assert not caplog.records  # DEBUG: below INFO
    with caplog.at_level(logging.DEBUG, logger="nirwatch.transport.kafka"):
        poll_decoded(consumer, {"labs": decode_lab_result}, 0, log_level=logging.DEBUG)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


class _Producer:
    def __init__(self, n: int, fail_close: bool = False) -> None:
        self.n = n
        self.fail_close = fail_close
        self.closed: list[float | None] = []

    def close(self, timeout: float | None = None) -> None:
        self.closed.append(timeout)
        if self.fail_close:
            raise OSError("broken socket")


def test_producer_slot_replaces_a_failed_producer(caplog: pytest.LogCaptureFixture) -> None:
    made: list[_Producer] = []
    seen: list[Any] = []

    def factory() -> Any:
        made.append(_Producer(len(made), fail_close=len(made) == 1))
        return made[-1]

    slot = ProducerSlot(factory, on_new=seen.append)
    assert slot.current is None and not made  # nothing made until asked
    first = slot.get()
    assert slot.get() is first and seen == [first] and not slot.failed
    slot.mark_failed()  # e.g. from a send's errback on the client's I/O thread
    assert slot.failed and slot.current is first  # replaced at the next get, not here
    second = slot.get()
    assert second is not first and first.closed == [1] and seen == [first, second]
    assert not slot.failed and slot.recreated == 1
    with caplog.at_level(logging.INFO, logger="nirwatch.transport.kafka"):
        slot.discard()  # its close raises: logged, the producer is dropped anyway
    assert slot.current is None and slot.recreated == 2
    assert "closing the failed producer: broken socket" in caplog.text
    third = slot.get()
    assert third.n == 2 and seen[-1] is third
    slot.close(timeout=10)
    assert third.closed == [10] and slot.current is None
    slot.discard()  # nothing held: nothing to do
    assert slot.recreated == 2
