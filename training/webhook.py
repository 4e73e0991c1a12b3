"""HTTP side of ``nirwatch retrain-service``: Alertmanager's webhook, health and metrics.

``POST /alerts`` needs ``Authorization: Bearer <token>`` (checked by the service in constant
time); anything else is answered 401, logged and triggers nothing. ``GET /healthz`` and
``GET /metrics`` (Prometheus text) need no token. The handler only speaks HTTP: what an alert
does is :meth:`training.service.RetrainService.handle_alerts`.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

if TYPE_CHECKING:
    from training.service import RetrainService

#: The webhook logs as part of the retraining service, under that module's logger name.
log = logging.getLogger("training.service")


class WebhookHandler(BaseHTTPRequestHandler):
    server_version = "nirwatch-retrain"
    #: Socket timeout: a client that stops sending cannot hold a thread forever.
    timeout = 30

    @property
    def service(self) -> RetrainService:
        return self.server.service  # type: ignore[attr-defined,no-any-return]

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="nirwatch-retrain"')
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._reply(status, json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
        elif self.path == "/metrics":
            self.service.metrics.labelled.set(len(self.service.buffer.dataset()))
            self._reply(200, generate_latest(self.service.metrics.registry), "text/plain")
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        svc = self.service
        if not svc.authorised(self.headers.get("Authorization")):
            # Never log the header itself: a near-miss token is still a secret.
            log.warning(
                "webhook: rejected unauthorised POST %s from %s", self.path, self.client_address[0]
            )
            svc.metrics.webhook.labels("unauthorised").inc()
            self._json(401, {"error": "unauthorised"})
            return
        if self.path != "/alerts":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            svc.metrics.webhook.labels("bad_request").inc()
            self._json(411, {"error": "Content-Length required"})
            return
        if not 0 <= length <= svc.settings.max_body_bytes:
            svc.metrics.webhook.labels("too_large").inc()
            self._json(413, {"error": f"body over {svc.settings.max_body_bytes} bytes"})
            return
        status, reply = svc.handle_alerts(self.rfile.read(length))
        svc.metrics.webhook.labels("triggered" if status == 202 else str(status)).inc()
        self._json(status, reply)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("webhook %s: " + format, self.client_address[0], *args)
