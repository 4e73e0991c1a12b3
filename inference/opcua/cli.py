"""``nirwatch opcua-server``: serve the predictions topic as an OPC UA address space.

Settings are read once here (``NIRWATCH_OPCUA_*``, ``NIRWATCH_KAFKA_*``; command-line options
override them) and passed down. SIGTERM/SIGINT only set the stop event; the loop finishes its
poll (everything written is committed) and the server closes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading

from prometheus_client import CollectorRegistry

from inference.opcua.bridge import endpoint_url, serve
from inference.opcua.security import SERVER_CERT, ensure_server_certificate
from inference.opcua.settings import OpcUaServerSettings
from nirwatch.metrics import OpcUaServerMetrics
from nirwatch.ports import check_port_free, start_metrics_server
from nirwatch.settings import load_settings, options_given, require_bootstrap
from nirwatch.signals import stop_on_signals
from nirwatch.statedirs import writable_dir
from nirwatch.transport.kafka import ensure_topics

#: command-line option -> OpcUaServerSettings field
_OVERRIDES = {
    "host": "host",
    "port": "port",
    "stale_after": "stale_after_s",
    "group_id": "group_id",
    "metrics_port": "metrics_port",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="OPC UA port (default 4840)")
    p.add_argument(
        "--stale-after", type=float, help="seconds without a prediction before a value turns Bad"
    )
    p.add_argument("--group-id", help="Kafka consumer group (default nirwatch-opcua)")
    p.add_argument("--metrics-port", type=int, help="Prometheus endpoint port (0: none)")


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    settings = load_settings(OpcUaServerSettings, **options_given(args, _OVERRIDES))
    kafka = settings.kafka
    require_bootstrap(kafka, "opcua-server")
    writable_dir(settings.cert_dir, "NIRWATCH_OPCUA_CERT_DIR")
    check_port_free(settings.host, settings.port, "set NIRWATCH_OPCUA_PORT or --port")
    ensure_topics(kafka, [kafka.topic_predictions])
    cert, _ = ensure_server_certificate(settings.cert_dir, settings.application_uri, settings.host)
    metrics = None
    if settings.metrics_port:
        metrics = OpcUaServerMetrics(CollectorRegistry())
        start_metrics_server(
            metrics.registry,
            settings.metrics_host,
            settings.metrics_port,
            "NIRWATCH_OPCUA_METRICS_PORT",
        )
        print(f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    thumbprint = hashlib.sha1(cert.read_bytes()).hexdigest()  # noqa: S324 - OPC UA's thumbprint is SHA-1
    print(
        f"OPC UA on {endpoint_url(settings)} (Basic256Sha256 Sign/SignAndEncrypt"
        f"{', None' if settings.allow_none_policy else ''}); server certificate {cert} "
        f"(SHA-1 thumbprint {thumbprint}); trusted clients in {settings.trust_dir}; "
        f"predictions from {kafka.topic_predictions} on {kafka.bootstrap}"
    )
    assert cert.name == SERVER_CERT
    written = asyncio.run(serve(settings, stop, metrics=metrics))
    print(f"{written} predictions written")
    return 0
