"""``nirwatch opcua-ingest``: publish the spectra an analyser serves over OPC UA."""

from __future__ import annotations

import argparse
import asyncio
import threading

from prometheus_client import CollectorRegistry

from ingest.opcua_ingest import OpcUaIngest, check_settings
from ingest.producer import SpectrumProducer
from ingest.settings import OpcUaIngestSettings
from nirwatch.metrics import OpcUaIngestMetrics
from nirwatch.ports import start_metrics_server
from nirwatch.settings import load_settings, options_given, require_bootstrap
from nirwatch.signals import stop_on_signals
from nirwatch.transport.kafka import ensure_topics

#: command-line option -> OpcUaIngestSettings field
_OVERRIDES = {
    "url": "url",
    "spectrum_node": "spectrum_node",
    "grid": "grid",
    "instrument": "instrument_id",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the analyser's endpoint, opc.tcp://host:port[/path]")
    p.add_argument("--spectrum-node", help="node id of the spectrum array, e.g. ns=2;s=Spectrum")
    p.add_argument("--grid", help="wavelength grid id when no wavelength node is configured")
    p.add_argument("--instrument", help="instrument id when no instrument node is configured")


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    settings = load_settings(OpcUaIngestSettings, **options_given(args, _OVERRIDES))
    check_settings(settings)
    kafka = settings.ingest.kafka
    require_bootstrap(kafka, "opcua-ingest")
    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_dead_letter])
    metrics = None
    ingest = settings.ingest
    if ingest.metrics_port:
        metrics = OpcUaIngestMetrics(CollectorRegistry())
        start_metrics_server(
            metrics.registry,
            ingest.metrics_host,
            ingest.metrics_port,
            "NIRWATCH_INGEST_METRICS_PORT",
        )
        print(f"metrics on http://{ingest.metrics_host}:{ingest.metrics_port}/metrics")
    with SpectrumProducer(ingest, source=f"opcua:{settings.url}") as producer:
        adapter = OpcUaIngest(settings, producer, metrics)
        print(
            f"reading {settings.spectrum_node} on {settings.url} -> {kafka.topic_spectra} on {kafka.bootstrap}"
        )
        stats = asyncio.run(adapter.run(stop))
    print(
        f"{stats.sent} spectra sent, {stats.dead_lettered} dead-lettered, "
        f"{stats.duplicates} re-reads skipped, {stats.overwritten} overwritten before they "
        f"could be read, {stats.connects} connections"
    )
    return 0
