"""``nirwatch drift-monitor``: drift detectors for the whole line, beside the workers.

Consumes the predictions and lab-results topics (:mod:`monitoring.drift_consumer`), runs a
:class:`~monitoring.drift_monitor.DriftMonitor` per (instrument, product) and serves the
drift gauges (``nirwatch_drift_*``, ``nirwatch_lab_*``) on a Prometheus endpoint. Settings:
``NIRWATCH_DRIFT_*`` (detectors, endpoint), ``NIRWATCH_KAFKA_*``, and ``NIRWATCH_REGISTRY_DIR``
for each served model's RMSECV (the lab-reference detector's yardstick).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from monitoring.drift_consumer import run_drift_consumer
from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.errors import NirwatchError
from nirwatch.logs import log_event
from nirwatch.metrics import DriftMetrics
from nirwatch.models.bundle import read_manifest
from nirwatch.models.registry import ModelRegistry, RegistrySettings
from nirwatch.ports import start_metrics_server
from nirwatch.settings import KafkaSettings, load_settings, options_given, require_bootstrap
from nirwatch.signals import stop_on_signals

log = logging.getLogger(__name__)


def registry_rmsecv(registry: ModelRegistry) -> Callable[[str], float | None]:
    """``version -> RMSECV`` from the registry's manifests (the served model's, else PLS's)."""

    def lookup(version: str) -> float | None:
        try:
            metrics = read_manifest(registry.path(version)).get("metrics", {})
        except NirwatchError as exc:
            log.warning("no RMSECV for model %s: %s", version, exc)
            return None
        value = metrics.get("rmsecv") or metrics.get("pls_rmsecv")
        return float(value) if value else None

    return lookup


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-host", help="Prometheus endpoint address (default 127.0.0.1)")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus endpoint port (default 9109; 0: none)"
    )
    parser.add_argument(
        "--rmsecv",
        type=float,
        help="RMSECV for the lab checks (default: from the registry, NIRWATCH_REGISTRY_DIR)",
    )
    parser.add_argument("--group-id", help="Kafka consumer group (default nirwatch-drift)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(
        DriftSettings,
        **options_given(args, {f: f for f in ("metrics_host", "metrics_port", "group_id")}),
    )
    kafka = load_settings(KafkaSettings)
    require_bootstrap(kafka, "drift-monitor")
    with stop_on_signals() as stop:
        registry = CollectorRegistry()
        reg = load_settings(RegistrySettings)
        rmsecv_for = None
        if args.rmsecv is None and reg.dir is not None:
            rmsecv_for = registry_rmsecv(ModelRegistry(reg.dir, hmac_key=reg.key()))
        monitor = DriftMonitor(
            DriftMetrics(registry), settings, rmsecv=args.rmsecv, rmsecv_for=rmsecv_for
        )
        server = start_metrics_server(
            registry, settings.metrics_host, settings.metrics_port,
            "--metrics-port or NIRWATCH_DRIFT_METRICS_PORT (0: no endpoint)",
        )  # fmt: skip
        url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics" if server else None
        print(f"drift metrics: {url or 'off (metrics port 0)'}")
        if args.rmsecv is None and rmsecv_for is None:
            log_event(
                log, "lab_checks_off", level=logging.WARNING,
                why="no RMSECV: set NIRWATCH_REGISTRY_DIR (each model's RMSECV) or pass --rmsecv",
            )  # fmt: skip
        log_event(
            log, "drift_monitor_started", bootstrap=kafka.bootstrap, group=settings.group_id,
            metrics=url,
            registry=reg.dir, rmsecv=args.rmsecv,
        )  # fmt: skip
        try:
            run_drift_consumer(kafka, monitor, stop, group_id=settings.group_id)
        finally:
            if server is not None:
                server.shutdown()
    return 0
