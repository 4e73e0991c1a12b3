"""Thin helpers over kafka-python: clients from settings, topic creation, lag via highwater."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from nirwatch.errors import BrokerUnavailableError
from nirwatch.settings import KafkaSettings

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
