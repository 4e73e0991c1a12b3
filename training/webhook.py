"""HTTP side of ``nirwatch retrain-service``: Alertmanager's webhook, health and metrics.

Served by uvicorn (h11) with a Starlette app, in a thread of the service; Python's
``http.server`` is not meant for production. ``POST /alerts`` needs
``Authorization: Bearer <token>`` (checked by the service in constant time); anything else is
answered 401, logged and triggers nothing. ``GET /healthz`` and ``GET /metrics`` (Prometheus
text) need no token. What an alert does is :meth:`training.service.RetrainService.handle_alerts`.

Limits (settings ``NIRWATCH_RETRAIN_WEBHOOK_*`` and ``NIRWATCH_RETRAIN_MAX_BODY_BYTES``):

* a request must deliver its headers within ``header_timeout_s`` of the connection (or of the
  previous response) and its body within ``body_timeout_s`` of its headers, else the
  connection is closed: a client that trickles bytes cannot hold a connection (uvicorn has
  no such timeout of its own; :func:`_deadline_protocol` adds it);
* a body over ``max_body_bytes`` is answered 413 without being read to the end, whether it
  announces its length or is chunked; headers are bounded by h11 (16 KiB);
* at most ``max_connections`` connections are served at once, more are answered 503;
* TLS when ``tls_cert`` and ``tls_key`` are set (TLS >= 1.2).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import uvicorn
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from nirwatch.errors import ConfigError
from nirwatch.security import server_tls_context

if TYPE_CHECKING:
    from training.service import RetrainService

#: The webhook logs as part of the retraining service, under that module's logger name.
log = logging.getLogger("training.service")


def _deadline_protocol(
    header_timeout_s: float, body_timeout_s: float, on_timeout: Callable[[str], None]
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for receiving each request.

    Phase ``headers`` runs while h11 waits for a request (state IDLE), phase ``body`` while it
    reads one (SEND_BODY); nothing runs while the application answers. Each phase change
    re-arms the timer, so the deadlines are absolute, not reset by every byte.
    """
    timeouts = {"headers": header_timeout_s, "body": body_timeout_s}

    class DeadlineH11Protocol(H11Protocol):
        _phase: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._follow()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase(None)
            super().connection_lost(exc)

        def _follow(self) -> None:
            if self.transport.is_closing():
                self._set_phase(None)
                return
            state = self.conn.their_state
            self._set_phase(
                "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            )

        def _set_phase(self, phase: str | None) -> None:
            if phase == self._phase:
                return
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = phase
            if phase is not None:
                self._deadline = self.loop.call_later(timeouts[phase], self._expired, phase)

        def _expired(self, phase: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            client = self.client[0] if self.client else "?"
            log.warning(
                "webhook: closing connection from %s: request %s not received within %ss",
                client, phase, timeouts[phase],
            )  # fmt: skip
            on_timeout(phase)
            self.transport.close()

    return DeadlineH11Protocol


class WebhookServer:
    """The webhook's HTTP server: bound at construction, served by :meth:`start` in a thread.

    Parameters
    ----------
    service : RetrainService
        Authorises requests and handles alerts; its ``settings`` give the limits.
    """

    def __init__(self, service: RetrainService) -> None:
        s = service.settings
        self.service = service
        if (s.webhook_tls_cert is None) != (s.webhook_tls_key is None):
            raise ConfigError(
                "NIRWATCH_RETRAIN_WEBHOOK_TLS_CERT and NIRWATCH_RETRAIN_WEBHOOK_TLS_KEY must be "
                "set together"
            )
        self.tls = s.webhook_tls_cert is not None
        ssl_factory = None
        if s.webhook_tls_cert is not None and s.webhook_tls_key is not None:
            cert, key = Path(s.webhook_tls_cert), Path(s.webhook_tls_key)
            try:
                server_tls_context(cert, key)  # fail now, naming the files, not in the thread
            except (OSError, ValueError) as exc:
                raise ConfigError(f"webhook TLS certificate {cert} / key {key}: {exc}") from exc
            ssl_factory = lambda _config, _default: server_tls_context(cert, key)  # noqa: E731
        self._sock = _bind(s.webhook_host, s.webhook_port)
        metrics = service.metrics
        config = uvicorn.Config(
            self._app(),
            http=_deadline_protocol(
                s.webhook_header_timeout_s,
                s.webhook_body_timeout_s,
                lambda phase: metrics.webhook.labels(f"timeout_{phase}").inc(),
            ),
            lifespan="off",
            log_config=None,  # the service configures logging
            access_log=False,
            server_header=False,
            limit_concurrency=s.webhook_max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ssl_context_factory=ssl_factory,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self, timeout: float = 30.0) -> None:
        """Serve in a daemon thread; returns once uvicorn accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="retrain-webhook",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the retrain webhook failed to start on {self.address}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    # ---- the application

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/alerts", self._alerts, methods=["POST"]),
            ],
            exception_handlers={404: _http_error, 405: _http_error},
        )

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def _metrics(self, request: Request) -> Response:
        # Synchronous: Starlette runs it in its thread pool, so building the buffer's dataset
        # never holds up the event loop that serves the other connections.
        svc = self.service
        svc.metrics.labelled.set(len(svc.buffer.dataset()))
        return Response(generate_latest(svc.metrics.registry), media_type="text/plain")

    async def _alerts(self, request: Request) -> Response:
        svc = self.service
        if not svc.authorised(request.headers.get("authorization")):
            # Never log the header itself: a near-miss token is still a secret.
            client = request.client.host if request.client else "?"
            log.warning("webhook: rejected unauthorised POST %s from %s", request.url.path, client)
            svc.metrics.webhook.labels("unauthorised").inc()
            return JSONResponse(
                {"error": "unauthorised"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="nirwatch-retrain"'},
            )
        body = await _read_body(request, svc.settings.max_body_bytes)
        if isinstance(body, Response):
            svc.metrics.webhook.labels(
                "too_large" if body.status_code == 413 else "bad_request"
            ).inc()
            return body
        # Training is started by another thread: handle_alerts only queues, it never blocks.
        status, reply = svc.handle_alerts(body)
        svc.metrics.webhook.labels("triggered" if status == 202 else str(status)).inc()
        return JSONResponse(reply, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    return JSONResponse({"error": "not found" if status == 404 else "method not allowed"}, status)


def _refuse(status: int, error: str) -> Response:
    # Connection: close: whatever the client still sends is not read.
    return JSONResponse({"error": error}, status, headers={"Connection": "close"})


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The body, or a 413/400 response once it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _refuse(400, f"bad Content-Length {declared[:20]!r}")
        if int(declared) > limit:
            return _refuse(413, f"body over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _refuse(413, f"body over {limit} bytes")
    except ClientDisconnect:
        return _refuse(400, "client disconnected before the end of the body")
    return bytes(body)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"NIRWATCH_RETRAIN_WEBHOOK_HOST / NIRWATCH_RETRAIN_WEBHOOK_PORT: cannot listen on "
            f"{host}:{port}: {exc}"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
