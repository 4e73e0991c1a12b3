"""``nirwatch opcua-server`` as a process, read with a generic OPC UA client (asyncua's ``uaread``).

This is the README's worked example: a client certificate made with openssl, put into the trust
list, a password user, the value read over Basic256Sha256 SignAndEncrypt; SIGTERM stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from opcua_support import free_port, prediction

from nirwatch.settings import KafkaSettings

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("openssl"), reason="needs openssl for the client certificate"
    ),
]
UAREAD = Path(sys.executable).with_name("uaread")
NODE = "ns=2;s=line-1.Channel1.Stream1.ChemometricModel.Prediction"


def _client_certificate(directory: Path) -> tuple[Path, Path]:
    """As in the README: uaread's ApplicationUri is urn:example.org:FreeOpcUa:opcua-asyncio."""
    cert, key = directory / "scada.der", directory / "scada-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
            "-keyout", str(key), "-outform", "DER", "-out", str(cert), "-subj", "/CN=scada",
            "-addext", f"subjectAltName=URI:urn:example.org:FreeOpcUa:opcua-asyncio,DNS:{socket.gethostname()}",
            "-addext", "keyUsage=digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment",
            "-addext", "extendedKeyUsage=clientAuth",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _uaread(port: int, security: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(UAREAD), "-u", f"opc.tcp://127.0.0.1:{port}/nirwatch/", "-n", NODE,
            "--security", security, "--user", "dcs", "--password", password, "-t", "datavalue",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_opcua_server_process_serves_a_prediction_to_uaread(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    state = tmp_path / "state"
    port = free_port()
    env = {
        **os.environ,
        "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka_settings.bootstrap),
        "NIRWATCH_KAFKA_TOPIC_PREDICTIONS": kafka_settings.topic_predictions,
        "NIRWATCH_STATE_DIR": str(state),
        "NIRWATCH_OPCUA_USERS": "dcs:line-1-secret",
        "NIRWATCH_OPCUA_METRICS_PORT": "0",
    }
    cert, key = _client_certificate(tmp_path)
    (state / "opcua" / "pki" / "trusted").mkdir(parents=True)
    shutil.copy(cert, state / "opcua" / "pki" / "trusted" / "scada.der")
    args = ["--port", str(port), "--group-id", f"opcua-cli-{port}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nirwatch.apps.cli", "opcua-server", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        producer = KafkaProducer(**kafka_settings.client_options())
        sent = prediction("line-1", value=198.75)
        producer.send(kafka_settings.topic_predictions, sent.encode(), key=b"line-1")
        producer.flush()
        producer.close()
        server_cert = state / "opcua" / "pki" / "own" / "server_cert.der"
        security = f"Basic256Sha256,SignAndEncrypt,{cert},{key},{server_cert}"
        deadline = time.monotonic() + 90
        out = _uaread(port, security, "line-1-secret") if server_cert.exists() else None
        while out is None or "198.75" not in out.stdout:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, out.stdout + out.stderr if out else "no certificate"
            time.sleep(1)
            out = _uaread(port, security, "line-1-secret") if server_cert.exists() else None
        assert "StatusCode(value=0)" in out.stdout  # Good: releasable and fresh
        wrong = _uaread(port, security, "guess")
        assert "198.75" not in wrong.stdout and "BadUserAccessDenied" in wrong.stdout + wrong.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "predictions written" in output
