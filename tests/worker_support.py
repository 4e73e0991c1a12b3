"""Helpers for the worker tests: small real predictors, spectra on the wire, a running worker.

``LinearPredictor`` is a genuine (tiny) calibration: principal-component regression fitted by
numpy on synthetic two-component Beer–Lambert mixtures, with Hotelling T² and Q residual limits
taken from the calibration set. ``ScriptedPredictor`` wraps it to raise, return NaN or fall
back on demand, to exercise the worker's failure paths.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from inference.reload import StaticSource
from inference.settings import WorkerSettings
from inference.worker import InferenceWorker
from nirwatch.grid import wavelengths
from nirwatch.messages.spectrum import MAGIC, SpectrumHeader, encode_spectrum
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.predictor import BatchPrediction, Predictor
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_consumer, make_producer

GRID = "lin:600:1898:2"
WL = wavelengths(GRID)


def components() -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian-band pure-component spectra on :data:`GRID`, shape (650,) each."""
    a = np.exp(-(((WL - 1200) / 60) ** 2)) + 0.5 * np.exp(-(((WL - 1700) / 40) ** 2))
    b = np.exp(-(((WL - 1450) / 80) ** 2))
    return a, b


def mixtures(conc: np.ndarray, rng: np.random.Generator, noise: float = 1e-3) -> np.ndarray:
    """Beer–Lambert mixtures ``c*a + (1-c)*b`` plus baseline offset and noise, float32."""
    a, b = components()
    c = np.asarray(conc, dtype=float)[:, None]
    X = (
        c * a
        + (1 - c) * b
        + rng.normal(0, 0.01, (len(c), 1))
        + rng.normal(0, noise, (len(c), WL.size))
    )
    return X.astype(np.float32)


