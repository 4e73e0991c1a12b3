"""The retrain webhook's HTTP server under abuse: oversized bodies, slow clients, floods, TLS.

Issue 13 item 9: the webhook ran on ``http.server``. It now runs on uvicorn + Starlette
(training/webhook.py) with a body-size limit, header and body deadlines, a connection limit
and optional TLS. Every test ends by checking that the service still answers and that no
retrain was triggered by the abuse (the fitter was never called).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import make_self_signed

from nirwatch.errors import ConfigError
from nirwatch.models.registry import ModelRegistry
from nirwatch.settings import load_settings
from training.labelled import Dataset
from training.retrain import RetrainSettings
from training.service import RetrainService

TOKEN = "webhook-token-0123456789abcdef"
ALERT = {"alerts": [{"status": "firing", "labels": {"alertname": "NirwatchDriftDetected"}}]}


class RecordingFitter:
    """Counts calls; a retrain that reaches the fitter was triggered."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    def __call__(self, data: Dataset, out: Path) -> Path:
        self.calls += 1
        self.called.set()
        raise RuntimeError("the test fitter fits nothing")


def make_service(tmp_path: Path, **overrides: Any) -> tuple[RetrainService, RecordingFitter]:
    rng = np.random.default_rng(0)
    wl = np.arange(600.0, 620.0, 2.0)
    calibration = Dataset(rng.normal(size=(20, wl.size)), rng.normal(size=20), wl)
    settings = load_settings(
        RetrainSettings,
        webhook_port=0,
        reports_dir=tmp_path / "reports",
        max_body_bytes=4096,
        webhook_header_timeout_s=0.5,
        webhook_body_timeout_s=0.5,
        webhook_max_connections=16,
        **overrides,
    )
    fitter = RecordingFitter()
    svc = RetrainService(
        settings, ModelRegistry(tmp_path / "reg"), calibration, fitter, TOKEN, tmp_path / "w"
    )
    return svc, fitter


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[RetrainService, RecordingFitter]]:
    svc, fitter = make_service(tmp_path)
    svc.start()
    yield svc, fitter
    svc.stop()


def outcome(svc: RetrainService, label: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "nirwatch_retrain_webhook_requests_total", {"outcome": label}
    )
    return value or 0.0


def healthy(svc: RetrainService) -> bool:
    host, port = svc.address
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
        return resp.status == 200 and resp.read() == b"ok\n"


def post(svc: RetrainService, body: bytes, auth: str | None, **headers: str) -> int:
    host, port = svc.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    hdrs = {"Content-Type": "application/json", **headers}
    if auth is not None:
        hdrs["Authorization"] = auth
    try:
        conn.request("POST", "/alerts", body=body, headers=hdrs)
        return conn.getresponse().status
    finally:
        conn.close()


def closed_by_server(sock: socket.socket) -> bytes:
    """Read until the server closes; the socket timeout fails the test if it never does."""
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def assert_nothing_triggered(svc: RetrainService, fitter: RecordingFitter) -> None:
    assert healthy(svc)
    assert svc.wait_idle(5) and not svc.reports and fitter.calls == 0


def test_oversized_bodies_are_refused_unread(
    service: tuple[RetrainService, RecordingFitter],
) -> None:
    svc, fitter = service
    big = json.dumps({**ALERT, "pad": "x" * 10_000}).encode()
    assert post(svc, big, f"Bearer {TOKEN}") == 413
    # Chunked, so no Content-Length announces the size: refused once the limit is passed.
    assert post(svc, iter([big[:3000], big[3000:]]), f"Bearer {TOKEN}") == 413  # type: ignore[arg-type]
    # A huge announced length is answered at once, without waiting for a byte of it.
    host, port = svc.address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            + b"{"
        )
        reply = closed_by_server(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    # Headers beyond h11's bound are refused as well.
    assert post(svc, b"{}", f"Bearer {TOKEN}", **{"X-Pad": "y" * 70_000}) in (400, 431)
    assert outcome(svc, "too_large") == 3
    assert_nothing_triggered(svc, fitter)
    # The same service still triggers on a well-formed alert.
    assert post(svc, json.dumps(ALERT).encode(), f"Bearer {TOKEN}") == 202
    assert fitter.called.wait(30)


def test_slow_clients_are_cut_off_and_do_not_block_others(
    service: tuple[RetrainService, RecordingFitter],
) -> None:
    svc, fitter = service
    host, port = svc.address
    request = (
        b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
    )
    slow = [socket.create_connection((host, port), timeout=10) for _ in range(8)]
    for sock in slow:
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHo")  # headers never finished
    assert healthy(svc)  # others are served meanwhile

    # A client trickling its headers one byte at a time is cut off all the same.
    trickle = socket.create_connection((host, port), timeout=10)
    closed = False
    for byte in request:
        try:
            trickle.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.05)
    assert closed or closed_by_server(trickle) == b""
    for sock in slow:
        assert closed_by_server(sock) == b""  # closed without a reply
        sock.close()
    trickle.close()

    # A body that stops arriving after complete headers.
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request + b"Content-Length: 200\r\n\r\n" + json.dumps(ALERT).encode()[:20])
        closed_by_server(sock)
    assert outcome(svc, "timeout_headers") == 9
    assert outcome(svc, "timeout_body") == 1
    assert_nothing_triggered(svc, fitter)


def test_concurrent_unauthorised_calls_trigger_nothing(
    service: tuple[RetrainService, RecordingFitter],
) -> None:
    svc, fitter = service
    body = json.dumps(ALERT).encode()
    auths = [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", TOKEN, "Bearer "]
    with ThreadPoolExecutor(max_workers=48) as pool:
        statuses = list(pool.map(lambda i: post(svc, body, auths[i % len(auths)]), range(300)))
    # Over the connection limit a call is answered 503, never let through.
    assert set(statuses) <= {401, 503} and statuses.count(401) > 0
    assert outcome(svc, "unauthorised") == statuses.count(401)
    assert_nothing_triggered(svc, fitter)


def test_tls(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    svc, fitter = make_service(tmp_path, webhook_tls_cert=cert, webhook_tls_key=key)
    svc.start()
    try:
        host, port = svc.address
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        req = urllib.request.Request(
            f"https://{host}:{port}/alerts", data=json.dumps(ALERT).encode(), method="POST"
        )
        req.add_header("Authorization", "Bearer nope-nope-nope-nope")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10, context=ctx)
        assert exc.value.code == 401
        with urllib.request.urlopen(f"https://{host}:{port}/healthz", timeout=10, context=ctx) as r:
            assert r.status == 200
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
            urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5)
        assert svc.wait_idle(5) and fitter.calls == 0
    finally:
        svc.stop()
    with pytest.raises(ConfigError, match="TLS_CERT and NIRWATCH_RETRAIN_WEBHOOK_TLS_KEY"):
        make_service(tmp_path, webhook_tls_cert=cert)
    with pytest.raises(ConfigError, match="webhook TLS certificate"):
        make_service(tmp_path, webhook_tls_cert=key, webhook_tls_key=key)
