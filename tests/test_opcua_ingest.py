"""``nirwatch opcua-ingest`` against an asyncua server playing the analyser.

The analyser exposes a spectrum array, a sample id and an acquisition time; it writes the sample
id and time first and the array last, as the adapter expects.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from asyncua import Server, ua
from opcua_support import free_port, read_spectra
from prometheus_client import CollectorRegistry

from ingest.opcua_ingest import OpcUaIngest, spectrum_message_id
from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings, OpcUaIngestSettings
from nirwatch.errors import ConfigError
from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.metrics import OpcUaIngestMetrics
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics

GRID = "lin:1100:1498:2"  # 200 points
N = 200


class Analyser:
    """An OPC UA server with the nodes of a (very small) analyser, restartable on its port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: Server | None = None
        self.nodes: dict[str, Any] = {}

    async def start(self, last: tuple[str, float, list[float]] | None = None) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/analyser/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace("urn:test:analyser")
        obj = await server.nodes.objects.add_object(ua.NodeId("NIR1", ns), "NIR1")
        sample, ts, values = last or ("", 0.0, [])
        self.nodes = {
            "sample": await obj.add_variable(ua.NodeId("SampleId", ns), "SampleId", sample),
            "time": await obj.add_variable(
                ua.NodeId("AcquisitionTime", ns),
                "AcquisitionTime",
                datetime.fromtimestamp(ts, UTC),
                ua.VariantType.DateTime,
            ),  # fmt: skip
            "spectrum": await obj.add_variable(
                ua.NodeId("Spectrum", ns),
                "Spectrum",
                ua.Variant(values, ua.VariantType.Double, is_array=True),
            ),
        }
        await server.start()
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None

    async def acquire(self, sample: str, ts: float, values: list[float]) -> None:
        await self.nodes["sample"].write_value(sample)
        await self.nodes["time"].write_value(datetime.fromtimestamp(ts, UTC))
        await self.nodes["spectrum"].write_value(
            ua.Variant(values, ua.VariantType.Double, is_array=True)
        )


def _settings(kafka: KafkaSettings, port: int, **changes: Any) -> OpcUaIngestSettings:
    values: dict[str, Any] = {
        "ingest": IngestSettings(kafka=kafka),
        "url": f"opc.tcp://127.0.0.1:{port}/analyser/",
        "spectrum_node": "ns=2;s=Spectrum",
        "sample_id_node": "ns=2;s=SampleId",
        "timestamp_node": "ns=2;s=AcquisitionTime",
        "instrument_id": "nir-1",
        "grid": GRID,
        "publishing_interval_ms": 50,
        "reconnect_max_s": 1.0,
    }
    values.update(changes)
    return OpcUaIngestSettings(**values)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _with_adapter(
    settings: OpcUaIngestSettings,
    analyser: Analyser,
    body: Callable[[OpcUaIngest], Awaitable[None]],
) -> OpcUaIngest:
    stop = threading.Event()
    metrics = OpcUaIngestMetrics(CollectorRegistry())

    async def main() -> OpcUaIngest:
        await analyser.start()
        with SpectrumProducer(settings.ingest, source="opcua:test") as producer:
            adapter = OpcUaIngest(settings, producer, metrics)
            task = asyncio.create_task(adapter.run(stop))
            await asyncio.wait_for(adapter.connected.wait(), 30)
            try:
                await body(adapter)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
                if analyser.server is not None:
                    await analyser.stop()
        return adapter

    return asyncio.run(main())


def _spectrum(i: int) -> list[float]:
    return list(np.linspace(0.1, 0.9, N) + 0.001 * i)


