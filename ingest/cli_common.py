"""Shared plumbing of the ingest commands: settings, broker, topics, signals."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ingest.settings import IngestSettings
from nirwatch.broker import kafka_bootstrap
from nirwatch.kafka import ensure_topics
from nirwatch.settings import load_settings


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT only set ``stop``; the run loop finishes its message and exits."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


@contextlib.contextmanager
def ingest_settings(**overrides: Any) -> Iterator[IngestSettings]:
    """Settings read once, with a bootstrap address (the embedded broker when none is set)
    and the spectra, dead-letter and lab-results topics created."""
    settings = load_settings(IngestSettings, **overrides)
    with kafka_bootstrap(settings.kafka.bootstrap) as bootstrap:
        kafka = settings.kafka.model_copy(update={"bootstrap": bootstrap})
        ensure_topics(
            kafka, [kafka.topic_spectra, kafka.topic_dead_letter, kafka.topic_lab_results]
        )
        yield settings.model_copy(update={"kafka": kafka})
