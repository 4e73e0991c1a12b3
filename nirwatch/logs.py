"""One structured log line per decision a service takes, and the logging set-up of the CLI.

A line reads ``2026-12-02T04:00:00.123Z INFO training.service event=retrain_requested
trigger=webhook outcome=queued reason="alerts: NirwatchDrift"``: ``key=value`` pairs (logfmt),
values with spaces, quotes or ``=`` quoted as JSON strings, so ``grep event=`` and log
shippers parse them without a schema.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Commands that run as long-lived services: they log their decisions at INFO by default.
SERVICE_COMMANDS = frozenset(
    {
        "broker",
        "simulate",
        "replay",
        "file-drop",
        "worker",
        "drift-monitor",
        "retrain-service",
        "opcua-server",
        "opcua-ingest",
    }
)


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_event(event: str, **fields: Any) -> str:
    """``event=NAME key=value ...`` in the order given."""
    return " ".join(f"{k}={_value(v)}" for k, v in {"event": event, **fields}.items())


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured line for a decision (``event=NAME key=value ...``)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_event(event, **fields))


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"


class _ClosingTransportRace(logging.Filter):
    """Drop kafka-python's traceback for a socket it has itself just closed.

    kafka-python 3.0.12 can wake a transport's reader after the client closed the socket
    (a consumer closed while its group join or a metadata refresh is in flight): ``recv`` on
    ``None`` raises AttributeError, which it logs at ERROR with a traceback, although the client
    is shutting down as asked and nothing is lost. Every other transport error still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        closed = "(closed)" in record.getMessage()
        return not (isinstance(exc, AttributeError) and "recv" in str(exc) and closed)


_TRANSPORT_RACE = _ClosingTransportRace()


def configure_logging(command: str | None, verbose: int = 0, quiet: bool = False) -> None:
    """Root logging on stderr: INFO for services, WARNING for one-shot commands.

    ``-v`` lowers the level one step (INFO, then DEBUG), ``-q`` raises it to WARNING.
    """
    base = logging.INFO if command in SERVICE_COMMANDS else logging.WARNING
    level = logging.WARNING if quiet else max(logging.DEBUG, base - 10 * verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_nirwatch", False):
            root.removeHandler(old)
    handler._nirwatch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python and asyncua are chatty at INFO/DEBUG (every connection attempt, metadata
    # refresh, endpoint list): their level follows -v alone (WARNING, -v INFO, -vv DEBUG); the
    # services log broker and analyser lost/back themselves.
    library_level = max(logging.WARNING - 10 * min(verbose, 2), level)
    for library in ("kafka", "asyncua"):
        logging.getLogger(library).setLevel(library_level)
    transport = logging.getLogger("kafka.net.transport")
    if _TRANSPORT_RACE not in transport.filters:
        transport.addFilter(_TRANSPORT_RACE)
