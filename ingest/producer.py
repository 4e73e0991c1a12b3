"""The ingest edge: validate spectra, publish good ones keyed by instrument, dead-letter the rest.

Every spectrum is encoded by :func:`nirwatch.messages.spectrum.encode_spectrum`, which refuses
what the worker's decoder would refuse, with the same reason; bytes an adapter received ready
encoded are checked by that decoder itself. A refused spectrum (NaN/inf, wrong length for its
grid, missing or bad header fields, unknown grid) goes to the dead-letter topic as it came,
with its reason (``stage=ingest``), and never stops the adapter. The Kafka key is the
instrument id; nirwatch's producer defaults keep one request in flight per connection, so each
instrument's spectra stay in order.

After a broker restart an idempotent producer must be recreated (Tansu forgets producer ids):
a failed send marks the producer failed (:class:`nirwatch.transport.kafka.ProducerSlot`), the
next send recreates it and re-sends what was not acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError

from ingest.settings import IngestSettings
from nirwatch.errors import WireFormatError
from nirwatch.logs import log_event
from nirwatch.messages.deadletter import DeadLetterPublisher
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.spectrum import (
    SpectrumHeader,
    decode_spectrum,
    encode_spectrum,
    encode_spectrum_unchecked,
)
from nirwatch.transport.kafka import ProducerSlot, make_producer

log = logging.getLogger(__name__)


class SpectrumProducer:
    """Validating, keyed, restart-tolerant producer of spectra (and lab results).

    Parameters
    ----------
    settings : IngestSettings
    source : str
        Adapter name written to ``nirwatch.dlq.source`` of dead letters (e.g. ``"simulator"``).
    expected_grid : str, optional
        Reject spectra on another wavelength grid (reason ``grid_mismatch``).
    producer_factory : callable, optional
        Builds the KafkaProducer (default :func:`nirwatch.transport.kafka.make_producer` with the
        settings' timeouts).

    Attributes
    ----------
    sent, acked, failed, dead_lettered, lab_results_sent : int
        Counters since creation (``acked``/``failed`` are updated by producer callbacks).
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        source: str = "ingest",
        expected_grid: str | None = None,
        producer_factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.source = source
        self.expected_grid = expected_grid
        factory = producer_factory or (
            lambda: make_producer(
                settings.kafka,
                delivery_timeout_ms=settings.delivery_timeout_ms,
                request_timeout_ms=min(settings.delivery_timeout_ms // 2, 30_000),
                max_block_ms=settings.max_block_ms,
            )
        )
        self._slot = ProducerSlot(factory, on_new=self._on_new_producer)
        self._dlq: DeadLetterPublisher | None = None
        self._lock = threading.Lock()
        self._retry: deque[tuple[str, bytes | None, bytes]] = deque(
            maxlen=settings.max_retry_buffer or None
        )
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.dead_lettered = 0
        self.dead_lettered_by_reason: dict[str, int] = {}
        self.lab_results_sent = 0
        #: Sends are failing: logged once as broker_lost, and broker_back at the next ack.
        self._down = False

    @property
    def recreated(self) -> int:
        """Producers replaced after a failed send."""
        return self._slot.recreated

    # -- client lifecycle -------------------------------------------------------------------
    def _on_new_producer(self, producer: KafkaProducer) -> None:
        self._dlq = DeadLetterPublisher(producer, self.kafka.topic_dead_letter)
        with self._lock:
            pending = list(self._retry)
            self._retry.clear()
        for topic, key, value in pending:
            self._send_record(producer, topic, key, value)

    def _send_record(
        self, producer: KafkaProducer, topic: str, key: bytes | None, value: bytes
    ) -> Any:
        def ok(_meta: object) -> None:
            self.acked += 1
            if self._down:
                self._down = False
                log_event(log, "broker_back", topic=topic, retrying=len(self._retry))

        def failed(exc: BaseException) -> None:
            # Runs on the producer's I/O thread: only record the failure here.
            self.failed += 1
            self._slot.mark_failed()
            with self._lock:
                self._retry.append((topic, key, value))
            if self._down:  # one line per outage, not one per message
                log.debug("send to %s failed: %s", topic, exc)
                return
            self._down = True
            log_event(
                log, "broker_lost", level=logging.WARNING, topic=topic, error=str(exc),
                action="kept for re-sending",
            )  # fmt: skip

        try:
            future = producer.send(topic, value=value, key=key)
        except KafkaError as exc:
            failed(exc)
            return None
        future.add_callback(ok)
        future.add_errback(failed)
        return future

    # -- spectra ----------------------------------------------------------------------------
    def send(self, header: SpectrumHeader, absorbances: np.ndarray) -> bool:
        """Validate and publish one spectrum; False when it was dead-lettered instead."""
        try:
            value = encode_spectrum(header, absorbances, self.expected_grid)
        except WireFormatError as exc:
            key = header.instrument_id if isinstance(header.instrument_id, str) else None
            raw = encode_spectrum_unchecked(header, absorbances)
            self._dead_letter(raw, key.encode() if key else None, exc)
            return False
        self._publish(value, header.instrument_id.encode())
        return True

    def send_raw(self, value: bytes | None, key: str | None) -> bool:
        """Validate and publish an already-encoded spectrum (adapters that receive bytes)."""
        raw_key = key.encode() if key else None
        try:
            header, _ = decode_spectrum(value, self.expected_grid)
        except WireFormatError as exc:
            self._dead_letter(value, raw_key, exc)
            return False
        if key != header.instrument_id:
            self._dead_letter(
                value,
                raw_key,
                WireFormatError(
                    "bad_field",
                    f"key {key!r} differs from instrument_id {header.instrument_id!r}",
                ),
            )
            return False
        assert value is not None
        self._publish(value, raw_key)
        return True

    def _publish(self, value: bytes, key: bytes | None) -> None:
        self._send_record(self._slot.get(), self.kafka.topic_spectra, key, value)
        self.sent += 1

    def _dead_letter(self, value: bytes | None, key: bytes | None, exc: WireFormatError) -> None:
        self._slot.get()
        assert self._dlq is not None
        try:
            self._dlq.publish(value, key, exc.reason, exc.detail, self.source, "ingest")
        except MessageSizeTooLargeError as err:
            # Too big for the broker even as a dead letter: counted and logged, client intact.
            log.warning("dead letter (%s) too large to send: %s", exc.reason, err)
        except KafkaError as err:
            self._slot.mark_failed()
            log.warning("dead letter (%s) could not be sent: %s", exc.reason, err)
        self.dead_lettered += 1
        self.dead_lettered_by_reason[exc.reason] = (
            self.dead_lettered_by_reason.get(exc.reason, 0) + 1
        )

    # -- lab results ------------------------------------------------------------------------
    def send_lab_result(self, result: LabResult) -> None:
        """Publish a lab reference value to the lab-results topic, keyed by sample id."""
        self._send_record(
            self._slot.get(),
            self.kafka.topic_lab_results,
            result.sample_id.encode(),
            result.encode(),
        )
        self.lab_results_sent += 1

    # -- shutdown ---------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything sent so far is acknowledged (or failed).

        Returns True when every spectrum and lab result sent so far was acknowledged; False
        when some still wait for a re-send (they stay buffered) or the flush timed out.
        """
        producer = self._slot.current
        if producer is None:
            return not self._retry
        ok = True
        try:
            producer.flush(timeout=timeout)
        except KafkaError as exc:
            log.warning("flush failed: %s", exc)
            ok = False
        if self._slot.failed and self._retry:
            # One more attempt with a fresh client for what failed.
            try:
                self._slot.get().flush(timeout=timeout)
                ok = True
            except KafkaError as exc:
                log.warning("flush after recreating the producer failed: %s", exc)
                ok = False
        with self._lock:
            return ok and not self._retry

    def dead_letter(self, value: bytes | None, key: str | None, reason: str, detail: str) -> None:
        """Dead-letter what an adapter could not turn into spectra at all (e.g. a file).

        ``reason`` is one of :data:`nirwatch.messages.codec.REASONS` (e.g. ``"bad_file"``).
        """
        self._dead_letter(value, key.encode() if key else None, WireFormatError(reason, detail))

    def close(self, timeout: float = 30.0) -> None:
        """Flush and close the client."""
        self.flush(timeout)
        self._slot.close(timeout)

    def __enter__(self) -> SpectrumProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
