"""Drift monitoring fed from Kafka (real broker): predictions and lab results topics."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from support import wait_until

from monitoring.drift_consumer import run_drift_consumer
from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.prediction import Prediction
from nirwatch.metrics import DriftMetrics
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics

pytestmark = pytest.mark.kafka


def _prediction(i: int, value: float) -> Prediction:
    return Prediction(
        prediction_id=f"p{i}", message_id=f"m{i}", instrument_id="probe-1",
        sample_id=f"s{i}", timestamp=time.time(), published_at=time.time(),
        target="api_content", value=value, model="cnn", model_version="v1",
        bundle_checksum="c", product="tablet-a", cnn_value=value, pls_value=value,
        t2=3.0, q=0.001, t2_limit=15.0, q_limit=0.01,
    )  # fmt: skip


def test_drift_consumer_detects_shift_and_joins_lab_results(kafka_settings: KafkaSettings) -> None:
    ensure_topics(
        kafka_settings, [kafka_settings.topic_predictions, kafka_settings.topic_lab_results]
    )
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftMetrics(registry), DriftSettings(warmup=100), rmsecv=2.0)
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(200, 3, 400), rng.normal(215, 3, 200)])
    producer = KafkaProducer(**kafka_settings.client_options())
    for i, v in enumerate(values):
        producer.send(
            kafka_settings.topic_predictions, _prediction(i, float(v)).encode(), key=b"probe-1"
        )
    producer.send(kafka_settings.topic_predictions, b"not a prediction", key=b"probe-1")
    for i in range(20):  # lab says 6 mg less than predicted: biased model
        lab = LabResult(f"s{i}", float(values[i]) - 6.0, 1.0, instrument_id="probe-1", unit="mg")
        producer.send(kafka_settings.topic_lab_results, lab.encode(), key=f"s{i}".encode())
    producer.send(kafka_settings.topic_lab_results, b"{}", key=b"bad")
    producer.flush()
    producer.close()

    seen: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=run_drift_consumer,
        args=(kafka_settings, monitor, stop),
        kwargs={
            "group_id": "drift-test",
            "on_predictions": lambda ps: seen.append(len(ps)),
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
        },
    )
    thread.start()
    try:
        wait_until(lambda: sum(seen) == len(values) and registry.get_sample_value(
            "nirwatch_lab_bias", {"instrument": "probe-1", "product": "tablet-a"}
        ) is not None, 120, "every prediction and the lab bias", interval_s=0.1)  # fmt: skip
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    detectors = {d[2] for d in monitor.drifting()}
    assert {"content_page_hinkley", "lab_reference"} <= detectors
    bias = registry.get_sample_value(
        "nirwatch_lab_bias", {"instrument": "probe-1", "product": "tablet-a"}
    )
    assert bias == pytest.approx(6.0)
