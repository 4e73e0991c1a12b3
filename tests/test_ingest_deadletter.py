from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from nirwatch.messages.deadletter import (
    DeadLetterError,
    DeadLetterPublisher,
    read_dead_letters,
    source_of,
)
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_producer


@pytest.mark.kafka
def test_dead_letters_keep_original_bytes_and_carry_reason_headers(
    kafka_settings: KafkaSettings,
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_dead_letter])
    registry = CollectorRegistry()
    counter = Counter("dlq_test", "dead letters", ["reason"], registry=registry)
    producer = make_producer(kafka_settings)
    try:
        dlq = DeadLetterPublisher(producer, kafka_settings.topic_dead_letter, counter)
        raw = b"NIRS\x07garbage\x00\xff"
        dlq.publish(
            raw,
            "probe-1",
            "unknown_version",
            "expected version 1, got 7",
            source_of("spectra", 2, 41),
            "worker",
        ).get(timeout=10)
        dlq.publish(None, None, "too_short", "no value", "simulator", "ingest").get(timeout=10)
        producer.flush()
    finally:
        producer.close()

    letters = read_dead_letters(kafka_settings, expected=2)
    assert len(letters) == 2
    by_reason = {d.reason: d for d in letters}
    first = by_reason["unknown_version"]
    assert first.value == raw
    assert first.key == b"probe-1"
    assert first.detail == "expected version 1, got 7"
    assert first.source == "spectra:2:41"
    assert first.stage == "worker"
    assert first.time.endswith("Z") and first.time.startswith("20")
    second = by_reason["too_short"]
    assert second.value is None and second.key == b"simulator"
    assert second.stage == "ingest" and second.source == "simulator"
    assert dlq.count == 2
    assert registry.get_sample_value("dlq_test_total", {"reason": "too_short"}) == 1.0


@pytest.mark.kafka
def test_read_dead_letters_stops_at_highwater_without_expected(
    kafka_settings: KafkaSettings,
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_dead_letter])
    producer = make_producer(kafka_settings)
    try:
        dlq = DeadLetterPublisher(producer, kafka_settings.topic_dead_letter)
        for i in range(5):
            dlq.publish(b"x%d" % i, f"k{i}", "bad_magic", "d", "t:0:0", "ingest")
        producer.flush()
    finally:
        producer.close()
    letters = read_dead_letters(kafka_settings, timeout_s=15)
    assert sorted(d.value or b"" for d in letters) == [b"x%d" % i for i in range(5)]


def test_unknown_reason_or_stage_is_refused() -> None:
    class NoSend:
        def send(self, *a: object, **k: object) -> None:
            raise AssertionError("must not send")

    dlq = DeadLetterPublisher(NoSend(), "dlq")  # type: ignore[arg-type]
    with pytest.raises(DeadLetterError, match="reason must be one of"):
        dlq.publish(b"x", None, "whatever", "", "s", "ingest")
    with pytest.raises(DeadLetterError, match="stage must be one of"):
        dlq.publish(b"x", None, "bad_magic", "", "s", "training")  # type: ignore[arg-type]
