"""Shared fixtures: a real Kafka broker for the session, data paths, fresh settings."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import kafka_bootstrap

ROOT = Path(__file__).resolve().parents[1]
SHOOTOUT = ROOT.parent / "shared" / "data" / "shootout2002" / "instrument1.csv"

#: Tansu's first group assignment takes session_timeout_ms / 2 (DEVELOPERS.md): keep it short.
TEST_SESSION_TIMEOUT_MS = 2000


@pytest.fixture(scope="session")
def kafka_bootstrap_address() -> Iterator[str]:
    """NIRWATCH_KAFKA_BOOTSTRAP, else testcontainers' Kafka, else embedded Tansu."""
    with kafka_bootstrap(os.environ.get("NIRWATCH_KAFKA_BOOTSTRAP")) as bootstrap:
        yield bootstrap


@pytest.fixture
def kafka_settings(kafka_bootstrap_address: str) -> KafkaSettings:
    """Kafka settings with topic names unique to the test, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return KafkaSettings(
        bootstrap=kafka_bootstrap_address,
        topic_spectra=f"t{tag}.spectra",
        topic_predictions=f"t{tag}.predictions",
        topic_dead_letter=f"t{tag}.dlq",
        topic_lab_results=f"t{tag}.lab",
        partitions=3,
    )


@pytest.fixture(scope="session")
def shootout_csv() -> Path:
    if not SHOOTOUT.exists():
        pytest.skip(f"shootout data not found at {SHOOTOUT}")
    return SHOOTOUT


@pytest.fixture
def signal_handlers_kept() -> Iterator[None]:
    """Fails the test when the code under test left its SIGINT/SIGTERM handlers installed.

    Commands install theirs with :func:`nirwatch.signals.stop_on_signals`, which restores the
    previous ones; the handlers are restored here either way, so one leak fails one test only.
    """
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    left = {s.name: signal.getsignal(s) for s, h in handlers.items() if signal.getsignal(s) != h}
    for s, h in handlers.items():
        signal.signal(s, h)
    assert not left, f"signal handlers left installed: {left}"


@pytest.fixture
def cli_env(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch, signal_handlers_kept: None
) -> Iterator[KafkaSettings]:
    """Commands run through ``main()`` use the test broker and the test's own topics."""
    assert kafka_settings.bootstrap
    monkeypatch.setenv("NIRWATCH_KAFKA_BOOTSTRAP", kafka_settings.bootstrap)
    for topic in ("spectra", "dead_letter", "lab_results", "predictions"):
        monkeypatch.setenv(
            f"NIRWATCH_KAFKA_TOPIC_{topic.upper()}", getattr(kafka_settings, f"topic_{topic}")
        )
    yield kafka_settings
