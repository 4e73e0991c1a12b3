"""``nirwatch file-drop``: publish spectra files that instrument software drops into a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from prometheus_client import CollectorRegistry

from ingest.cli_common import add_batch_option, ingest_settings
from ingest.file_drop import Inbox, watch_inbox
from ingest.producer import SpectrumProducer
from nirwatch.metrics import FileDropMetrics
from nirwatch.ports import start_metrics_server
from nirwatch.signals import stop_on_signals


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inbox", type=Path, required=True, help="folder the instrument writes into")
    p.add_argument(
        "--instrument",
        help="instrument id for rows without an instrument_id column (default: the folder name)",
    )
    p.add_argument("--grid", help="accept only this wavelength grid id (e.g. lin:600:1898:2)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between scans (default 1)")
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file's size and time must stay unchanged before it is taken (default 2)",
    )
    p.add_argument("--once", action="store_true", help="take what is there, then exit")
    p.add_argument("--metrics-host", help="Prometheus endpoint address (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, help="Prometheus endpoint port (default 0: none)")
    add_batch_option(p)


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        inbox = Inbox(args.inbox, settle_s=args.settle)
        instrument = args.instrument or args.inbox.resolve().name
        settings = ingest_settings("file-drop", args)
        metrics = None
        if settings.metrics_port:
            registry = CollectorRegistry()
            metrics = FileDropMetrics(registry)
            start_metrics_server(
                registry,
                settings.metrics_host,
                settings.metrics_port,
                "--metrics-port or NIRWATCH_INGEST_METRICS_PORT (0: no endpoint)",
            )
            print(f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")
        print(
            f"watching {args.inbox} as {instrument} -> {settings.kafka.topic_spectra} on "
            f"{settings.kafka.bootstrap} (processed files to done/, unreadable ones to failed/)"
        )
        with SpectrumProducer(
            settings, source=f"file-drop:{instrument}", expected_grid=args.grid
        ) as producer:
            stats = watch_inbox(
                inbox,
                producer,
                stop=stop,
                instrument_id=instrument,
                product=settings.product,
                batch=settings.batch,
                poll_s=args.poll,
                once=args.once,
                metrics=metrics,
            )
        print(
            f"{stats.files_done} files done, {stats.files_failed} failed, {stats.files_retried} "
            f"retries; {stats.sent} spectra sent, {stats.dead_lettered} dead-lettered"
        )
    return 0
