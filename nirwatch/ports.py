"""Listening on a port with a clear error when it is taken (metrics endpoints, webhook, broker).

A second worker on the same host, or a leftover process, holds the port; the operator needs the
address and the setting to change, not ``OSError: [Errno 98]`` and a traceback.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from nirwatch.errors import PortInUseError

#: bind() errors that mean "someone else has it" or "you may not have it".
_TAKEN = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


def port_error(exc: OSError, host: str, port: int, hint: str) -> PortInUseError:
    """The one-line error for a failed bind: the address, why, and ``hint`` (what to change)."""
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use by another process"
    elif exc.errno == errno.EACCES:
        why = "needs privileges this process does not have"
    else:
        why = f"cannot be listened on ({exc.strerror or exc})"
    return PortInUseError(f"{host}:{port} {why}: {hint}")


def check_port_free(host: str, port: int, hint: str) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound now."""
    with socket.socket() as s:
        # As servers do (Tansu, http.server): a port in TIME_WAIT is free, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise port_error(exc, host, port, hint) from None


#: what a metrics port of 0 means, for every command: no endpoint (never "any free port")
NO_METRICS_PORT = 0


def start_metrics_server(registry: Any, host: str, port: int, setting: str) -> Any | None:
    """``prometheus_client.start_http_server`` with a one-line error for a taken port.

    Returns the server (call ``shutdown()`` on it when the service stops), or None for port
    0: no endpoint, the one meaning of 0 for every ``--metrics-port`` and ``*_METRICS_PORT``.
    """
    from prometheus_client import start_http_server

    if port == NO_METRICS_PORT:
        return None
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        if exc.errno not in _TAKEN:
            raise
        raise port_error(exc, host, port, f"choose another port with {setting}") from None
    return server