@pytest.mark.kafka
@pytest.mark.slow
def test_adapter_survives_an_analyser_restart_without_loss_or_duplicates(
    kafka_settings: KafkaSettings,
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_dead_letter])
    analyser = Analyser(free_port())
    settings = _settings(kafka_settings, analyser.port)
    t0 = time.time() - 100
    acquired: list[tuple[str, float, list[float]]] = []

    async def body(adapter: OpcUaIngest) -> None:
        for i in range(4):
            acquired.append((f"s{i}", t0 + i, _spectrum(i)))
            await analyser.acquire(*acquired[-1])
            await _until(lambda i=i: adapter.stats.sent == i + 1, 15, f"spectrum {i}")
        await analyser.stop()
        await _until(lambda: not adapter.connected.is_set(), 15, "the loss to be noticed")
        await asyncio.sleep(1.0)
        # The analyser comes back still showing its last spectrum: read again, it is no new one.
        await analyser.start(last=acquired[-1])
        await _until(lambda: adapter.stats.duplicates >= 1, 30, "the re-read after reconnecting")
        for i in range(4, 8):
            acquired.append((f"s{i}", t0 + i, _spectrum(i)))
            await analyser.acquire(*acquired[-1])
            await _until(lambda i=i: adapter.stats.sent == i + 1, 15, f"spectrum {i}")

    adapter = _with_adapter(settings, analyser, body)
    spectra = read_spectra(kafka_settings, expected=8)
    assert sorted(h.sample_id for h, _ in spectra) == [f"s{i}" for i in range(8)]
    assert len({h.message_id for h, _ in spectra}) == 8
    for header, values in spectra:
        i = int(header.sample_id[1:])
        assert header.message_id == spectrum_message_id("nir-1", f"s{i}", t0 + i)
        assert header.timestamp == pytest.approx(t0 + i, abs=1e-3)
        assert header.grid == GRID and header.instrument_id == "nir-1"
        np.testing.assert_allclose(values, _spectrum(i), rtol=1e-6)
    assert adapter.stats.duplicates >= 1 and adapter.stats.dead_lettered == 0
    assert adapter.metrics is not None
    assert adapter.metrics.registry.get_sample_value("nirwatch_opcua_ingest_reconnects_total") >= 1


@pytest.mark.kafka
@pytest.mark.slow
def test_bad_arrays_are_dead_lettered_with_a_reason(kafka_settings: KafkaSettings) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_dead_letter])
    analyser = Analyser(free_port())
    settings = _settings(kafka_settings, analyser.port)
    t0 = time.time() - 50
    nan = _spectrum(1)
    nan[17] = float("nan")
    arrays = [_spectrum(0), _spectrum(1)[:150], nan, _spectrum(3)]

    async def body(adapter: OpcUaIngest) -> None:
        for i, values in enumerate(arrays):
            await analyser.acquire(f"b{i}", t0 + i, values)
            await _until(
                lambda i=i: adapter.stats.sent + adapter.stats.dead_lettered == i + 1,
                15,
                f"array {i}",
            )

    adapter = _with_adapter(settings, analyser, body)
    assert (adapter.stats.sent, adapter.stats.dead_lettered) == (2, 2)
    letters = {d.reason: d for d in read_dead_letters(kafka_settings, expected=2)}
    assert set(letters) == {"length_mismatch", "non_finite"}
    assert "150" in letters["length_mismatch"].detail
    assert letters["non_finite"].stage == "ingest" and letters["non_finite"].source == "opcua:test"
    assert sorted(h.sample_id for h, _ in read_spectra(kafka_settings, expected=2)) == ["b0", "b3"]


def test_message_id_is_fixed_by_the_spectrum_and_time_ordered() -> None:
    a = spectrum_message_id("nir-1", "s1", 1_700_000_000.0)
    assert a == spectrum_message_id("nir-1", "s1", 1_700_000_000.0)
    assert a != spectrum_message_id("nir-1", "s2", 1_700_000_000.0)
    assert a != spectrum_message_id("nir-2", "s1", 1_700_000_000.0)
    assert len(a) == 32 and a[12] == "7", "UUIDv7 layout"
    assert spectrum_message_id("nir-1", "s1", 1_700_000_001.0) > a


def test_missing_node_settings_are_config_errors() -> None:
    producer: Any = object()
    with pytest.raises(ConfigError, match="NIRWATCH_OPCUA_INGEST_URL"):
        OpcUaIngest(OpcUaIngestSettings(), producer)
    with pytest.raises(ConfigError, match="GRID"):
        OpcUaIngest(OpcUaIngestSettings(url="opc.tcp://x:4840", spectrum_node="ns=2;s=S"), producer)


def test_a_spectrum_node_the_analyser_lacks_is_a_config_error() -> None:
    analyser = Analyser(free_port())
    kafka = KafkaSettings(bootstrap="127.0.0.1:9")  # never used: nothing is published
    settings = _settings(kafka, analyser.port, spectrum_node="ns=2;s=NoSuchSpectrum")
    producer: Any = object()

    async def main() -> None:
        await analyser.start()
        try:
            with pytest.raises(ConfigError, match="NoSuchSpectrum"):
                await asyncio.wait_for(OpcUaIngest(settings, producer).run(threading.Event()), 60)
        finally:
            await analyser.stop()

    asyncio.run(main())
