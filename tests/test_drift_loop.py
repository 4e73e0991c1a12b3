"""End to end: drift → alert in Prometheus → Alertmanager → webhook → retrain → auto promote
→ the worker serves the new version. Real broker, Prometheus, Alertmanager; nothing mocked.

Only durations are shortened for the test (the rules' ``for: 1m`` becomes ``for: 3s``,
Alertmanager's retrain route waits 1 s instead of 10 s); the routing, the token and the
retrain code are the repository's own. With ``NIRWATCH_E2E_PRODUCTION_TIMINGS=1`` the rule and
route durations are left as committed. Prints the measured delays (docs/results/drift-loop.md).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import promstack
import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, start_http_server
from support import wait_until

from inference.reload import RegistrySource
from inference.settings import WorkerSettings
from inference.worker import InferenceWorker
from monitoring.drift_consumer import run_drift_consumer
from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.prediction import Prediction
from nirwatch.messages.spectrum import SpectrumHeader, encode_spectrum, new_message_id
from nirwatch.metrics import DriftMetrics, WorkerMetrics
from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import (
    GRID,
    Drift,
    ProbeSpec,
    TabletLineSimulator,
    calibration_set,
)
from nirwatch.transport.broker import free_port
from training.labelled import Dataset
from training.retrain import RetrainSettings, fit_bundle_fitter
from training.service import RetrainService, consume_labelled

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "e2e-token-0123456789abcdef0123"
RATE_HZ = 80.0  # spectra per second from the simulated probe
N_NORMAL = 1200  # spectra before the drift (15 s)
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
PRODUCTION_TIMINGS = os.environ.get("NIRWATCH_E2E_PRODUCTION_TIMINGS") == "1"

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(not promstack.HAVE_BINARIES, reason="prometheus/alertmanager missing"),
]


def _rules(tmp: Path) -> Path:
    text = (ROOT / "monitoring/rules/nirwatch.yml").read_text()
    path = tmp / "nirwatch.yml"
    path.write_text(text if PRODUCTION_TIMINGS else re.sub(r"for: \d+m", "for: 3s", text))
    return path


def _alertmanager_config(webhook: str, token_file: Path) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())
    for route in config["route"]["routes"]:
        if not PRODUCTION_TIMINGS:
            route.update(group_wait="1s", group_interval="5s")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return dict(config)


class Probe(threading.Thread):
    """Publishes spectra (and each one's lab value) at RATE_HZ; drift from N_NORMAL on."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(daemon=True)
        drift = Drift("excipient_lot", onset_index=N_NORMAL, magnitude=1.5)
        self.sim = TabletLineSimulator([ProbeSpec("probe-1", RATE_HZ)], drift=drift, seed=11)
        self.kafka = kafka
        self.stop = threading.Event()
        self.onset: float | None = None
        self.sent = 0

    def run(self) -> None:
        producer = KafkaProducer(**self.kafka.client_options(), linger_ms=5)
        step = 8
        next_at = time.monotonic()
        while not self.stop.is_set():
            batch = self.sim.next_batch("probe-1", step)
            for sid, x, ref, progress in zip(
                batch.sample_ids, batch.spectra, batch.reference_mg, batch.drift_progress,
                strict=True,
            ):  # fmt: skip
                if progress > 0 and self.onset is None:
                    self.onset = time.monotonic()
                header = SpectrumHeader(
                    message_id=new_message_id(), instrument_id="probe-1", sample_id=sid,
                    timestamp=time.time(), grid=GRID, n_points=x.size, product="tablet-200mg",
                )  # fmt: skip
                producer.send(self.kafka.topic_spectra, encode_spectrum(header, x), key=b"probe-1")
                lab = LabResult(sid, float(ref), time.time(), target="api_content", unit="mg")
                producer.send(self.kafka.topic_lab_results, lab.encode(), key=sid.encode())
            self.sent += step
            producer.flush()
            next_at += step / RATE_HZ
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        producer.close()


def test_drift_alert_retrains_promotes_and_worker_serves_new_model(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    # --- a champion fitted on the calibration set (PLS-only: fast)
    X, y, wl = calibration_set(150, seed=0)
    calibration = Dataset(X.astype(float), y, wl)
    fitter = fit_bundle_fitter(
        target="api_content", unit="mg", model="pls", nested_cv=False, cv_repeats=1
    )
    registry = ModelRegistry(tmp_path / "registry")
    first = registry.register(fitter(calibration, tmp_path / "champion"))
    registry.promote(first)

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def spawn(target: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        t = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
        t.start()
        threads.append(t)

    # --- worker and drift monitor, each with its own metric set on its own endpoint (as
    # deployed: the rules select the scrape job of the process whose metric they read)
    prom_registry, drift_registry = CollectorRegistry(), CollectorRegistry()
    metrics = WorkerMetrics(prom_registry)
    port, drift_port = free_port(), free_port()
    server, server_thread = start_http_server(port, "127.0.0.1", prom_registry)
    drift_server, drift_thread = start_http_server(drift_port, "127.0.0.1", drift_registry)
    source = RegistrySource(registry, lambda p: load_bundle(p, device="cpu"), metrics, 0.5)
    worker_settings = WorkerSettings(
        kafka=kafka_settings, metrics_port=0, session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    worker = InferenceWorker(worker_settings, source, metrics, stop)
    spawn(worker.run)
    monitor = DriftMonitor(
        DriftMetrics(drift_registry),
        DriftSettings(warmup=200, exceedance_window=200, mean_shift_window=40),
    )
    first_seen: dict[str, float] = {}
    detected: list[float] = []

    def on_predictions(batch: list[Prediction]) -> None:
        now = time.monotonic()
        for p in batch:
            first_seen.setdefault(p.model_version, now)
        if not detected and monitor.drifting():
            detected.append(now)

    spawn(run_drift_consumer, kafka_settings, monitor, stop, group_id="drift-e2e",
          on_predictions=on_predictions, **FAST_GROUP)  # fmt: skip

    # --- retraining service with its labelled-spectra collector
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    settings = RetrainSettings(
        policy="auto", margin=0.05, webhook_port=0, cooldown_seconds=3600,
        reports_dir=tmp_path / "reports", min_recent_holdout=20,
    )  # fmt: skip
    service = RetrainService(settings, registry, calibration, fitter, TOKEN, tmp_path / "work")
    service.start()
    spawn(consume_labelled, kafka_settings, service.buffer, GRID, stop, group_id="retrain-e2e",
          **FAST_GROUP)  # fmt: skip
    host, hook_port = service.address

    probe = Probe(kafka_settings)
    try:
        with (
            promstack.alertmanager(
                tmp_path / "am",
                _alertmanager_config(f"http://{host}:{hook_port}/alerts", token_file),
            ) as am,
            promstack.prometheus(
                tmp_path / "prom",
                {
                    "nirwatch-worker": [f"127.0.0.1:{port}"],
                    "nirwatch-drift": [f"127.0.0.1:{drift_port}"],
                },
                rule_files=[_rules(tmp_path)],
                alertmanager_url=am.url,
            ) as prom,
        ):
            probe.start()
            firing = 'ALERTS{alertname="NirwatchDriftDetected", alertstate="firing"}'
            # normal operation: predictions flow, no drift alert
            wait_until(lambda: first_seen.get(first), 120, "first predictions", interval_s=0.1)
            onset = wait_until(lambda: probe.onset, 120, "drift onset", interval_s=0.1)
            assert not promstack.query(prom, firing), "drift alert before the drift"
            # No detector before the onset. Not `not monitor.drifting()` here: at 80 spectra/s the
            # first drifted predictions can reach the monitor, and a detector latch on them
            # (legitimately), between the probe's onset and this line. Detection times are taken
            # as predictions arrive, so one caused by the drift is always after the onset.
            assert not detected or detected[0] >= onset, (detected, onset, monitor.drifting())

            wait_until(
                lambda: promstack.query(prom, firing),
                300,
                "the drift alert to fire",
                interval_s=0.1,
            )
            t_alert = time.monotonic()
            alerts = {r["metric"]["detector"] for r in promstack.query(prom, firing)}
            wait_until(lambda: service.reports, 300, "a webhook-triggered retrain", interval_s=0.1)
            t_retrained = time.monotonic()
            report = service.reports[0]
            assert report["trigger"] == "webhook", report
            assert "NirwatchDriftDetected" in report["reason"]
            assert report["decision"] == "promoted", report["why"]
            new = report["candidate"]
            assert registry.champion_version() == new != first
            wait_until(
                lambda: first_seen.get(new), 120, "predictions by the new model", interval_s=0.1
            )
            t_serving = first_seen[new]
    finally:
        probe.stop.set()
        stop.set()
        service.stop()
        for t in threads:
            t.join(30)
        for srv, thread in ((server, server_thread), (drift_server, drift_thread)):
            srv.shutdown()
            thread.join()

    timings = {
        "detector_s": round(detected[0] - onset, 1) if detected else None,
        "alert_firing_s": round(t_alert - onset, 1),
        "retrain_report_s": round(t_retrained - onset, 1),
        "new_model_serving_s": round(t_serving - onset, 1),
        "retrain_seconds": report["seconds"],
        "detectors": sorted(alerts),
        "holdout_rmse": {
            "candidate": report["metrics"]["candidate"]["rmse"],
            "champion": report["metrics"]["champion"]["rmse"],
        },
        "n_recent": report["data"]["n_recent"],
        "spectra_sent": probe.sent,
    }
    print("DRIFT-LOOP " + json.dumps(timings))
    assert np.isfinite(timings["new_model_serving_s"]) and t_serving >= t_alert >= onset
