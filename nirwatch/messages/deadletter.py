"""Dead-letter topic: publish messages that failed validation, with their reasons in headers.

Both the ingest edge (``stage="ingest"``) and the inference worker (``stage="worker"``) send a
message they cannot use to the dead-letter topic instead of dropping it or crashing. The value
is the ORIGINAL bytes, unchanged, so the message can be inspected and replayed (the key too;
a record with neither key nor value gets the source as key, as Kafka needs one of them); why
it failed travels in headers:

=========================  ==============================================================
header                     value (UTF-8)
=========================  ==============================================================
``nirwatch.dlq.reason``    bounded code from :data:`nirwatch.messages.codec.REASONS`
``nirwatch.dlq.detail``    human-readable explanation (at most :data:`MAX_DETAIL` bytes)
``nirwatch.dlq.source``    ``topic:partition:offset`` of the input, or the adapter's name
``nirwatch.dlq.stage``     ``ingest`` or ``worker``
``nirwatch.dlq.time``      when it was dead-lettered, ISO 8601 UTC
=========================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from nirwatch.errors import NirwatchError
from nirwatch.messages.codec import REASONS
from nirwatch.settings import KafkaSettings

HEADER_REASON = "nirwatch.dlq.reason"
HEADER_DETAIL = "nirwatch.dlq.detail"
HEADER_SOURCE = "nirwatch.dlq.source"
HEADER_STAGE = "nirwatch.dlq.stage"
HEADER_TIME = "nirwatch.dlq.time"
STAGES = ("ingest", "worker")
#: Details are truncated so a pathological message cannot inflate the headers.
MAX_DETAIL = 1024

Stage = Literal["ingest", "worker"]


class DeadLetterError(NirwatchError):
    """A dead letter cannot be published as asked (unknown reason code or stage)."""


class _LabelledCounter(Protocol):
    def labels(self, *args: Any, **kwargs: Any) -> Any: ...


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def source_of(topic: str, partition: int, offset: int) -> str:
    """The ``nirwatch.dlq.source`` value for a consumed record: ``topic:partition:offset``."""
    return f"{topic}:{partition}:{offset}"


class DeadLetterPublisher:
    """Sends rejected messages, unchanged, to the dead-letter topic with reason headers.

    Parameters
    ----------
    producer : KafkaProducer
        Shared with the caller; the publisher never closes it.
    topic : str
        The dead-letter topic (``KafkaSettings.topic_dead_letter``).
    metrics_counter : prometheus Counter with a ``reason`` label, optional
        Incremented once per dead letter (e.g. ``WorkerMetrics.dead_lettered``).
    """

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        metrics_counter: _LabelledCounter | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics_counter = metrics_counter
        self.count = 0

    def publish(
        self,
        value: bytes | None,
        key: bytes | str | None,
        reason: str,
        detail: str,
        source: str,
        stage: Stage,
    ) -> FutureRecordMetadata:
        """Send one dead letter; returns the producer's send future.

        Raises
        ------
        DeadLetterError
            If ``reason`` is not one of :data:`nirwatch.messages.codec.REASONS` or ``stage`` is unknown
            (a programming error: reason codes label metrics and must stay bounded).
        """
        if reason not in REASONS:
            raise DeadLetterError(f"reason must be one of {REASONS}, got {reason!r}")
        if stage not in STAGES:
            raise DeadLetterError(f"stage must be one of {STAGES}, got {stage!r}")
        raw_key = key.encode() if isinstance(key, str) else key
        if value is None and raw_key is None:
            # Kafka refuses a record with neither key nor value; the source identifies it.
            raw_key = source.encode("utf-8", errors="replace")
        detail_bytes = detail.encode("utf-8", errors="replace")[:MAX_DETAIL]
        headers = [
            (HEADER_REASON, reason.encode()),
            (HEADER_DETAIL, detail_bytes),
            (HEADER_SOURCE, source.encode("utf-8", errors="replace")),
            (HEADER_STAGE, stage.encode()),
            (HEADER_TIME, _utc_now_iso().encode()),
        ]
        future = self.producer.send(self.topic, value=value, key=raw_key, headers=headers)
        self.count += 1
        if self.metrics_counter is not None:
            self.metrics_counter.labels(reason=reason).inc()
        return future


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter read back from the topic, headers decoded."""

    value: bytes | None
    key: bytes | None
    reason: str
    detail: str
    source: str
    stage: str
    time: str
    partition: int
    offset: int


def decode_dead_letter(record: Any) -> DeadLetter:
    """Decode a kafka-python ``ConsumerRecord`` from the dead-letter topic."""
    headers = {k: v.decode("utf-8", errors="replace") for k, v in (record.headers or [])}
    return DeadLetter(
        value=record.value,
        key=record.key,
        reason=headers.get(HEADER_REASON, ""),
        detail=headers.get(HEADER_DETAIL, ""),
        source=headers.get(HEADER_SOURCE, ""),
        stage=headers.get(HEADER_STAGE, ""),
        time=headers.get(HEADER_TIME, ""),
        partition=record.partition,
        offset=record.offset,
    )


def read_dead_letters(
    kafka: KafkaSettings,
    topic: str | None = None,
    *,
    expected: int | None = None,
    timeout_s: float = 10.0,
) -> list[DeadLetter]:
    """Read the dead-letter topic from the beginning (for tests and the CLI).

    Without a consumer group (:func:`nirwatch.transport.kafka.read_topic`), until every
    partition is read to its end, or ``expected`` letters have arrived, or ``timeout_s``
    passes. Returned in (partition, offset) order.
    """
    from nirwatch.transport.kafka import read_topic

    name = topic or kafka.topic_dead_letter
    return [decode_dead_letter(r) for r in read_topic(kafka, name, expected, timeout_s)]
