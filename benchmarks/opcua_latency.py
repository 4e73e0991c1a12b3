"""Latency from a prediction's publication to an OPC UA client's data-change notification.

Starts the embedded broker (or uses ``NIRWATCH_KAFKA_BOOTSTRAP``), runs ``nirwatch opcua-server``
as its own process (Basic256Sha256 SignAndEncrypt, a password user, a trusted client
certificate), subscribes an asyncua client to every instrument's ``Prediction`` node, and
publishes predictions at ``--rate`` per second spread over ``--instruments`` instruments. Each
prediction's value is its sequence number, so each notification finds its publication time
(``published_at``, set just before the send). Reports percentiles over ``--seconds`` after a
warm-up, the notifications received, and the load average.

    .venv/bin/python benchmarks/opcua_latency.py [--rate 100] [--seconds 30] [--instruments 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from asyncua import Client, Node, ua
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from kafka import KafkaProducer

from nirwatch.messages.prediction import Prediction
from nirwatch.messages.spectrum import new_message_id
from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import free_port, kafka_bootstrap
from nirwatch.transport.kafka import ensure_topics

CLIENT_URI = "urn:nirwatch:bench-client"


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_certificate(directory: Path) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, "bench", {}, [x509.UniformResourceIdentifier(CLIENT_URI)],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )  # fmt: skip
    cert_path, key_path = directory / "bench.der", directory / "bench.pem"
    cert_path.write_bytes(uacrypto.der_from_x509(cert))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@contextlib.contextmanager
def opcua_server(kafka: KafkaSettings, state: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        **kafka.env(),
        "NIRWATCH_STATE_DIR": str(state),
        "NIRWATCH_OPCUA_USERS": "bench:bench-secret",
        "NIRWATCH_OPCUA_METRICS_PORT": "0",
        "NIRWATCH_OPCUA_IDLE_POLL_MS": "100",
    }
    cmd = [sys.executable, "-m", "nirwatch.apps.cli", "-q", "opcua-server", "--port", str(port)]
    proc = subprocess.Popen(
        cmd + ["--group-id", f"bench-{uuid.uuid4().hex[:6]}"], env=env, text=True
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def publish(
    kafka: KafkaSettings,
    rate: float,
    seconds: float,
    instruments: int,
    sent: dict[int, float],
    stop: threading.Event,
) -> None:
    producer = KafkaProducer(**kafka.client_options(), linger_ms=0, acks=1)
    start = time.perf_counter()
    i = 0
    while not stop.is_set() and i < rate * seconds:
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        instrument = f"probe-{i % instruments}"
        now = time.time()
        p = Prediction(
            prediction_id=new_message_id(), message_id=new_message_id(), instrument_id=instrument,
            sample_id=f"s{i}", timestamp=now - 0.05, published_at=now, target="api",
            value=float(i), model="cnn", model_version="1", bundle_checksum="c", unit="mg",
        )  # fmt: skip
        sent[i] = now
        producer.send(kafka.topic_predictions, p.encode(), key=instrument.encode())
        i += 1
    producer.flush()
    producer.close()


async def connected_client(
    args: argparse.Namespace, kafka: KafkaSettings, port: int, state: Path, cert: tuple[Path, Path]
) -> tuple[Client, list[Node]]:
    """Prime every instrument's nodes (value -1), connect securely, wait for the nodes."""
    server_cert = state / "opcua" / "pki" / "own" / "server_cert.der"
    primer = KafkaProducer(**kafka.client_options())
    for k in range(args.instruments):
        p = Prediction(
            prediction_id=new_message_id(), message_id=new_message_id(), instrument_id=f"probe-{k}",
            sample_id="prime", timestamp=time.time(), published_at=time.time(), target="api",
            value=-1.0, model="cnn", model_version="1", bundle_checksum="c",
        )  # fmt: skip
        primer.send(kafka.topic_predictions, p.encode(), key=f"probe-{k}".encode())
    primer.flush()
    primer.close()
    deadline = time.monotonic() + 180
    while not server_cert.exists():
        await asyncio.sleep(0.5)
    client = Client(f"opc.tcp://127.0.0.1:{port}/nirwatch/", timeout=30)
    client.application_uri = CLIENT_URI
    client.set_user("bench")
    client.set_password("bench-secret")
    await client.set_security(
        SecurityPolicyBasic256Sha256, certificate=str(cert[0]), private_key=str(cert[1]),
        server_certificate=str(server_cert), mode=ua.MessageSecurityMode.SignAndEncrypt,
    )  # fmt: skip
    while True:
        try:
            await client.connect()
            break
        except (OSError, ua.UaError):
            assert time.monotonic() < deadline, "server did not come up"
            await asyncio.sleep(1)
    nodes = [
        client.get_node(f"ns=2;s=probe-{k}.Channel1.Stream1.ChemometricModel.Prediction")
        for k in range(args.instruments)
    ]
    for node in nodes:
        while True:
            try:
                await node.read_value()
                break
            except ua.uaerrors.BadNodeIdUnknown:
                assert time.monotonic() < deadline, "predictions never reached the server"
                await asyncio.sleep(0.5)
    return client, nodes


