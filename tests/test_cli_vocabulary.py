"""One word per idea across the commands (README, Vocabulary; docs/SETTINGS.md, Renamed names).

"batch" is a production batch, the worker's group of Kafka records a micro-batch, a CNN step's
spectra a mini-batch; "bootstrap" is the Kafka servers, the first model of a registry the
initial model; ``--registry`` names a model registry everywhere; a metrics port of 0 is no
endpoint for every command. Old names keep working, each use logging a warning.
"""

from __future__ import annotations

import argparse
import logging

import pytest
from prometheus_client import CollectorRegistry

from inference.settings import WorkerSettings
from monitoring.drift_monitor import DriftSettings
from nirwatch.apps.cli import COMMANDS, build_parser, main
from nirwatch.apps.demo_parts import demo_metrics_server
from nirwatch.ports import start_metrics_server
from nirwatch.renames import renamed_options
from nirwatch.settings import load_settings
from nirwatch.transport.broker import free_port
from training.settings import TrainingSettings


def command_parser(command: str) -> argparse.ArgumentParser:
    top = build_parser(command)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def visible_options(command: str) -> dict[str, str]:
    """``option -> help`` of a command's options, the hidden old names left out."""
    parser = command_parser(command)
    old = set(renamed_options(parser))
    return {
        opt: action.help or ""
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in old
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_use_one_word_per_idea(command: str) -> None:
    for opt, help_ in visible_options(command).items():
        if "batch" in opt:
            assert opt == "--batch" or "micro-batch" in opt, f"{command} {opt}: which batch?"
        assert "bootstrap" not in opt, f"{command} {opt}: bootstrap is the Kafka servers"
        assert opt != "--register", f"{command} {opt}: the registry option is --registry"
        if opt == "--metrics-port":
            assert "0: none" in help_, f"{command} --metrics-port: 0 means no endpoint"


def test_old_env_names_still_work_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NIRWATCH_WORKER_MAX_BATCH_SIZE", "500")
    monkeypatch.setenv("NIRWATCH_TRAIN_BATCH_SIZE", "32")
    with caplog.at_level(logging.WARNING, logger="nirwatch.renames"):
        assert load_settings(WorkerSettings).micro_batch_size == 500
        assert load_settings(TrainingSettings).mini_batch_size == 32
    lines = [r.getMessage() for r in caplog.records]
    assert (
        "event=deprecated_name old=NIRWATCH_WORKER_MAX_BATCH_SIZE "
        "new=NIRWATCH_WORKER_MICRO_BATCH_SIZE"
    ) in lines
    assert (
        "event=deprecated_name old=NIRWATCH_TRAIN_BATCH_SIZE new=NIRWATCH_TRAIN_MINI_BATCH_SIZE"
        in lines
    )


def test_the_new_env_name_wins_over_the_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIRWATCH_WORKER_MAX_BATCH_SIZE", "500")
    monkeypatch.setenv("NIRWATCH_WORKER_MICRO_BATCH_SIZE", "700")
    assert load_settings(WorkerSettings).micro_batch_size == 700
    monkeypatch.delenv("NIRWATCH_WORKER_MAX_BATCH_SIZE")
    assert load_settings(WorkerSettings).micro_batch_size == 700


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["worker", "--batch-size", "64"], "micro_batch_size", 64),
        (["retrain-service", "--bootstrap"], "initial_model", True),
        (["train", "--data", "x.csv", "--target", "y", "--register", "reg"], "registry", "reg"),
    ],
)
def test_old_options_fill_the_new_ones(argv: list[str], dest: str, value: object) -> None:
    args = build_parser(argv[0]).parse_args(argv)
    assert str(getattr(args, dest)) == str(value)


def test_an_old_option_logs_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NIRWATCH_KAFKA_BOOTSTRAP", raising=False)
    assert main(["worker", "--batch-size", "64"]) == 1  # no broker: refused after parsing
    err = capsys.readouterr().err
    assert "event=deprecated_name old=--batch-size new=--micro-batch-size" in err, err
    assert main(["worker", "--micro-batch-size", "64"]) == 1
    assert "deprecated_name" not in capsys.readouterr().err


def test_metrics_port_zero_is_no_endpoint_everywhere() -> None:
    registry = CollectorRegistry()
    assert start_metrics_server(registry, "127.0.0.1", 0, "X") is None
    assert demo_metrics_server(0, registry) == (None, "off (--metrics-port 0)")
    assert DriftSettings(metrics_port=0).metrics_port == 0
    assert WorkerSettings(metrics_port=0).metrics_port == 0


def test_demo_metrics_on_a_taken_port_move_to_a_free_one() -> None:
    port = free_port()
    first, url = demo_metrics_server(port, CollectorRegistry())
    try:
        second, other = demo_metrics_server(port, CollectorRegistry())
        try:
            assert url == f"http://127.0.0.1:{port}/metrics" and other != url
        finally:
            second.shutdown()
    finally:
        first.shutdown()
