"""Feed a :class:`~monitoring.drift_monitor.DriftMonitor` from Kafka.

Consumes the predictions topic and the lab-results topic in its own consumer group, so drift
detection can run beside the inference workers (one process for the whole line, no cost on
the workers' hot path) instead of inside them. The monitor writes the DriftMetrics gauges
that Prometheus scrapes from the process running this loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from monitoring.drift_monitor import DriftMonitor
from nirwatch.messages.lab_result import decode_lab_result
from nirwatch.messages.prediction import Prediction, decode_prediction
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_consumer, poll_decoded


def run_drift_consumer(
    kafka: KafkaSettings,
    monitor: DriftMonitor,
    stop: threading.Event,
    *,
    group_id: str = "nirwatch-drift",
    on_predictions: Callable[[list[Prediction]], None] | None = None,
    **consumer_options: Any,
) -> None:
    """Consume predictions and lab results into ``monitor`` until ``stop`` is set.

    Malformed records are logged and skipped (they never stop monitoring). Offsets are
    committed automatically: detector state is in memory, so after a restart the detectors
    warm up again on new data.

    Parameters
    ----------
    on_predictions : callable, optional
        Called with each polled batch of decoded predictions (after the monitor saw them).
    consumer_options
        Extra kafka-python consumer options (e.g. ``session_timeout_ms`` in tests).
    """
    topics = [kafka.topic_predictions, kafka.topic_lab_results]
    ensure_topics(kafka, topics)
    consumer = make_consumer(
        kafka, group_id, *topics, **{"enable_auto_commit": True, **consumer_options}
    )
    decoders = {
        kafka.topic_predictions: decode_prediction,
        kafka.topic_lab_results: decode_lab_result,
    }
    try:
        while not stop.is_set():
            polled = poll_decoded(consumer, decoders, timeout_ms=250)
            predictions: list[Prediction] = polled.get(kafka.topic_predictions, [])
            if predictions:
                monitor.observe(predictions)
                if on_predictions is not None:
                    on_predictions(predictions)
            if kafka.topic_lab_results in polled:
                monitor.observe_lab(polled[kafka.topic_lab_results])
    finally:
        consumer.close()
