"""Prometheus metrics of each nirwatch process: worker, drift monitor, adapters, OPC UA server.

Each process exports only its own set (:class:`WorkerMetrics`, :class:`DriftMetrics`,
:class:`FileDropMetrics`; the retrain service's are in :mod:`training.service`), so an alert
on a worker metric cannot fire against another process's endpoint.

Every metric takes a ``registry`` (tests pass a fresh ``CollectorRegistry``). Label sets are
bounded: instrument and product values beyond ``max_label_values`` distinct ones are folded
into ``"other"`` so a misbehaving producer cannot explode the time-series count.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)


class BoundedLabels:
    """Maps raw label values to at most ``limit`` distinct ones, the rest to ``"other"``."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return "other"


class WorkerMetrics:
    """All metrics the inference worker exports (names are the dashboards' contract)."""

    def __init__(self, registry: CollectorRegistry, max_label_values: int = 64) -> None:
        self.registry = registry
        self.label = BoundedLabels(max_label_values)
        # Registered in this order (the order of the /metrics page): flow, timing, model state.
        self._flow(registry)
        self._timing(registry)
        self._model_state(registry)

    def _flow(self, r: CollectorRegistry) -> None:
        """What went through: consumed, predicted, dead-lettered, fallbacks, flags."""
        self.consumed = Counter(
            "nirwatch_spectra_consumed", "Spectrum messages consumed", ["instrument"], registry=r
        )
        self.predictions = Counter(
            "nirwatch_predictions", "Predictions published", ["instrument", "model"], registry=r
        )
        self.dead_lettered = Counter(
            "nirwatch_dead_lettered",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "nirwatch_fallbacks",
            "Predictions served by PLS instead of the CNN",
            ["reason"],
            registry=r,
        )
        self.out_of_model = Counter(
            "nirwatch_out_of_model",
            "Spectra outside the calibration's 99% T2/Q limits",
            ["instrument"],
            registry=r,
        )
        self.outside_range = Counter(
            "nirwatch_outside_range",
            "Predictions outside the calibration's reference range (extrapolations, held)",
            ["instrument"],
            registry=r,
        )

    def _timing(self, r: CollectorRegistry) -> None:
        """Micro-batch sizes, stage and end-to-end latencies, consumer lag."""
        self.batch_size = Histogram(
            "nirwatch_batch_size", "Spectra per micro-batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "nirwatch_inference_seconds",
            "Preprocessing + model time per micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "nirwatch_batch_stage_seconds",
            "Time per micro-batch in each stage of the worker loop (poll includes waiting)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "nirwatch_end_to_end_latency_seconds",
            "Instrument timestamp to prediction published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "nirwatch_consumer_lag_messages",
            "Messages behind the partition high-water mark",
            ["topic", "partition"],
            registry=r,
        )

    def _model_state(self, r: CollectorRegistry) -> None:
        """The model serving and its latest outputs, reloads, the broker's health."""
        self.last_prediction = Gauge(
            "nirwatch_last_prediction",
            "Most recent predicted value",
            ["instrument", "product"],
            registry=r,
        )
        self.t2 = Gauge(
            "nirwatch_hotelling_t2", "Most recent Hotelling T2", ["instrument"], registry=r
        )
        self.q = Gauge("nirwatch_q_residual", "Most recent Q residual", ["instrument"], registry=r)
        self.t2_limit = Gauge(
            "nirwatch_hotelling_t2_limit", "99% T2 limit of the model", registry=r
        )
        self.q_limit = Gauge("nirwatch_q_residual_limit", "99% Q limit of the model", registry=r)
        self.predict_failures = Counter(
            "nirwatch_predict_failures",
            "Micro-batches whose prediction raised (batch retried, nothing committed)",
            registry=r,
        )
        # Labels: version, checksum, target, unit, grid and ``cnn``: "loaded" (the bundle's CNN
        # serves), "failed" (the bundle has one that did not load) or "none" (PLS-only bundle,
        # where PLS serving everything is not a fallback).
        self.model_info = Info("nirwatch_model", "Model bundle being served", registry=r)
        self.model_reloads = Counter(
            "nirwatch_model_reloads", "Hot reloads of the champion model", ["outcome"], registry=r
        )
        self.broker_up = Gauge(
            "nirwatch_broker_up",
            "1 while the worker can reach Kafka, 0 during an outage",
            registry=r,
        )
        self.kafka_errors = Counter(
            "nirwatch_kafka_errors", "Kafka client errors by operation", ["operation"], registry=r
        )


