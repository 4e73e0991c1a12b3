"""Real Prometheus and Alertmanager (Debian binaries) on loopback for tests.

Each server gets a generated config in a temporary directory and a free port, and is stopped
(terminate, then kill) when its context exits. Nothing here mocks Prometheus: queries go to
the real HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from support import wait_until

from nirwatch.transport.broker import free_port

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
HAVE_BINARIES = bool(PROMETHEUS and ALERTMANAGER)


@dataclass
class Server:
    """A running server: its base URL, process and directory (logs in ``log``)."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")

    def get_json(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            return json.load(resp)


def _wait_ready(server: Server, timeout: float) -> None:
    def ready() -> bool:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)

    def exited() -> str | None:
        return None if server.process.poll() is None else "it exited"

    try:
        wait_until(ready, timeout, f"{server.url} to be ready", ignore=(OSError,), abort=exited)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.log}") from None


@contextlib.contextmanager
def _serve(args: list[str], directory: Path, port: int, timeout: float) -> Iterator[Server]:
    log = open(directory / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    server = Server(f"http://127.0.0.1:{port}", proc, directory)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def prometheus(
    directory: Path,
    scrape_targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    alertmanager_url: str | None = None,
    interval: str = "1s",
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Run Prometheus scraping ``{job: [host:port, ...]}`` every ``interval``.

    Rule files are copied into ``directory`` so a test may pass edited copies.
    """
    if not PROMETHEUS:
        raise RuntimeError("prometheus binary not found (apt-get install prometheus)")
    directory.mkdir(parents=True, exist_ok=True)
    rules = []
    for i, path in enumerate(rule_files):
        dest = directory / f"rules{i}_{Path(path).name}"
        shutil.copy(path, dest)
        rules.append(str(dest))
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rules,
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_targets.items()
        ],
    }
    if alertmanager_url:
        target = urllib.parse.urlparse(alertmanager_url).netloc
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        PROMETHEUS,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    with _serve(args, directory, port, timeout) as server:
        yield server


@contextlib.contextmanager
def alertmanager(
    directory: Path, config: Mapping[str, Any], timeout: float = 30.0
) -> Iterator[Server]:
    """Run Alertmanager with ``config`` (a dict, written as YAML) and no clustering."""
    if not ALERTMANAGER:
        raise RuntimeError(
            "alertmanager binary not found (apt-get install prometheus-alertmanager)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    args = [
        ALERTMANAGER,
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with _serve(args, directory, port, timeout) as server:
        yield server


def query(server: Server, expr: str) -> list[dict[str, Any]]:
    """Instant query through ``/api/v1/query``; returns the result list (raises on error)."""
    body = server.get_json("/api/v1/query", query=expr)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]
