"""Micro-batching on a Kafka consumer: poll up to a size or a wait, track offsets to commit.

A micro-batch holds at most ``max_records`` records. The wait starts when the first record
arrives, so an idle worker does not add latency and a busy one fills whole batches. Records of
partitions revoked during accumulation are dropped: their new owner will process them from the
committed offset, and ours would fail to commit anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata


@dataclass(slots=True)
class MicroBatch:
    """Records of one micro-batch, in partition order and, within a partition, offset order.

    Attributes
    ----------
    records : list of ConsumerRecord
    first_offset : dict TopicPartition -> int
        Offset of each partition's first record (where to seek back to retry the batch).
    next_offset : dict TopicPartition -> int
        Each partition's last offset + 1: what to commit once the batch is published.
    """

    records: list[Any] = field(default_factory=list)
    first_offset: dict[TopicPartition, int] = field(default_factory=dict)
    next_offset: dict[TopicPartition, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def add(self, tp: TopicPartition, records: list[Any]) -> None:
        if not records:
            return
        self.records.extend(records)
        self.first_offset.setdefault(tp, records[0].offset)
        self.next_offset[tp] = records[-1].offset + 1

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget every record of ``partitions`` (revoked while the batch was accumulating)."""
        gone = set(partitions) & set(self.first_offset)
        if not gone:
            return
        self.records = [r for r in self.records if TopicPartition(r.topic, r.partition) not in gone]
        for tp in gone:
            del self.first_offset[tp], self.next_offset[tp]

    def commit_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit after the whole batch was published."""
        return {tp: OffsetAndMetadata(off, "", -1) for tp, off in self.next_offset.items()}


class RevocationTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Remembers partitions revoked by a rebalance so an accumulating batch can drop them."""

    def __init__(self) -> None:
        self.revoked: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        self.revoked |= revoked
        self.assigned -= revoked

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.assigned |= assigned
        self.revoked -= assigned

    def take_revoked(self) -> set[TopicPartition]:
        out, self.revoked = self.revoked, set()
        return out


def poll_micro_batch(
    consumer: KafkaConsumer,
    max_records: int,
    max_wait_s: float,
    idle_poll_ms: int,
    stop: threading.Event,
    tracker: RevocationTracker | None = None,
    progress: Callable[[int], None] | None = None,
) -> MicroBatch:
    """Poll one micro-batch.

    Returns as soon as ``max_records`` records are held, ``max_wait_s`` has passed since the
    first record arrived, ``stop`` is set, or an idle poll of ``idle_poll_ms`` found nothing
    (an empty batch, so the caller can do housekeeping and check ``stop``). ``stop`` is
    checked at least every ``idle_poll_ms``; ``progress(n)`` is told how many records are held.
    """
    batch = MicroBatch()
    deadline: float | None = None
    while True:
        if deadline is None:
            timeout_ms = idle_poll_ms
        else:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            timeout_ms = max(0, min(idle_poll_ms, remaining_ms))
        got = consumer.poll(timeout_ms=timeout_ms, max_records=max_records - len(batch))
        for tp, records in got.items():
            batch.add(tp, records)
        if tracker is not None and tracker.revoked:
            batch.drop(tracker.take_revoked())
        if not len(batch):
            if not got:
                return batch  # idle
            continue  # everything we had was revoked: start over
        if progress is not None:
            progress(len(batch))
        if deadline is None:
            deadline = time.monotonic() + max_wait_s
        if len(batch) >= max_records or stop.is_set() or time.monotonic() >= deadline:
            return batch
