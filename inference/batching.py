"""Micro-batching on a Kafka consumer: poll up to a size or a wait, track offsets to commit.

A micro-batch holds at most ``max_records`` records. The wait starts when the first record
arrives, so an idle worker does not add latency and a busy one fills whole batches.

Records of partitions revoked during accumulation are dropped: their new owner processes them
from the committed offset, and our commit would fail anyway. But when such a partition comes
back to this same consumer, kafka-python 3 keeps its fetch position (already past the dropped
records: ``SubscriptionState.assign_from_subscribed`` preserves the state of partitions in both
the old and the new assignment, and Tansu delivers the revocation and the new assignment in
different polls), so the consumer seeks back to the first dropped offset, and drops whatever it
fetched past it meanwhile, or those records would never be consumed again
(tests/test_faults_rebalance.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)


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

    def drop(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget every record of ``partitions``; returns the first offset dropped per partition."""
        gone = set(partitions) & set(self.first_offset)
        if not gone:
            return {}
        self.records = [r for r in self.records if TopicPartition(r.topic, r.partition) not in gone]
        firsts = {tp: self.first_offset[tp] for tp in gone}
        for tp in gone:
            del self.first_offset[tp], self.next_offset[tp]
        return firsts

    def commit_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit after the whole batch was published."""
        return {tp: OffsetAndMetadata(off, "", -1) for tp, off in self.next_offset.items()}


class RevocationTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Follows rebalances so an accumulating batch drops revoked partitions, and rewinds them.

    ``dropped`` holds, per partition, the first offset of records dropped at a revocation and not
    consumed since; when the partition is assigned to this consumer again it moves to
    ``rewind`` (the caller seeks there), and when an assignment leaves it out it is forgotten
    (another member owns it and starts from the committed offset).
    """

    def __init__(self) -> None:
        self.revoked: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()
        self.dropped: dict[TopicPartition, int] = {}
        self.rewind: dict[TopicPartition, int] = {}

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        self.revoked |= revoked
        self.assigned -= revoked

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.assigned |= assigned
        self.revoked -= assigned  # revoked and given back within one poll: nothing was dropped
        for tp in list(self.dropped):
            offset = self.dropped.pop(tp)
            if tp in assigned:
                self.rewind[tp] = min(offset, self.rewind.get(tp, offset))

    def take_revoked(self) -> set[TopicPartition]:
        out, self.revoked = self.revoked, set()
        return out

    def note_dropped(self, firsts: dict[TopicPartition, int]) -> None:
        for tp, offset in firsts.items():
            self.dropped[tp] = min(offset, self.dropped.get(tp, offset))

    def take_rewind(self) -> dict[TopicPartition, int]:
        out, self.rewind = self.rewind, {}
        return out


class IdleFetchWait:
    """The consumer's fetch wait: short while records flow, long after a silence.

    Tansu holds a fetch for the whole ``fetch_max_wait_ms`` when it has no data, so an idle
    worker with the 5 ms wait that keeps latency low under load sent a fetch every 5 ms: a
    quarter of a core doing nothing (docs/results/throughput.md). Once no record has come for
    ``idle_after_s`` the wait becomes ``idle_ms``; the first record sets it back. Only the first
    spectrum after such a silence can wait up to ``idle_ms`` more: a slow but steady line (a
    probe at 1 Hz) never makes the worker idle.

    kafka-python 3 builds every fetch request from its fetcher's ``config`` dict; a client
    without one (another client, a test double) is left alone.
    """

    def __init__(
        self, consumer: Any, busy_ms: int, idle_ms: int, idle_after_s: float = 5.0
    ) -> None:
        config = getattr(getattr(consumer, "_fetcher", None), "config", None)
        self._config: dict[str, Any] | None = config if isinstance(config, dict) else None
        self.busy_ms, self.idle_ms = int(busy_ms), int(max(busy_ms, idle_ms))
        self.idle_after_s = float(idle_after_s)
        self._last_record = time.monotonic()
        self.idle = False

    @property
    def current_ms(self) -> int | None:
        """The wait the next fetch request will carry (None: not adjustable)."""
        return None if self._config is None else int(self._config["fetch_max_wait_ms"])

    def update(self, got_records: bool, now: float | None = None) -> None:
        """After each micro-batch poll: busy when it held records, idle after the silence."""
        now = time.monotonic() if now is None else now
        if got_records:
            self._last_record = now
        self.idle = now - self._last_record >= self.idle_after_s
        if self._config is not None:
            self._config["fetch_max_wait_ms"] = self.idle_ms if self.idle else self.busy_ms


def _follow_rebalance(
    consumer: KafkaConsumer, batch: MicroBatch, tracker: RevocationTracker
) -> None:
    if tracker.revoked:
        tracker.note_dropped(batch.drop(tracker.take_revoked()))
    rewind = tracker.take_rewind()
    if rewind:
        batch.drop(rewind)  # anything fetched past the dropped records comes again, in order
        for tp, offset in rewind.items():
            try:
                consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - revoked again meanwhile: not ours
                log.info("cannot rewind %s to %d: %s", tp, offset, exc)


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
        if tracker is not None:
            _follow_rebalance(consumer, batch, tracker)
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
