"""The worker loop's metrics: what a committed batch adds, model info, broker up, lag.

Kept apart from :mod:`inference.worker` so the loop reads as the delivery protocol; nothing
here does I/O beyond reading the consumer's own state.
"""

from __future__ import annotations

import collections
import logging
import time

import numpy as np
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from prometheus_client import Counter

from inference.batching import MicroBatch
from nirwatch.logs import log_event
from nirwatch.messages.spectrum import DecodedBatch
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.predictor import BatchPrediction, Predictor

log = logging.getLogger(__name__)


class WorkerObserver:
    """Turns the worker's batches and client state into :class:`WorkerMetrics` updates."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._served: tuple[str, str] | None = None
        self._lag_series: set[tuple[str, str]] = set()
        self._next_broker_check = 0.0
        self._broker_up: bool | None = None

    def note_model(self, predictor: Predictor) -> None:
        """``nirwatch_model_info`` for the predictor serving now (set when it changes)."""
        served = (predictor.version, predictor.checksum)
        if served == self._served:
            return
        self._served = served
        self.metrics.model_info.info(
            {
                "version": predictor.version,
                "checksum": predictor.checksum,
                "target": predictor.target,
                "unit": predictor.unit,
                "grid": predictor.grid,
                "cnn": cnn_state(predictor),
            }
        )

    def batch(self, batch: MicroBatch, decoded: DecodedBatch, bp: BatchPrediction | None) -> None:
        """Count a committed micro-batch: consumed, predictions, fallbacks, latency, gauges."""
        m, label = self.metrics, self.metrics.label
        records = batch.records
        m.batch_size.observe(len(records))
        for key, n in collections.Counter(r.key for r in records).items():
            name = key.decode("utf-8", errors="replace") if key else ""
            m.consumed.labels(label(name)).inc(n)
        if bp is None:
            return
        headers = decoded.headers
        instruments = [label(h.instrument_id) for h in headers]
        models = [str(x) for x in bp.model.tolist()]
        for (inst, model), n in collections.Counter(zip(instruments, models, strict=True)).items():
            m.predictions.labels(inst, model).inc(n)
        for reason, n in collections.Counter(r for r in bp.fallback_reason if r).items():
            m.fallbacks.labels(reason).inc(n)
        _count_flagged(m.out_of_model, instruments, bp.out_of_model)
        if bp.outside_range is not None:
            _count_flagged(m.outside_range, instruments, bp.outside_range)
        now = time.time()
        observe = m.latency_seconds.observe
        for h in headers:
            observe(max(0.0, now - h.timestamp))
        # Gauges show each instrument's most recent spectrum of the batch.
        last = {inst: i for i, inst in enumerate(instruments)}
        values, t2, q = bp.value.tolist(), bp.t2.tolist(), bp.q.tolist()
        for inst, i in last.items():
            m.last_prediction.labels(inst, label(headers[i].product)).set(values[i])
            m.t2.labels(inst).set(t2[i])
            m.q.labels(inst).set(q[i])
        m.t2_limit.set(bp.t2_limit)
        m.q_limit.set(bp.q_limit)

    def broker(self, consumer: KafkaConsumer) -> None:
        """``broker_up`` from the consumer's open connections, at most once a second.

        kafka-python reconnects silently, so an idle worker sees no error during an outage;
        its ``connection-count`` metric drops to 0 when no broker can be reached.
        """
        now = time.monotonic()
        if now < self._next_broker_check:
            return
        self._next_broker_check = now + 1.0
        try:
            count = consumer.metrics().get("consumer-metrics", {}).get("connection-count")
        except Exception as exc:  # noqa: BLE001 - a metrics read must never stop the loop
            log.debug("connection count unavailable: %s", exc)
            return
        if count is not None:
            self.metrics.broker_up.set(1 if count > 0 else 0)
            self.note_broker(count > 0, connections=int(count))

    def note_broker(self, up: bool, **fields: object) -> None:
        """Log ``broker_lost`` / ``broker_back`` once per change of the broker's state."""
        if up != self._broker_up and (self._broker_up is not None or not up):
            log_event(
                log, "broker_back" if up else "broker_lost",
                level=logging.INFO if up else logging.WARNING, **fields,
            )  # fmt: skip
        self._broker_up = up

    def lag(self, consumer: KafkaConsumer) -> None:
        """Lag per owned partition from the high-water marks; forget partitions gone."""
        seen: set[tuple[str, str]] = set()
        try:
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                pos = consumer.position(tp, timeout_ms=100) if high is not None else None
                if high is None or pos is None:
                    continue
                labels = (tp.topic, str(tp.partition))
                self.metrics.consumer_lag.labels(*labels).set(max(0, high - pos))
                seen.add(labels)
        except (KafkaError, AssertionError) as exc:
            log.debug("lag not updated: %s", exc)
            return
        for labels in self._lag_series - seen:  # partitions this worker no longer owns
            self.metrics.consumer_lag.remove(*labels)
        self._lag_series = seen


def cnn_state(predictor: Predictor) -> str:
    """``loaded``, ``failed`` (the bundle has a CNN that did not load) or ``none`` (PLS-only).

    Exported as the ``cnn`` label of ``nirwatch_model_info``: the fallback alert fires only for
    bundles that have a CNN, since a PLS-only champion serves every prediction by PLS.
    """
    if predictor.has_cnn:
        return "loaded"
    return "failed" if predictor.cnn_load_error is not None else "none"


def _count_flagged(counter: Counter, instruments: list[str], flags: np.ndarray) -> None:
    """Add the flagged spectra of a batch to ``counter``, per instrument label."""
    for inst, n in collections.Counter(
        i for i, f in zip(instruments, flags.tolist(), strict=True) if f
    ).items():
        counter.labels(inst).inc(n)
