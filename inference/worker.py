"""The inference worker: consume spectra, predict micro-batches, publish, then commit.

Delivery is at-least-once. One micro-batch is in flight at a time: poll → decode → predict →
audit → send dead letters and predictions → ``flush()`` → commit the batch's offsets → poll. The
offsets are committed only after every record of the batch was acknowledged, so a crash at any
point makes the batch be processed again (duplicates carry the same ``message_id``), never lost.
Memory is bounded: one batch in hand, the consumer's fetch buffer (``max_in_flight_bytes``),
and in the producer at most that one batch's records, since every batch is flushed before the
next poll. A slow broker therefore slows the loop and fetching (back-pressure) instead of
queueing.

When the predictor itself raises for a batch (not a CNN failure, which the bundle answers with
the PLS fallback), nothing of the batch is published or committed: the consumer seeks back to
the batch's first offsets and the batch is retried after an exponential backoff, counted in
``nirwatch_predict_failures``. Retrying goes through the normal loop, so the consumer stays in
its group and a newly promoted champion (hot reload) is picked up between attempts. Valid
spectra are never dead-lettered because of a model fault: they wait, and consumer lag shows it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from inference.batching import IdleFetchWait, MicroBatch, RevocationTracker, poll_micro_batch
from inference.observe import WorkerObserver
from inference.partitioner import CachedKeyPartitioner
from inference.records import encode_batch
from inference.reload import PredictorSource
from inference.settings import WorkerSettings
from nirwatch.errors import NirwatchError
from nirwatch.messages.deadletter import DeadLetterPublisher, source_of
from nirwatch.messages.spectrum import DecodedBatch, decode_batch
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.predictor import BatchPrediction, Predictor
from nirwatch.records.audit import AuditRecord, AuditTrail
from nirwatch.transport.kafka import ProducerSlot, ensure_topics, make_consumer, make_producer

log = logging.getLogger(__name__)


class PublishError(NirwatchError):
    """Some records of a batch were not acknowledged: the batch must not be committed."""


class InferenceWorker:
    """Consumes ``topic_spectra`` in a consumer group and publishes predictions.

    Parameters
    ----------
    settings : WorkerSettings
    predictor_source : PredictorSource
        Asked for the predictor before each batch (hot reload happens there).
    metrics : WorkerMetrics
    stop_event : threading.Event
        Set it (e.g. from a SIGTERM handler) to finish the current batch and exit :meth:`run`.
    audit : AuditTrail, optional
        Every prediction is appended (decoded from the exact bytes to be published, with the
        SHA-256 of the consumed spectrum) before it is sent.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        predictor_source: PredictorSource,
        metrics: WorkerMetrics,
        stop_event: threading.Event,
        audit: AuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.source = predictor_source
        self.metrics = metrics
        self.stop = stop_event
        self.batches = 0
        self.published = 0
        self.observer = WorkerObserver(metrics)
        self._backoff_s = 0.0
        self.tracker = RevocationTracker()
        self._producer = ProducerSlot(self._make_producer, on_new=self._on_new_producer)
        self._dead_letters: DeadLetterPublisher | None = None
        self._joining_since: float | None = None
        #: Lengthens the fetch wait while idle; bound to each new consumer.
        self.fetch_wait = IdleFetchWait(None, settings.fetch_max_wait_ms, 0)
        #: Records of the micro-batch being accumulated (0 once it is committed).
        self.holding = 0

    def _hold(self, n: int) -> None:
        self.holding = n

    @property
    def assigned_partitions(self) -> set[TopicPartition]:
        """Partitions of the spectra topic this worker owns now (a snapshot)."""
        return set(self.tracker.assigned)

    # -- lifecycle -------------------------------------------------------------------------

    def _make_producer(self) -> KafkaProducer:
        return make_producer(
            self.settings.kafka,
            linger_ms=self.settings.producer_linger_ms,
            partitioner=CachedKeyPartitioner(),
        )

    def _on_new_producer(self, producer: KafkaProducer) -> None:
        self._dead_letters = DeadLetterPublisher(
            producer, self.settings.kafka.topic_dead_letter, self.metrics.dead_lettered
        )

    def _publisher(self) -> tuple[KafkaProducer, DeadLetterPublisher]:
        """The producer (created on first use, and again after it failed)."""
        producer = self._producer.get()
        assert self._dead_letters is not None
        return producer, self._dead_letters

    def _clients(self) -> KafkaConsumer:
        k = self.settings.kafka
        ensure_topics(k, [k.topic_spectra, k.topic_predictions, k.topic_dead_letter])
        self._publisher()
        return self._new_consumer()

    def _new_consumer(self) -> KafkaConsumer:
        s, k = self.settings, self.settings.kafka
        self.tracker = RevocationTracker()
        consumer = make_consumer(
            k,
            s.group_id,
            max_poll_records=s.micro_batch_size,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            # Notice a topic (re)created after a broker restart within seconds, not minutes.
            metadata_max_age_ms=5000,
            fetch_max_bytes=s.max_in_flight_bytes,
            max_partition_fetch_bytes=min(16 << 20, s.max_in_flight_bytes),
        )
        consumer.subscribe([k.topic_spectra], listener=self.tracker)
        self.fetch_wait = IdleFetchWait(
            consumer, s.fetch_max_wait_ms, s.idle_fetch_max_wait_ms, s.idle_after_s
        )
        return consumer

    def run(self) -> None:
        """Process micro-batches until the stop event is set; drains and closes on the way out."""
        consumer = self._clients()
        self.metrics.broker_up.set(1)
        try:
            while not self.stop.is_set():
                t_poll = time.perf_counter()
                try:
                    batch = poll_micro_batch(
                        consumer,
                        self.settings.micro_batch_size,
                        self.settings.max_wait_ms / 1000,
                        self.settings.idle_poll_ms,
                        self.stop,
                        self.tracker,
                        self._hold,
                    )
                except KafkaError as exc:
                    self._kafka_error("poll", exc)
                    continue
                self.fetch_wait.update(bool(batch.records))
                # Asked after the poll: a batch is served by the model current when it is
                # processed, and a reload (checked inside) happens between batches only.
                predictor = self.source.current()
                self.observer.note_model(predictor)
                if batch.records:
                    self.metrics.stage_seconds.labels("poll").observe(time.perf_counter() - t_poll)
                    self._handle(batch, predictor, consumer)
                self.observer.lag(consumer)
                self.observer.broker(consumer)
                consumer = self._check_group(consumer)
        finally:
            self._close(consumer)

    def _check_group(self, consumer: KafkaConsumer) -> KafkaConsumer:
        """The consumer, or a new one if its group join has been stuck for ``group_stall_s``.

        Only called between batches, with nothing held: records not committed come again from
        the committed offsets to whichever member gets their partitions.
        """
        stable = getattr(getattr(consumer, "_coordinator", None), "stable", None)
        if not callable(stable) or stable():
            self._joining_since = None
            return consumer
        now = time.monotonic()
        if self._joining_since is None:
            self._joining_since = now
        if now - self._joining_since < self.settings.group_stall_s:
            return consumer
        log.warning(
            "group join of %s has not completed for %.0f s: replacing the consumer",
            self.settings.group_id,
            now - self._joining_since,
        )
        self.metrics.kafka_errors.labels("group_stall").inc()
        self._joining_since = None
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - it is being replaced anyway
            log.info("closing the stuck consumer: %s", exc)
        return self._new_consumer()

    def _close(self, consumer: KafkaConsumer) -> None:
        try:
            self._producer.close(timeout=10)
        except Exception as exc:  # noqa: BLE001 - closing must not mask the real error
            log.warning("closing the producer: %s", exc)
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the consumer: %s", exc)

    # -- one batch -------------------------------------------------------------------------

    def _handle(
        self,
        batch: MicroBatch,
        predictor: Predictor,
        consumer: KafkaConsumer,
    ) -> None:
        records = batch.records
        stage = self.metrics.stage_seconds.labels
        t0 = time.perf_counter()
        decoded = decode_batch([r.value for r in records], expected_grid=predictor.grid)
        t1 = time.perf_counter()
        stage("decode").observe(t1 - t0)
        bp: BatchPrediction | None = None
        values: list[bytes] = []
        audit: list[AuditRecord] = []
        if decoded.headers:
            # The raw messages: each prediction carries its spectrum's SHA-256 (and the audit).
            raw = [records[i].value for i in decoded.good_index]
            audited = self.audit is not None
            try:
                bp = predictor.predict(decoded.spectra)
                values, _, audit = encode_batch(
                    decoded.headers, bp, predictor, time.time(), raw, audit=audited
                )
            except Exception as exc:  # noqa: BLE001 - any model fault: retry, never lose
                self._retry_later(batch, consumer, exc)
                return
            t0, t1 = t1, time.perf_counter()
            self.metrics.inference_seconds.observe(t1 - t0)
            stage("predict").observe(t1 - t0)
        # Audit first: a prediction is never out without its audit record, even if the worker
        # is killed during the flush. A publish that then fails leaves audit records of
        # predictions never published; the batch comes again under new prediction ids and the
        # message id ties them together (nirwatch.records.audit keeps duplicates traceable).
        if self.audit is not None and audit:
            if not self._audit(audit):
                return  # stopping while the audit trail refuses: nothing sent, comes again
            t0, t1 = t1, time.perf_counter()
            stage("audit").observe(t1 - t0)
        try:
            producer, dead_letters = self._publisher()
            futures = self._send(batch, decoded, values, producer, dead_letters)
            self._flush(producer, futures)
        except (KafkaError, PublishError) as exc:
            # Not committed: the batch comes again (at-least-once; duplicates keep message_id).
            self._kafka_error("publish", exc)
            # After a broker restart an idempotent producer's id is unknown to the broker and
            # every later send fails: the next batch gets a new one.
            self._producer.discard()
            self._seek_back(batch, consumer)
            return
        t0, t1 = t1, time.perf_counter()
        stage("publish").observe(t1 - t0)
        try:
            consumer.commit(batch.commit_offsets())
        except KafkaError as exc:  # e.g. a rebalance took the partitions: their owner redoes them
            self._kafka_error("commit", exc)
            self._seek_back(batch, consumer)
            return
        stage("commit").observe(time.perf_counter() - t1)
        self._backoff_s = 0.0
        self.holding = 0
        self.batches += 1
        self.metrics.broker_up.set(1)
        self.observer.note_broker(True, operation="commit")
        self.observer.batch(batch, decoded, bp)
        self.published += len(decoded.headers) if bp is not None else 0

    def _send(
        self,
        batch: MicroBatch,
        decoded: DecodedBatch,
        values: list[bytes],
        producer: KafkaProducer,
        dead_letters: DeadLetterPublisher,
    ) -> list[Any]:
        """Send the batch's dead letters and predictions (keyed by instrument), no waiting."""
        records = batch.records
        futures: list[Any] = []
        for i, err in decoded.errors:
            r = records[i]
            futures.append(
                dead_letters.publish(
                    r.value,
                    r.key,
                    err.reason,
                    err.detail,
                    source_of(r.topic, r.partition, r.offset),
                    "worker",
                )
            )
        topic, send = self.settings.kafka.topic_predictions, producer.send
        for h, value in zip(decoded.headers, values, strict=True):
            futures.append(send(topic, value=value, key=h.instrument_id.encode()))
        return futures

    def _flush(self, producer: KafkaProducer, futures: list[Any]) -> None:
        """Flush, then make sure every record of the batch was acknowledged."""
        producer.flush()
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            raise PublishError(f"{len(failed)} of {len(futures)} records failed: {failed[0]}")

    def _audit(self, records: list[AuditRecord]) -> bool:
        """Append the batch's audit records; retried (idempotent by prediction id) until it works.

        Returns False only when the worker is stopping and the append still fails.
        """
        assert self.audit is not None
        backoff = self.settings.predict_backoff_s
        while True:
            try:
                self.audit.append_many(records)
                return True
            except NirwatchError as exc:
                self.metrics.kafka_errors.labels("audit").inc()
                log.error("audit append of %d records failed: %s", len(records), exc)
            if self.stop.wait(backoff):
                return False
            backoff = min(self.settings.predict_backoff_max_s, 2 * backoff)

    def _retry_later(self, batch: MicroBatch, consumer: KafkaConsumer, exc: Exception) -> None:
        self.metrics.predict_failures.inc()
        s = self.settings
        self._backoff_s = min(
            s.predict_backoff_max_s, max(s.predict_backoff_s, 2 * self._backoff_s)
        )
        log.error(
            "predictor raised on a batch of %d; retrying in %.1f s: %s",
            len(batch),
            self._backoff_s,
            exc,
        )
        self._seek_back(batch, consumer)
        self.stop.wait(self._backoff_s)

    def _seek_back(self, batch: MicroBatch, consumer: KafkaConsumer) -> None:
        for tp, offset in batch.first_offset.items():
            try:
                consumer.seek(tp, offset)
            except Exception as exc:  # noqa: BLE001 - revoked meanwhile: its new owner has it
                log.info("cannot seek %s back to %d: %s", tp, offset, exc)

    def _kafka_error(self, operation: str, exc: Exception) -> None:
        self.metrics.kafka_errors.labels(operation).inc()
        self.metrics.broker_up.set(0)
        log.warning("kafka %s failed: %s", operation, exc)
        self.observer.note_broker(False, operation=operation, error=type(exc).__name__)
        self.stop.wait(0.5)
