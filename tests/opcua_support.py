"""Helpers of the OPC UA tests: server settings, client certificates, secure clients, free ports,
predictions, spectra and a subscription handler that queues data changes."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, Node, ua
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import read_topic

from inference.opcua.bridge import endpoint_url
from inference.opcua.settings import OpcUaServerSettings
from nirwatch.messages.prediction import Prediction
from nirwatch.messages.spectrum import (
    SpectrumHeader,
    decode_spectrum,
    encode_spectrum,
    new_message_id,
)
from nirwatch.settings import KafkaSettings

CLIENT_URI = "urn:nirwatch:test-client"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_settings(tmp_path: Path, **changes: Any) -> OpcUaServerSettings:
    """Settings of a server on a free loopback port with one password user, alice:s3cret."""
    values: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "port": free_port(),
        "users": "alice:s3cret",
    }
    values.update(changes)
    return OpcUaServerSettings(**values)


def server_certificate(settings: OpcUaServerSettings) -> Path:
    """The server's application certificate (made on its first start)."""
    return settings.cert_dir / "server_cert.der"


def trusted_client(
    tmp_path: Path, settings: OpcUaServerSettings, name: str = "scada"
) -> tuple[Path, Path]:
    """A client application certificate and key, its certificate in the server's trust list."""
    cert = client_certificate(tmp_path / "clients", name)
    settings.trust_dir.mkdir(parents=True, exist_ok=True)
    (settings.trust_dir / f"{name}.der").write_bytes(cert[0].read_bytes())
    return cert


async def password_client(settings: OpcUaServerSettings, cert: tuple[Path, Path]) -> Client:
    """A not yet connected SignAndEncrypt client of the server, logging in as alice:s3cret."""
    return await secure_client(
        endpoint_url(settings),
        cert,
        server_certificate(settings),
        user="alice",
        password="s3cret",
    )


class Notifications:
    """asyncua subscription handler: each data change as (node id string, DataValue) in a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, ua.DataValue]] = asyncio.Queue()

    def datachange_notification(self, node: Any, _val: Any, data: Any) -> None:
        self.queue.put_nowait((str(node.nodeid.Identifier), data.monitored_item.Value))

    async def next(self, timeout: float = 30.0, what: str = "") -> tuple[str, ua.DataValue]:
        """The next data change; AssertionError naming ``what`` after ``timeout`` s without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no data change for {timeout:g} s{f' (waiting for {what})' if what else ''}"
            ) from None


async def wait_for_node(client: Client, node_id: str, timeout: float = 120.0) -> Node:
    """The node ``ns=2;s=<node_id>`` once the server has it (an instrument's nodes appear with
    its first prediction; the consumer group's first join is slow on a busy host)."""
    node = client.get_node(f"ns=2;s={node_id}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            await node.read_browse_name()  # whatever the value's status
            return node
        except ua.uaerrors.BadNodeIdUnknown:
            assert time.monotonic() < deadline, f"{node_id} never appeared"
            await asyncio.sleep(0.1)


def client_certificate(directory: Path, name: str, uri: str = CLIENT_URI) -> tuple[Path, Path]:
    """A self-signed OPC UA client application certificate (DER) and its key (PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "nirwatch tests"},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(uacrypto.der_from_x509(cert))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


async def secure_client(
    url: str,
    cert: tuple[Path, Path],
    server_cert: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
    certificate_user: bool = False,
) -> Client:
    """A not yet connected client on Basic256Sha256 with ``cert`` as its application certificate."""
    client = Client(url, timeout=10)
    client.application_uri = CLIENT_URI
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(cert[0]),
        private_key=str(cert[1]),
        server_certificate=str(server_cert),
        mode=mode,
    )
    if certificate_user:  # log in with the certificate as the user's identity
        await client.load_client_certificate(str(cert[0]))
        await client.load_private_key(cert[1])
    return client


def prediction(instrument: str = "probe-1", **changes: object) -> Prediction:
    now = time.time()
    fields: dict[str, object] = {
        "prediction_id": new_message_id(),
        "message_id": new_message_id(),
        "instrument_id": instrument,
        "sample_id": "s-1",
        "timestamp": now - 0.5,
        "published_at": now,
        "target": "api_content",
        "value": 201.5,
        "model": "cnn",
        "model_version": "3",
        "bundle_checksum": "ab" * 32,
        "unit": "mg",
        "t2": 3.2,
        "q": 0.01,
        "t2_limit": 12.0,
        "q_limit": 0.05,
        "interval_low": 198.0,
        "interval_high": 205.0,
    }
    fields.update(changes)
    return Prediction(**fields)  # type: ignore[arg-type]


def spectrum_message(instrument: str = "probe-1", sample: str = "s-1") -> tuple[bytes, str]:
    """A raw spectrum message (as on the spectra topic) and its SHA-256 (hex)."""
    header = SpectrumHeader(
        new_message_id(), instrument, sample, time.time(), "lin:600:1898:2", 650
    )
    raw = encode_spectrum(header, np.random.default_rng().normal(size=650))
    return raw, hashlib.sha256(raw).hexdigest()


def read_spectra(kafka: KafkaSettings, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every spectrum on ``kafka.topic_spectra`` (decoded), waiting until ``expected`` arrived;
    a few more polls after that, so a duplicate beyond ``expected`` is seen."""
    records = read_topic(kafka, kafka.topic_spectra, expected, timeout, settle_polls=3)
    return [decode_spectrum(r.value) for r in records]