class LinearPredictor:
    """Principal-component regression with T²/Q limits (99 % empirical quantiles)."""

    def __init__(self, version: str = "v1", seed: int = 0, n_components: int = 3) -> None:
        rng = np.random.default_rng(seed)
        y = rng.uniform(0.1, 0.9, 200)
        X = mixtures(y, rng).astype(np.float64)
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        self.loadings_ = vt[:n_components].T  # (650, k)
        T = Xc @ self.loadings_
        self.score_var_ = T.var(axis=0, ddof=1)
        design = np.column_stack([np.ones(len(y)), T])
        self.coef_ = np.linalg.lstsq(design, y, rcond=None)[0]
        t2, q = self.diagnostics(X)
        self.t2_limit_ = float(np.quantile(t2, 0.99) * 1.5)
        self.q_limit_ = float(np.quantile(q, 0.99) * 1.5)
        self._version = version
        self.calls = 0

    def diagnostics(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xc = np.asarray(X, dtype=np.float64) - self.mean_
        T = Xc @ self.loadings_
        t2 = (T**2 / self.score_var_).sum(axis=1)
        q = ((Xc - T @ self.loadings_.T) ** 2).sum(axis=1)
        return t2, q

    version = property(lambda self: self._version)
    checksum = property(lambda self: f"sha256-{self._version}")
    target = property(lambda self: "api")
    unit = property(lambda self: "fraction")
    grid = property(lambda self: GRID)
    has_cnn = property(lambda self: False)  # PLS-only, like a bundle without a CNN
    cnn_load_error = property(lambda self: None)

    def predict(self, spectra: np.ndarray) -> BatchPrediction:
        self.calls += 1
        X = np.asarray(spectra, dtype=np.float64)
        Xc = X - self.mean_
        y = self.coef_[0] + (Xc @ self.loadings_) @ self.coef_[1:]
        t2, q = self.diagnostics(X)
        n = len(X)
        return BatchPrediction(
            value=y,
            model=np.full(n, "pls"),
            fallback_reason=["cnn_unavailable"] * n,
            cnn_value=np.full(n, np.nan),
            pls_value=y,
            t2=t2,
            q=q,
            t2_limit=self.t2_limit_,
            q_limit=self.q_limit_,
            out_of_model=~((t2 <= self.t2_limit_) & (q <= self.q_limit_)),
        )


@dataclass
class ScriptedPredictor:
    """A :class:`LinearPredictor` playing a CNN: ``script(call_no, X, bp)`` may raise or edit."""

    base: LinearPredictor
    script: Callable[[int, np.ndarray, BatchPrediction], BatchPrediction] | None = None
    calls: int = 0

    version = property(lambda self: self.base.version)
    checksum = property(lambda self: self.base.checksum)
    target = property(lambda self: self.base.target)
    unit = property(lambda self: self.base.unit)
    grid = property(lambda self: self.base.grid)
    has_cnn = property(lambda self: True)
    cnn_load_error = property(lambda self: None)

    def predict(self, spectra: np.ndarray) -> BatchPrediction:
        self.calls += 1
        bp = self.base.predict(spectra)
        n = len(spectra)
        # Serve as "cnn" (same values) unless the script says otherwise.
        bp.model, bp.fallback_reason, bp.cnn_value = np.full(n, "cnn"), [None] * n, bp.value
        return self.script(self.calls, spectra, bp) if self.script else bp


class SwitchableSource:
    """A predictor source the test swaps mid-stream (hot reload without a registry)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def current(self) -> Predictor:
        return self.predictor


def make_header(instrument: str, seq: int, grid: str = GRID, n_points: int = 650) -> SpectrumHeader:
    return SpectrumHeader(
        message_id=uuid.uuid4().hex,
        instrument_id=instrument,
        sample_id=f"{instrument}-{seq:06d}",
        timestamp=time.time(),
        grid=grid,
        n_points=n_points,
        product="tablet-A",
        batch="B1",
    )


def spectra_messages(
    n: int, instruments: list[str], seed: int = 1, offset: float = 0.0
) -> list[tuple[str, bytes, SpectrumHeader]]:
    """``n`` valid messages cycling over ``instruments``: (key, value, header)."""
    rng = np.random.default_rng(seed)
    X = mixtures(rng.uniform(0.2, 0.8, n), rng) + np.float32(offset)
    out = []
    for i in range(n):
        inst = instruments[i % len(instruments)]
        h = make_header(inst, i)
        out.append((inst, encode_spectrum(h, X[i]), h))
    return out


def produce(kafka: KafkaSettings, messages: list[tuple[str | None, bytes | None]]) -> None:
    """Send (key, value) pairs to the spectra topic, in order, and wait for them all."""
    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_predictions, kafka.topic_dead_letter])
    producer = make_producer(kafka)
    try:
        futures = [
            producer.send(kafka.topic_spectra, key=k.encode() if k is not None else None, value=v)
            for k, v in messages
        ]
        producer.flush()
        for f in futures:
            f.get(timeout=10)
    finally:
        producer.close()


@dataclass
class RunningWorker:
    """An :class:`InferenceWorker` on a thread with its own metrics registry."""

    worker: InferenceWorker
    thread: threading.Thread
    stop: threading.Event
    registry: CollectorRegistry
    errors: list[BaseException] = field(default_factory=list)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got

    def halt(self, timeout: float = 30.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        assert not self.errors, f"worker crashed: {self.errors!r}"


def worker_settings(kafka: KafkaSettings, **kw: Any) -> WorkerSettings:
    opts: dict[str, Any] = {
        "kafka": kafka,
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "micro_batch_size": 64,
        "max_wait_ms": 20,
        "idle_poll_ms": 100,
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "metrics_port": 0,
        "predict_backoff_s": 0.05,
        "predict_backoff_max_s": 0.2,
    }
    opts.update(kw)
    return WorkerSettings(**opts)


def start_worker(
    settings: WorkerSettings,
    source: Any = None,
    stop: threading.Event | None = None,
    metrics: WorkerMetrics | None = None,
    audit: Any = None,
) -> RunningWorker:
    metrics = metrics or WorkerMetrics(CollectorRegistry())
    registry = metrics.registry
    stop = stop or threading.Event()
    source = source or StaticSource(LinearPredictor())
    worker = InferenceWorker(settings, source, metrics, stop, audit=audit)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced by halt()
            errors.append(exc)

    thread = threading.Thread(target=target, name="worker", daemon=True)
    thread.start()
    return RunningWorker(worker, thread, stop, registry, errors)


def committed_total(kafka: KafkaSettings, group_id: str) -> int:
    """Sum of the group's committed offsets over the spectra topic's partitions."""
    consumer = make_consumer(kafka, group_id)
    try:
        parts = consumer.partitions_for_topic(kafka.topic_spectra) or set()
        total = 0
        for p in parts:
            off = consumer.committed(TopicPartition(kafka.topic_spectra, p))
            total += off or 0
        return total
    finally:
        consumer.close(autocommit=False)


def malformed(good_value: bytes) -> dict[str, bytes | None]:
    """One message per dead-letter reason, built from a valid one."""
    head_len = struct.unpack_from("<H", good_value, 6)[0]
    head = json.loads(good_value[8 : 8 + head_len])
    body = good_value[8 + head_len :]

    def with_header(h: dict, payload: bytes = body) -> bytes:
        raw = json.dumps(h).encode()
        return MAGIC + bytes([1, 0]) + struct.pack("<H", len(raw)) + raw + payload

    nan_body = np.frombuffer(body, dtype="<f4").copy()
    nan_body[10] = np.nan
    inf_body = nan_body.copy()
    inf_body[10] = np.inf
    missing = {k: v for k, v in head.items() if k != "sample_id"}
    other_grid = make_header("probe-0", 0, grid="lin:600:1898:4", n_points=325)
    return {
        "bad_magic": b"this is not a spectrum at all, just garbage bytes",
        "too_short": b"NI",
        "unknown_version": MAGIC + bytes([9]) + good_value[5:],
        "non_finite": with_header(head, nan_body.tobytes()),
        "non_finite_inf": with_header(head, inf_body.tobytes()),
        "length_mismatch": with_header(head, body[:-8]),
        "missing_field": with_header(missing),
        "unknown_grid": with_header({**head, "grid": "log:1:2"}),
        "bad_header": MAGIC + bytes([1, 0]) + struct.pack("<H", 5) + b"{nope" + body,
        "grid_mismatch": encode_spectrum(other_grid, np.ones(325, dtype=np.float32)),
    }
