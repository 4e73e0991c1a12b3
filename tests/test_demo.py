from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from nirwatch.cli import main
from nirwatch.settings import KafkaSettings


@pytest.fixture
def demo_env(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KafkaSettings]:
    """The demo pointed at the test broker and the test's own topics."""
    assert kafka_settings.bootstrap
    monkeypatch.setenv("NIRWATCH_KAFKA_BOOTSTRAP", kafka_settings.bootstrap)
    for topic in ("spectra", "dead_letter", "lab_results", "predictions"):
        monkeypatch.setenv(
            f"NIRWATCH_KAFKA_TOPIC_{topic.upper()}", getattr(kafka_settings, f"topic_{topic}")
        )
    monkeypatch.setenv("NIRWATCH_KAFKA_PARTITIONS", "3")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield kafka_settings
    for s, h in handlers.items():
        signal.signal(s, h)


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_end_to_end_smoke(
    demo_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "registry"
    argv = ["demo", "--duration", "20", "--registry", str(registry), "--metrics-port", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no model in" in out  # fitted a PLS model into the fresh registry
    m = re.search(
        r"summary: spectra in (\d+), predictions out (\d+), dead-lettered (\d+).*"
        r"first prediction after ([\d.]+) s",
        out.replace("\n", " "),
    )
    assert m, out
    sent, predicted, dead = (int(g) for g in m.groups()[:3])
    assert sent > 0 and predicted > 0
    assert predicted == sent  # every spectrum of the run was predicted once
    assert dead == 0
    # The fitted calibration spans the simulated line's content: nothing is held as an
    # extrapolation.
    held = re.search(r"held (\d+),", out.replace("\n", " "))
    assert held and held.group(1) == "0", out
    assert (registry / "champion.json").exists()
    # The demo keeps an audit trail beside its registry, so `nirwatch audit` works after it.
    trail = tmp_path / "audit.sqlite3"
    assert main(["audit", "--db", str(trail), "--limit", "0", "--json"]) == 0
    audited = capsys.readouterr().out.splitlines()
    assert len(audited) == predicted


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_drift_scenario_detects_retrains_and_promotes(
    demo_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue-5 story in one process: a new excipient lot at 5 s is flagged out of model,
    drift detectors fire, lab values collected after the alarm retrain a candidate that beats
    the champion on them, and it is promoted (the worker then hot-reloads it)."""
    registry = tmp_path / "registry"
    argv = ["demo", "--duration", "45", "--registry", str(registry), "--metrics-port", "0"]
    argv += ["--scenario", "drift", "--drift", "excipient_lot", "--drift-at", "5", "--rate", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    m = re.search(r"out-of-model (\d+),", out)
    assert m and int(m.group(1)) > 50, out
    assert re.search(r"drift: retrained on \d+ recent lab values: promoted", out), out
    from nirwatch.registry import ModelRegistry

    versions = ModelRegistry(registry).list()
    assert len(versions) == 2
    assert sum(v.status == "champion" for v in versions) == 1
