"""Shared plumbing of the ingest commands: settings, broker, topics, options."""

from __future__ import annotations

import argparse
from typing import Any

from ingest.settings import IngestSettings
from nirwatch.settings import load_settings, require_bootstrap
from nirwatch.transport.kafka import ensure_topics


def add_batch_option(p: argparse.ArgumentParser) -> None:
    """``--batch``: the production batch id written into every spectrum's header."""
    p.add_argument(
        "--batch",
        help="production batch id put on every spectrum (default NIRWATCH_INGEST_BATCH); "
        "`nirwatch audit --batch B` selects by it",
    )
    p.add_argument("--product", help="product name on every spectrum (NIRWATCH_INGEST_PRODUCT)")


def ingest_settings(command: str, args: argparse.Namespace | None = None) -> IngestSettings:
    """Settings read once, with the spectra, dead-letter and lab-results topics created.

    Command-line ``--batch``/``--product`` (and file-drop's ``--metrics-host``/``--metrics-port``)
    override ``NIRWATCH_INGEST_BATCH``/``_PRODUCT`` (``_METRICS_HOST``/``_METRICS_PORT``).

    Raises
    ------
    BrokerNotConfiguredError
        Without ``NIRWATCH_KAFKA_BOOTSTRAP``: an adapter never starts a broker of its own.
    """
    overrides: dict[str, Any] = {}
    for name in ("batch", "product", "metrics_host", "metrics_port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = load_settings(IngestSettings, **overrides)
    require_bootstrap(settings.kafka, command)
    kafka = settings.kafka
    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_dead_letter, kafka.topic_lab_results])
    return settings