async def measure(
    args: argparse.Namespace,
    kafka: KafkaSettings,
    port: int,
    state: Path,
    cert: tuple[Path, Path],
    server_pid: int,
) -> dict[str, object]:
    sent: dict[int, float] = {}
    latencies: list[tuple[int, float]] = []

    class Handler:
        def datachange_notification(self, _node: object, value: object, _data: object) -> None:
            received = time.time()
            if isinstance(value, float) and int(value) in sent:
                latencies.append((int(value), received - sent[int(value)]))

    stop = threading.Event()
    client, nodes = await connected_client(args, kafka, port, state, cert)
    try:
        sub = await client.create_subscription(args.publishing_ms, Handler())
        await sub.subscribe_data_change(nodes, queuesize=10)
        await asyncio.sleep(1)
        total = args.seconds + args.warmup
        publisher = threading.Thread(
            target=publish, args=(kafka, args.rate, total, args.instruments, sent, stop)
        )
        load_before = os.getloadavg()
        cpu_before = cpu_seconds(server_pid)
        publisher.start()
        await asyncio.to_thread(publisher.join)
        await asyncio.sleep(3)
        server_cpu = cpu_seconds(server_pid) - cpu_before
        load_after = os.getloadavg()
    finally:
        stop.set()
        await client.disconnect()
    first = int(args.rate * args.warmup)
    lat = np.array([v for i, v in latencies if i >= first]) * 1000
    n_sent = len(sent) - first
    return {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "instruments": args.instruments,
        "publishing_interval_ms": args.publishing_ms,
        "predictions_measured": n_sent,
        "notifications": int(lat.size),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "server_cpu_ms_per_prediction": round(1000 * server_cpu / max(1, len(sent)), 3),
        "server_cpu_share_of_one_core": round(server_cpu / (total + 3), 3),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="predictions per second")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    p.add_argument("--instruments", type=int, default=4)
    p.add_argument(
        "--publishing-ms", type=float, default=10.0, help="subscription publishing interval"
    )
    args = p.parse_args(argv)
    with (
        kafka_bootstrap(os.environ.get("NIRWATCH_KAFKA_BOOTSTRAP")) as bootstrap,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag = uuid.uuid4().hex[:6]
        kafka = KafkaSettings(
            bootstrap=bootstrap, topic_predictions=f"bench{tag}.predictions", partitions=6
        )
        ensure_topics(kafka, [kafka.topic_predictions])
        state = Path(tmp) / "state"
        trusted = state / "opcua" / "pki" / "trusted"
        trusted.mkdir(parents=True)
        cert = client_certificate(Path(tmp))
        shutil.copy(cert[0], trusted / "bench.der")
        port = free_port()
        with opcua_server(kafka, state, port) as server:
            result = asyncio.run(measure(args, kafka, port, state, cert, server.pid))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
