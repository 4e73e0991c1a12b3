"""Services fail closed and say why in one line (issue 13, items 1 and 7).

No broker configured: every long-running service refuses to start (it never starts a private
broker that would swallow spectra); a taken port or an existing ``--out`` is one clear line,
not a traceback. No test here needs a broker: each must fail before reaching one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nirwatch.apps.cli import main
from nirwatch.transport import broker

#: every command here gives the process its signal handlers back when it stops
pytestmark = pytest.mark.usefixtures("signal_handlers_kept")


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NIRWATCH_KAFKA_BOOTSTRAP, and starting a broker is a test failure."""
    monkeypatch.delenv("NIRWATCH_KAFKA_BOOTSTRAP", raising=False)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a service started a private broker")

    monkeypatch.setattr(broker.EmbeddedBroker, "start", refuse)
    monkeypatch.setattr(broker, "docker_available", lambda: False)
    yield


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (this socket) is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("nirwatch ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"nirwatch {command}: error: "), err
    return lines[0]


def _argv(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if command == "replay":
        csv = tmp_path / "spectra.csv"
        wl = np.arange(1100, 1300, 2)
        rows = [",".join(str(w) for w in wl)] + [",".join(["0.5"] * wl.size)] * 3
        csv.write_text("\n".join(rows) + "\n")
        return ["replay", "--data", str(csv), "--duration", "0.2"]
    if command == "file-drop":
        (tmp_path / "inbox").mkdir()
        return ["file-drop", "--inbox", str(tmp_path / "inbox"), "--once"]
    if command == "worker":
        return ["worker", "--bundle", str(tmp_path / "bundle"), "--metrics-port", "0"]
    if command == "drift-monitor":
        return ["drift-monitor", "--metrics-port", str(broker.free_port())]
    if command == "retrain-service":
        monkeypatch.setenv("NIRWATCH_RETRAIN_MODEL", "pls")
        monkeypatch.setenv("NIRWATCH_RETRAIN_TARGET", "api_content")
        monkeypatch.setenv("NIRWATCH_RETRAIN_WEBHOOK_PORT", "0")
        monkeypatch.setenv("NIRWATCH_RETRAIN_WEBHOOK_TOKEN", "0123456789abcdef0123")
        monkeypatch.setenv("NIRWATCH_RETRAIN_REPORTS_DIR", str(tmp_path / "reports"))
        reg = str(tmp_path / "registry")
        return ["retrain-service", "--once", "--registry", reg, "--simulated-calibration", "40"]
    return ["simulate", "--probes", "1", "--rate", "20", "--duration", "0.2"]


@pytest.mark.parametrize(
    "command",
    ["simulate", "replay", "file-drop", "worker", "drift-monitor", "retrain-service"],
)
def test_service_without_broker_refuses_to_start(
    command: str,
    no_broker: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_argv(command, tmp_path, monkeypatch)) == 1
    line = _one_line_error(capsys.readouterr().err, command)
    assert "NIRWATCH_KAFKA_BOOTSTRAP is not set" in line
    assert "`nirwatch broker`" in line and "export NIRWATCH_KAFKA_BOOTSTRAP=" in line
    assert not (tmp_path / "reports").exists()  # retrain-service trained nothing


def test_retrain_initial_model_and_no_kafka_need_no_broker(
    no_broker: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first champion by hand (the compose init step) needs no broker."""
    argv = _argv("retrain-service", tmp_path, monkeypatch)
    monkeypatch.setenv("NIRWATCH_RETRAIN_POLICY", "auto")
    assert main([*argv[:1], "--initial-model", *argv[2:]]) == 0
    assert (tmp_path / "registry" / "champion.json").exists()


def test_taken_broker_port_is_one_line(
    no_broker: None, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["broker", "--port", str(taken_port)]) == 1
    out, err = capsys.readouterr()
    assert "export" not in out  # no export line for a broker that is not ours
    line = _one_line_error(err, "broker")
    assert f"127.0.0.1:{taken_port} is already in use" in line and "--port" in line


@pytest.mark.parametrize("command", ["worker", "drift-monitor"])
def test_taken_metrics_port_is_one_line(
    command: str,
    taken_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A configured (unreachable) broker: the port is checked before anything connects.
    monkeypatch.setenv("NIRWATCH_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    argv = _argv(command, tmp_path, monkeypatch)
    argv[argv.index("--metrics-port") + 1] = str(taken_port)
    assert main(argv) == 1
    line = _one_line_error(capsys.readouterr().err, command)
    assert f"127.0.0.1:{taken_port} is already in use" in line
    assert f"NIRWATCH_{'WORKER' if command == 'worker' else 'DRIFT'}_METRICS_PORT" in line


def test_taken_webhook_port_is_one_line(
    taken_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _argv("retrain-service", tmp_path, monkeypatch)
    monkeypatch.setenv("NIRWATCH_RETRAIN_WEBHOOK_PORT", str(taken_port))
    assert main([*argv, "--no-kafka"]) == 1
    line = _one_line_error(capsys.readouterr().err, "retrain-service")
    assert "already in use" in line and "NIRWATCH_RETRAIN_WEBHOOK_PORT" in line


def test_train_refuses_an_existing_out_before_fitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.cli_train

    def fitted(*_: object, **__: object) -> None:
        raise AssertionError("fitted before refusing --out")

    monkeypatch.setattr(training.cli_train, "fit_bundle", fitted)
    monkeypatch.setattr(training.cli_train, "load_spectra", fitted)
    (tmp_path / "bundle").mkdir()
    argv = ["train", "--data", str(tmp_path / "x.csv"), "--target", "y"]
    assert main([*argv, "--out", str(tmp_path / "bundle")]) == 1
    line = _one_line_error(capsys.readouterr().err, "train")
    assert "already exists" in line and str(tmp_path / "bundle") in line
