"""Thin helpers over kafka-python: clients from settings, topic creation, polling and decoding."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from nirwatch.errors import BrokerUnavailableError, WireFormatError
from nirwatch.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Tuned for throughput of ~3 KB spectra: large batches, short linger, fast crc32c.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger_ms": 5,
    "batch_size": 1 << 20,
    "max_request_size": 8 << 20,
    "acks": "all",
    "retries": 2**31 - 1,
    "max_in_flight_requests_per_connection": 1,
}


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A producer with nirwatch's defaults; order per key survives retries (1 in flight)."""
    return KafkaProducer(**kafka.client_options(), **{**PRODUCER_DEFAULTS, **overrides})


def make_consumer(
    kafka: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any
) -> KafkaConsumer:
    """A consumer with manual commits and large fetches."""
    opts: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_bytes": 64 << 20,
        "max_partition_fetch_bytes": 16 << 20,
    }
    opts.update(overrides)
    return KafkaConsumer(*topics, **kafka.client_options(), **opts)


def ensure_topics(
    kafka: KafkaSettings,
    topics: Iterable[str],
    partitions: int | None = None,
    timeout: float = 20.0,
) -> None:
    """Create topics that do not exist yet (idempotent), retrying while the broker starts."""
    n = partitions or kafka.partitions
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(**kafka.client_options(), request_timeout_ms=5000)
        except KafkaError as exc:
            last = exc
            time.sleep(0.2)
            continue
        try:
            existing = set(admin.list_topics())
            new = [NewTopic(t, n, 1) for t in topics if t not in existing]
            if new:
                try:
                    admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            last = exc
            time.sleep(0.2)
        finally:
            admin.close()
    raise BrokerUnavailableError(f"could not create topics on {kafka.bootstrap}: {last}")


def poll_decoded(
    consumer: KafkaConsumer,
    decoders: Mapping[str, Callable[[bytes | None], Any]],
    timeout_ms: int,
    *,
    log_level: int = logging.WARNING,
) -> dict[str, list[Any]]:
    """Poll once and decode each record's value with its topic's decoder.

    A record its decoder refuses (:class:`~nirwatch.errors.WireFormatError`) is logged at
    ``log_level`` with its topic, partition and offset, and skipped: one bad record never
    stops a consumer. Records of topics without a decoder are skipped too.

    Returns
    -------
    dict
        Topic -> decoded values in the order they were polled (a topic with no record in
        this poll is absent).
    """
    out: dict[str, list[Any]] = {}
    for tp, records in consumer.poll(timeout_ms=timeout_ms).items():
        decode = decoders.get(tp.topic)
        if decode is None:
            continue
        good = out.setdefault(tp.topic, [])
        for rec in records:
            try:
                good.append(decode(rec.value))
            except WireFormatError as exc:
                log.log(
                    log_level, "skipping undecodable record %s[%d]@%d: %s",
                    tp.topic, tp.partition, rec.offset, exc,
                )  # fmt: skip
    return out


class ProducerSlot:
    """Holds one producer at a time and replaces it after a failure.

    After a broker restart an idempotent producer must be recreated: Tansu forgets producer
    ids, and every later send of the old client fails. :meth:`mark_failed` flags the producer
    (safe from the client's I/O thread, e.g. in a send's errback) and the next :meth:`get`
    closes it and makes a new one; :meth:`discard` drops it at once, from the thread that uses
    it.

    Parameters
    ----------
    factory : callable
        Makes a producer (e.g. ``lambda: make_producer(kafka, linger_ms=...)``).
    on_new : callable, optional
        Called with each new producer before :meth:`get` returns it (e.g. to wrap it in a
        dead-letter publisher, or to re-send what the failed one lost).

    Attributes
    ----------
    recreated : int
        Failed producers dropped so far.
    """

    def __init__(
        self,
        factory: Callable[[], KafkaProducer],
        on_new: Callable[[KafkaProducer], None] | None = None,
    ) -> None:
        self._factory = factory
        self._on_new = on_new
        self._producer: KafkaProducer | None = None
        self._failed = threading.Event()
        self.recreated = 0

    @property
    def current(self) -> KafkaProducer | None:
        """The producer now held, if any (never makes one)."""
        return self._producer

    @property
    def failed(self) -> bool:
        """A send failed since the producer now held was made."""
        return self._failed.is_set()

    def mark_failed(self) -> None:
        """The producer failed: the next :meth:`get` replaces it."""
        self._failed.set()

    def get(self) -> KafkaProducer:
        """The producer: made on first use, and again after it failed."""
        if self._producer is not None and self._failed.is_set():
            log.debug("recreating the Kafka producer after a failed send")
            self.discard()
        if self._producer is None:
            self._failed.clear()
            self._producer = self._factory()
            if self._on_new is not None:
                self._on_new(self._producer)
        return self._producer

    def discard(self) -> None:
        """Close a failed producer now (briefly: it may hang) and forget it."""
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        self.recreated += 1
        try:
            producer.close(timeout=1)
        except Exception as exc:  # noqa: BLE001 - a broken client may fail to close; drop it
            log.info("closing the failed producer: %s", exc)

    def close(self, timeout: float) -> None:
        """Close the producer for good, waiting up to ``timeout`` s for what it holds."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close(timeout=timeout)


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 30.0,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    settle_polls: int = 0,
) -> list[Any]:
    """Every record of ``topic`` from its beginning, without a consumer group (manual
    assignment, nothing committed): for the ``dead-letters`` command and tests.

    Reads until ``expected`` records have arrived, or ``until(records)`` holds, or (neither
    given) every partition is read to its end; then polls on until ``settle_polls`` polls in a
    row bring nothing, so late records (redeliveries) are seen, not hidden. Returns what
    arrived by ``timeout_s`` otherwise, in (partition, offset) order.
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
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
