"""Kafka over TLS with nirwatch's client settings (``NIRWATCH_KAFKA_SECURITY_PROTOCOL=SSL``).

The embedded Tansu 0.6.0 cannot serve TLS itself: its CLI declares ``--cert`` and ``--key``
mutually exclusive (``error: the argument '--cert <CERT>' cannot be used with '--key <KEY>'``)
and with only one of them it listens in plaintext. :func:`test_tansu_refuses_cert_with_key`
pins that defect (it fails once a fixed Tansu is bundled: then switch this test to
``EmbeddedBroker(cert=..., key=...)``). Until then TLS is terminated by a small proxy in front
of the broker, built on :func:`nirwatch.security.server_tls_context`, and the broker advertises
the proxy's address, so every client connection (bootstrap and partition leaders) is TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import make_self_signed
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from support import read_topic

from nirwatch.security import server_tls_context
from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import free_port, tansu_binary, wait_for_port
from nirwatch.transport.kafka import ensure_topics, make_producer

pytestmark = pytest.mark.kafka


class TLSTerminator:
    """Accept TLS on ``port`` and relay plaintext bytes to ``target_port`` (asyncio thread)."""

    def __init__(self, port: int, target_port: int, cert: Path, key: Path) -> None:
        self.port, self.target_port = port, target_port
        self.ctx = server_tls_context(cert, key)
        self.handshake_failures = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self.handshake_failures += 1  # a plaintext or untrusting client aborting the handshake

    def start(self) -> TLSTerminator:
        self._thread.start()
        self._loop.set_exception_handler(self._on_error)
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ctx), self._loop
        ).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(bootstrap of the TLS listener, CA file) with Tansu behind a TLS terminator."""
    cert, key = make_self_signed(tmp_path_factory.mktemp("tls"))
    plain, tls = free_port(), free_port()
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}"]
        + ["--advertised-listener-url", f"tcp://127.0.0.1:{tls}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    terminator = TLSTerminator(tls, plain, cert, key)
    try:
        wait_for_port("127.0.0.1", plain)
        terminator.start()
        yield f"127.0.0.1:{tls}", cert
    finally:
        terminator.stop()
        proc.terminate()
        proc.wait(10)


def test_tansu_refuses_cert_with_key(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    done = subprocess.run(
        [*cmd, "--cert", str(cert), "--key", str(key)], capture_output=True, timeout=30
    )
    assert done.returncode != 0 and b"cannot be used with" in done.stderr, (
        "this Tansu accepts --cert with --key: make EmbeddedBroker serve TLS natively and "
        "drop the TLS terminator from tests/test_tls.py"
    )


def test_ssl_round_trip_with_nirwatch_settings(tls_broker: tuple[str, Path]) -> None:
    bootstrap, ca = tls_broker
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap=bootstrap, security_protocol="SSL", ssl_cafile=str(ca), partitions=1
    )
    assert kafka.client_options()["ssl_check_hostname"] is True  # verified, not just encrypted
    ensure_topics(kafka, [topic], 1)
    producer = make_producer(kafka)
    sent = [f"spectrum-{i}".encode() for i in range(20)]
    try:
        for v in sent:
            producer.send(topic, v, key=b"probe-1")
        producer.flush(30)
    finally:
        producer.close()
    got = [r.value for r in read_topic(kafka, topic, len(sent), timeout_s=15, settle_polls=0)]
    assert got == sent


@pytest.mark.parametrize(
    "options",
    [
        {"security_protocol": "PLAINTEXT"},
        {"security_protocol": "SSL"},  # TLS, but the self-signed CA is not trusted
    ],
    ids=["plaintext", "untrusted-ca"],
)
def test_clients_without_tls_or_trust_are_refused(
    tls_broker: tuple[str, Path], options: dict[str, str]
) -> None:
    bootstrap, _ = tls_broker
    with pytest.raises(KafkaError):
        producer = KafkaProducer(
            bootstrap_servers=[bootstrap], bootstrap_timeout_ms=3000, **options
        )
        try:  # if the version probe were skipped, the first send must still fail
            producer.send("never", b"x").get(timeout=5)
        finally:
            producer.close(timeout=2)
    with pytest.raises(KafkaError):
        KafkaConsumer(bootstrap_servers=[bootstrap], bootstrap_timeout_ms=3000, **options)
