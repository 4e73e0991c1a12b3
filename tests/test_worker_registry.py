"""The worker with real bundles: registry hot reload, a tampered champion, and the CLI."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import read_predictions, wait_until
from worker_support import (
    SwitchableSource,
    produce,
    spectra_messages,
    start_worker,
    worker_settings,
)

from inference.reload import RegistrySource
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.records.audit import AuditSettings, open_audit_trail
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import calibration_set
from nirwatch.transport.broker import free_port
from training.fit import fit_bundle

pytestmark = pytest.mark.kafka
PROBES = ["probe-a", "probe-b", "probe-c"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small PLS bundles on simulated calibration spectra (different data, versions)."""
    root = tmp_path_factory.mktemp("bundles")
    out = []
    for seed in range(3):
        X, y, wl = calibration_set(80, seed=seed)
        out.append(
            fit_bundle(
                X,
                y,
                wl,
                target="api",
                unit="mg",
                model="pls",
                out_dir=root / f"b{seed}",
                cv_folds=3,
                nested_cv=False,
                cv_repeats=1,
                pls_max_components=4,
            )
        )
    return out


class FaultyCNN:
    """A bundle's real CNN with injected faults, by call: raises, NaN, far from PLS, itself."""

    def __init__(self, cnn: object) -> None:
        self.cnn, self.calls = cnn, 0

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        kind = self.calls % 4
        if kind == 1:
            raise RuntimeError("injected CNN fault")
        out = np.asarray(self.cnn.predict(X), dtype=np.float64)  # type: ignore[attr-defined]
        if kind == 2:
            return np.full(out.shape, np.nan)
        return out + 1e7 if kind == 3 else out


def test_real_bundle_falls_back_to_pls_for_each_reason_through_the_broker(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    X, y, wl = calibration_set(80, seed=0)
    path = fit_bundle(
        X, y, wl, target="api", unit="mg", model="cnn", out_dir=tmp_path / "b",
        cv_folds=3, pls_max_components=4, epochs=2, cnn_members=1, augment_copies=1,
        nested_cv=False, cv_repeats=1,
    )  # fmt: skip
    bundle = load_bundle(path, device="cpu")
    assert bundle.has_cnn
    bundle._cnn = FaultyCNN(bundle.cnn)  # the worker sees a real LoadedBundle
    # The briefly trained CNN may be far from PLS on these test spectra: only the injected
    # +1e7 is to count as disagreement here.
    bundle.fallback_limit = 1e6
    # Near a range end the range-end model serves (reason "range_end"; tested in
    # test_calibration_selection): here only the CNN faults are to decide.
    bundle.range_end_model = None
    w = start_worker(worker_settings(kafka_settings, micro_batch_size=10), SwitchableSource(bundle))
    msgs = spectra_messages(40, PROBES, seed=4)
    produce(kafka_settings, [(k, v) for k, v, _ in msgs])
    preds = read_predictions(kafka_settings, expected=40)
    w.halt()

    assert sorted(p.message_id for p in preds) == sorted(h.message_id for _, _, h in msgs)
    reasons = {p.fallback_reason for p in preds}
    assert reasons == {None, "cnn_error", "cnn_non_finite", "cnn_pls_disagree"}
    for p in preds:
        assert (p.model == "cnn") == (p.fallback_reason is None)
        assert p.value is not None and p.pls_value is not None
        if p.model == "pls":
            assert p.value == p.pls_value
        else:
            assert p.value == p.cnn_value
    for reason in reasons - {None}:
        n = sum(p.fallback_reason == reason for p in preds)
        assert w.value("nirwatch_fallbacks_total", {"reason": reason}) == n


def test_registry_champion_hot_reload_and_tampered_bundle_refused(
    kafka_settings: KafkaSettings, bundles: list[Path], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    v1, v2, v3 = (registry.register(b) for b in bundles)
    registry.promote(v1)
    clock = [0.0]  # the test decides when the worker may look at the registry
    metrics = WorkerMetrics(CollectorRegistry())
    loader = functools.partial(load_bundle, device="cpu")
    source = RegistrySource(registry, loader, metrics, interval_s=5, clock=lambda: clock[0])
    w = start_worker(worker_settings(kafka_settings), source=source, metrics=metrics)

    first = spectra_messages(30, PROBES, seed=1)
    produce(kafka_settings, [(k, v) for k, v, _ in first])
    read_predictions(kafka_settings, expected=30)
    registry.promote(v2)
    clock[0] = 10
    wait_until(lambda: source.version == v2, what="reload of v2")
    second = spectra_messages(30, PROBES, seed=2)
    produce(kafka_settings, [(k, v) for k, v, _ in second])
    read_predictions(kafka_settings, expected=60)

    registry.promote(v3)
    target = next(f for f in (registry.path(v3)).iterdir() if f.name == "pls.npz")
    os.chmod(target, 0o644)
    with target.open("ab") as fh:  # tampered after promotion
        fh.write(b"\0")
    clock[0] = 20
    wait_until(
        lambda: w.value("nirwatch_model_reloads_total", {"outcome": "failed"}) == 1,
        what="the failed reload",
    )
    third = spectra_messages(30, PROBES, seed=3)
    produce(kafka_settings, [(k, v) for k, v, _ in third])
    preds = read_predictions(kafka_settings, expected=90)
    w.halt()

    version = {p.message_id: (p.model_version, p.bundle_checksum) for p in preds}
    b1, b2 = load_bundle(bundles[0]), load_bundle(bundles[1])
    assert len(preds) == 90
    assert {version[h.message_id] for _, _, h in first} == {(b1.version, b1.checksum)}
    # v2 keeps serving after the tampered v3 was refused.
    assert {version[h.message_id] for _, _, h in second + third} == {(b2.version, b2.checksum)}
    assert w.value("nirwatch_model_reloads_total", {"outcome": "success"}) == 1
    assert all(p.model == "pls" and p.fallback_reason == "cnn_unavailable" for p in preds)
    assert all(p.value is not None and p.t2 is not None and p.q is not None for p in preds)


def test_cli_worker_serves_metrics_and_stops_on_sigterm(
    kafka_settings: KafkaSettings, bundles: list[Path], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **kafka_settings.env(),
        "NIRWATCH_AUDIT_PATH": str(tmp_path / "audit.sqlite3"),
        "NIRWATCH_WORKER_SESSION_TIMEOUT_MS": "2000",
        "NIRWATCH_WORKER_HEARTBEAT_INTERVAL_MS": "500",
    }
    sent = spectra_messages(40, PROBES, seed=4)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    cmd = [
        sys.executable,
        "-m",
        "nirwatch.apps.cli",
        "worker",
        "--bundle",
        str(bundles[0]),
        "--metrics-port",
        str(port),
        "--micro-batch-size",
        "16",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        preds = read_predictions(kafka_settings, expected=40)

        def scrape() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())

        wait_until(
            lambda: 'nirwatch_spectra_consumed_total{instrument="probe-a"}' in scrape(),
            what="metrics",
        )
        text = scrape()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(preds) == 40
    assert "nirwatch_predictions_total" in text and "nirwatch_model_info" in text
    assert b"worker stopped: 40 predictions" in out
    trail = open_audit_trail(AuditSettings(path=tmp_path / "audit.sqlite3"))
    try:
        assert {r.prediction_id for r in trail.query(limit=None)} == {
            p.prediction_id for p in preds
        }
    finally:
        trail.close()
