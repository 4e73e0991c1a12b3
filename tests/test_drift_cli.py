"""``nirwatch drift-monitor`` as a process: Kafka in, drift gauges on its metrics endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from kafka import KafkaProducer
from support import wait_until

from nirwatch.messages.prediction import Prediction
from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LAUNCH = (
    "import argparse, sys\n"
    "from monitoring import cli_drift\n"
    "p = argparse.ArgumentParser()\n"
    "cli_drift.configure(p)\n"
    "sys.exit(cli_drift.run(p.parse_args(sys.argv[1:])))\n"
)


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return ""


def test_drift_monitor_process_exports_drift(kafka_settings: KafkaSettings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka_settings.bootstrap),
        "NIRWATCH_KAFKA_TOPIC_PREDICTIONS": kafka_settings.topic_predictions,
        "NIRWATCH_KAFKA_TOPIC_LAB_RESULTS": kafka_settings.topic_lab_results,
        "NIRWATCH_DRIFT_WARMUP": "100",
        # its own group: another test's killed drift monitor holds "nirwatch-drift" ~75 s
        "NIRWATCH_DRIFT_GROUP_ID": f"drift-cli-{port}",
    }
    args = ["--metrics-port", str(port), "--rmsecv", "2.0"]
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=env)
    try:
        rng = np.random.default_rng(1)
        values = np.concatenate([rng.normal(200, 3, 300), rng.normal(212, 3, 150)])
        producer = KafkaProducer(**kafka_settings.client_options())
        for i, v in enumerate(values):
            p = Prediction(
                prediction_id=f"p{i}", message_id=f"m{i}", instrument_id="probe-9",
                sample_id=f"s{i}", timestamp=0.0, published_at=0.0, target="api",
                value=float(v), model="pls", model_version="v7", bundle_checksum="c",
                product="tablet-x",
            )  # fmt: skip
            producer.send(kafka_settings.topic_predictions, p.encode(), key=b"probe-9")
        producer.flush()
        producer.close()
        line = (
            'nirwatch_drift_detected{detector="content_page_hinkley",'
            'instrument="probe-9",product="tablet-x"} 1.0'
        )
        wait_until(
            lambda: line in _metrics(port), 90, f"{line} in the metrics", interval_s=0.2,
            abort=lambda: "drift-monitor exited" if proc.poll() is not None else None,
        )  # fmt: skip
        assert "nirwatch_model_rmsecv 2.0" in _metrics(port)
        # only its own metric set: a worker metric at zero would fire worker alerts on this job
        exposition = _metrics(port)
        assert "nirwatch_broker_up" not in exposition and "nirwatch_model_info" not in exposition
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
