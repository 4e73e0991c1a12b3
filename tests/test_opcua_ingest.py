"""``nirwatch opcua-ingest`` against an asyncua server playing the analyser.

The analyser exposes a spectrum array, a sample id and an acquisition time; it writes the sample
id and time first and the array last, as the adapter expects.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

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


class _Output:
    """A process's output lines, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def events(self, name: str) -> list[str]:
        return [line for line in list(self.lines) if f"event={name} " in line]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """The process's first ``count`` log lines of event ``name``, once it has written them."""
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.text()}"
            assert time.monotonic() < deadline, f"no {count} {name} lines: {self.text()}"
            await asyncio.sleep(0.05)
        return self.events(name)[:count]

    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.kafka
@pytest.mark.slow
def test_opcua_ingest_started_before_the_analyser_retries_then_publishes_each_spectrum_once(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_dead_letter])
    analyser = Analyser(free_port())
    url = f"opc.tcp://127.0.0.1:{analyser.port}/analyser/"
    env = {
        **os.environ,
        "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka_settings.bootstrap),
        "NIRWATCH_KAFKA_TOPIC_SPECTRA": kafka_settings.topic_spectra,
        "NIRWATCH_KAFKA_TOPIC_DEAD_LETTER": kafka_settings.topic_dead_letter,
        "NIRWATCH_STATE_DIR": str(tmp_path / "state"),
        "NIRWATCH_OPCUA_INGEST_URL": url,
        "NIRWATCH_OPCUA_INGEST_SPECTRUM_NODE": "ns=2;s=Spectrum",
        "NIRWATCH_OPCUA_INGEST_SAMPLE_ID_NODE": "ns=2;s=SampleId",
        "NIRWATCH_OPCUA_INGEST_TIMESTAMP_NODE": "ns=2;s=AcquisitionTime",
        "NIRWATCH_OPCUA_INGEST_INSTRUMENT_ID": "nir-1",
        "NIRWATCH_OPCUA_INGEST_GRID": GRID,
        "NIRWATCH_OPCUA_INGEST_PUBLISHING_INTERVAL_MS": "50",
        "NIRWATCH_OPCUA_INGEST_RECONNECT_MAX_S": "1",
    }
    t0 = time.time() - 100
    acquired = [(f"s{i}", t0 + i, _spectrum(i)) for i in range(4)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nirwatch.apps.cli", "opcua-ingest"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = _Output(proc)

    async def main() -> list[str]:
        # The analyser is not up: the adapter retries, waiting longer each time, up to 1 s.
        refused = await output.wait_for("analyser_unreachable", count=3)
        # It comes up still showing a spectrum taken while the adapter could not connect.
        await analyser.start(last=acquired[0])
        try:
            await output.wait_for("analyser_connected")
            # One spectrum at a time: the adapter reads the metadata nodes when the array's
            # change reaches it, so the next acquisition must not come before (README).
            for i in range(len(acquired)):
                if i:
                    await analyser.acquire(*acquired[i])
                got = await asyncio.to_thread(read_spectra, kafka_settings, i + 1)
                assert len(got) == i + 1, f"spectrum {i} was not published: {output.text()}"
        finally:
            # The adapter stops first (SIGTERM, as systemd or docker stop sends it): asyncua's
            # server, stopped under a connected client in another process, can spin for ever.
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
            await analyser.stop()
        return refused

    try:
        refused = asyncio.run(main())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output.text()
    # Backoff: it doubles from 0.5 s and stays at NIRWATCH_OPCUA_INGEST_RECONNECT_MAX_S.
    assert [float(re.findall(r"retry_s=(\S+)", line)[0]) for line in refused] == [0.5, 1.0, 1.0]
    assert all(f"url={url}" in line and "ConnectionRefusedError" in line for line in refused)
    assert "WARNING" in refused[0]
    # A service logs its own decisions at INFO (analyser_connected), not asyncua's chatter.
    assert output.events("analyser_connected") and " INFO asyncua" not in output.text()
    spectra = read_spectra(kafka_settings, expected=4)
    assert sorted(h.sample_id for h, _ in spectra) == ["s0", "s1", "s2", "s3"]
    for header, values in spectra:
        i = int(header.sample_id[1:])
        assert header.message_id == spectrum_message_id("nir-1", f"s{i}", t0 + i)
        np.testing.assert_allclose(values, _spectrum(i), rtol=1e-6)
    summary = (
        "4 spectra sent, 0 dead-lettered, 0 re-reads skipped, 0 overwritten before they could "
        "be read, 1 connections"
    )
    assert summary in output.text()


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


class _ReplacedAnalyser:
    """A client whose analyser has already replaced the notified spectrum by the next one:
    every read returns the newer spectrum's time, id and array."""

    def __init__(self, newer: tuple[str, float, list[float]]) -> None:
        self.newer = newer
        self.reads: list[list[str]] = []

    def get_node(self, node_id: str) -> str:
        return node_id

    async def read_values(self, nodes: list[str]) -> list[Any]:
        self.reads.append(nodes)
        sample_id, ts, array = self.newer
        by_node = {"ns=2;s=AcquisitionTime": datetime.fromtimestamp(ts, UTC),
                   "ns=2;s=SampleId": sample_id, "ns=2;s=Spectrum": array}  # fmt: skip
        return [by_node[n] for n in nodes]


class _Sent:
    def __init__(self) -> None:
        self.headers: list[Any] = []
        self.arrays: list[np.ndarray] = []

    def send(self, header: Any, absorbances: np.ndarray) -> bool:
        self.headers.append(header)
        self.arrays.append(absorbances)
        return True


def test_a_spectrum_replaced_before_its_metadata_is_read_is_never_published_under_another_id() -> (
    None
):
    older, newer = _spectrum(1), _spectrum(2)
    client = _ReplacedAnalyser(("s2", 1_700_000_002.0, newer))
    producer = _Sent()
    metrics = OpcUaIngestMetrics(CollectorRegistry())
    kafka = KafkaSettings(bootstrap="127.0.0.1:9")  # never used: the producer is a fake
    adapter = OpcUaIngest(_settings(kafka, 4840), producer, metrics)  # type: ignore[arg-type]
    notified = ua.DataValue(ua.Variant(older, ua.VariantType.Double))

    asyncio.run(adapter._publish(client, notified))  # type: ignore[arg-type]
    # One request read the array with the id and time: the published triple is the newer one.
    assert "ns=2;s=Spectrum" in client.reads[0] and len(client.reads) == 1
    assert [h.sample_id for h in producer.headers] == ["s2"]
    np.testing.assert_array_equal(producer.arrays[0], newer)
    assert adapter.stats.overwritten == 1
    assert (
        metrics.registry.get_sample_value(
            "nirwatch_opcua_ingest_spectra_total", {"result": "overwritten"}
        )
        == 1
    )

    # The newer spectrum's own notification then reads the same spectrum: a re-read, skipped.
    asyncio.run(adapter._publish(client, ua.DataValue(ua.Variant(newer, ua.VariantType.Double))))  # type: ignore[arg-type]
    assert len(producer.headers) == 1 and adapter.stats.duplicates == 1
    assert adapter.stats.overwritten == 1