class DriftMetrics:
    """Metrics of the drift monitor (``nirwatch drift-monitor``, job ``nirwatch-drift``).

    Only what the drift monitor knows: detector states and scores, the lab checks and their
    limits, and the yardstick RMSECV. The worker's metrics (:class:`WorkerMetrics`) live in
    the worker's process; a drift monitor exporting them would export them at zero (a broker
    "down", no model) and fire worker alerts.
    """

    def __init__(self, registry: CollectorRegistry, max_label_values: int = 64) -> None:
        self.registry = registry
        self.label = BoundedLabels(max_label_values)
        r = registry
        group = ["instrument", "product"]
        self.drift_detected = Gauge(
            "nirwatch_drift_detected",
            "1 while a drift detector is in the drift state",
            [*group, "detector"],
            registry=r,
        )
        self.drift_score = Gauge(
            "nirwatch_drift_score",
            "Drift detector statistic divided by its threshold (>=1 means drift)",
            [*group, "detector"],
            registry=r,
        )
        self.lab_rmse = Gauge(
            "nirwatch_lab_rmse", "Rolling RMSE of predictions vs lab results", group, registry=r
        )
        self.lab_bias = Gauge(
            "nirwatch_lab_bias", "Rolling bias (prediction - lab)", group, registry=r
        )
        self.lab_rmse_limit = Gauge(
            "nirwatch_lab_rmse_limit",
            "RMSE above which the lab-reference detector signals drift (for the current window)",
            group,
            registry=r,
        )
        self.lab_bias_limit = Gauge(
            "nirwatch_lab_bias_limit",
            "|bias| above which the lab-reference detector signals drift (current window)",
            group,
            registry=r,
        )
        self.lab_rmsecv = Gauge(
            "nirwatch_model_rmsecv", "Calibration RMSECV of the served model", registry=r
        )


class FileDropMetrics:
    """Metrics of the file-drop adapter (``nirwatch file-drop``): throughput and inbox backlog."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.files = Counter(
            "nirwatch_file_drop_files",
            "Dropped files handled, by outcome (done, failed, retry)",
            ["outcome"],
            registry=r,
        )
        self.spectra = Counter(
            "nirwatch_file_drop_spectra",
            "Spectra of dropped files, by result (sent, dead_lettered)",
            ["result"],
            registry=r,
        )
        self.inbox_files = Gauge(
            "nirwatch_file_drop_inbox_files",
            "Files waiting in the inbox (settling, ready or kept for a retry)",
            registry=r,
        )
        self.oldest_file_age_seconds = Gauge(
            "nirwatch_file_drop_oldest_file_age_seconds",
            "Age of the oldest waiting file by its modification time (0 when the inbox is empty)",
            registry=r,
        )
        for outcome in ("done", "failed", "retry"):
            self.files.labels(outcome)
        for result in ("sent", "dead_lettered"):
            self.spectra.labels(result)


class OpcUaServerMetrics:
    """Metrics of ``nirwatch opcua-server``: sessions, values written, latency, refusals, staleness."""

    def __init__(self, registry: CollectorRegistry, max_label_values: int = 64) -> None:
        self.registry = registry
        self.label = BoundedLabels(max_label_values)
        r = registry
        self.sessions = Gauge(
            "nirwatch_opcua_sessions", "OPC UA client sessions open on the server", registry=r
        )
        self.publishes = Counter(
            "nirwatch_opcua_publishes",
            "Predictions written into the OPC UA address space, by instrument",
            ["instrument"],
            registry=r,
        )
        self.latency_seconds = Histogram(
            "nirwatch_opcua_publish_latency_seconds",
            "From the prediction's publication to its value in the address space",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected_logins = Counter(
            "nirwatch_opcua_rejected_logins",
            "Refused OPC UA logins, by kind (password, certificate, anonymous)",
            ["kind"],
            registry=r,
        )
        self.stale = Gauge(
            "nirwatch_opcua_value_stale",
            "1 while an instrument's OPC UA value is stale (no prediction for stale_after_s)",
            ["instrument"],
            registry=r,
        )
        self.value_age_seconds = Gauge(
            "nirwatch_opcua_value_age_seconds",
            "Seconds since an instrument's OPC UA value was last written",
            ["instrument"],
            registry=r,
        )
        self.broker_reachable = Gauge(
            "nirwatch_opcua_broker_reachable", "1 when the last broker check answered", registry=r
        )
        self.consumer_lag = Gauge(
            "nirwatch_opcua_consumer_lag",
            "Predictions on the topic not yet written to OPC UA (all partitions)",
            registry=r,
        )
        for kind in ("password", "certificate", "anonymous"):
            self.rejected_logins.labels(kind)


class OpcUaIngestMetrics:
    """Metrics of ``nirwatch opcua-ingest``: spectra taken from an analyser, reconnects."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.spectra = Counter(
            "nirwatch_opcua_ingest_spectra",
            "Spectra read from the analyser, by result (sent, dead_lettered, duplicate, overwritten: "
            "replaced on the analyser before its id and time could be read)",
            ["result"],
            registry=r,
        )
        self.reconnects = Counter(
            "nirwatch_opcua_ingest_reconnects",
            "Connections to the analyser's OPC UA server re-established after a loss",
            registry=r,
        )
        self.connected = Gauge(
            "nirwatch_opcua_ingest_connected",
            "1 while connected to the analyser's OPC UA server",
            registry=r,
        )
        for result in ("sent", "dead_lettered", "duplicate", "overwritten"):
            self.spectra.labels(result)


class RetrainMetrics:
    """Metrics of ``nirwatch retrain-service``: retrains by decision, webhook requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.retrains = Counter(
            "nirwatch_retrains", "Retrains by decision", ["decision"], registry=registry
        )
        self.webhook = Counter(
            "nirwatch_retrain_webhook_requests",
            "Webhook requests by outcome",
            ["outcome"],
            registry=registry,
        )
        self.last_retrain = Gauge(
            "nirwatch_retrain_last_timestamp_seconds", "End of the last retrain", registry=registry
        )
        self.labelled = Gauge(
            "nirwatch_retrain_labelled_spectra", "Recent labelled spectra held", registry=registry
        )
