from __future__ import annotations

import re
from pathlib import Path

import pytest

from nirwatch.apps.cli import main
from nirwatch.settings import KafkaSettings


@pytest.fixture
def demo_env(cli_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    """The demo pointed at the test broker and the test's own topics (3 partitions each)."""
    monkeypatch.setenv("NIRWATCH_KAFKA_PARTITIONS", "3")
    return cli_env


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_end_to_end_smoke(
    demo_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PLS serves first; a CNN trained in the background is promoted and hot-reloaded."""
    registry = tmp_path / "registry"
    argv = ["demo", "--duration", "180", "--registry", str(registry), "--metrics-port", "0"]
    argv += ["--cnn-epochs", "10", "--cnn-members", "2"]  # a small CNN: minutes on a busy CPU
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
    # Not a terminal: the legend once, then periodic plain lines (no table cut at 80 columns).
    assert out.count("#: sample number; API mg: predicted API content") == 1
    probe_lines = re.findall(r"^  probe-1 #\d+ [\d.]+ mg model (pls|cnn) (\w{4}) ", out, re.M)
    assert len(probe_lines) >= 5, out
    assert "┃" not in out and "│" not in out  # no table drawing
    # The hot reload: PLS first, then the promoted CNN's version serves (by itself, not as a
    # PLS fallback).
    from nirwatch.models.registry import ModelRegistry

    infos = {i.version: i for i in ModelRegistry(registry).list()}
    champion = next(i for i in infos.values() if i.status == "champion")
    assert champion.has_cnn and len(infos) == 2, infos
    assert re.search(rf"cnn: CNN {champion.version[-4:]} .*promoted", out), out
    assert probe_lines[0] == ("pls", next(v for v in infos if v != champion.version)[-4:])
    assert ("cnn", champion.version[-4:]) in probe_lines, probe_lines
    assert f"served by cnn {champion.version}" in out.replace("\n", " "), out
    progress = re.findall(r"CNN member (\d)/2", out)
    assert progress, out  # the child's plain progress lines reached the status line


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_drift_scenario_detects_retrains_and_promotes(
    demo_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue-5 story in one process: a new excipient lot at 5 s is flagged out of model,
    drift detectors fire, lab values collected after the alarm retrain a candidate that beats
    the champion on them, and it is promoted (the worker then hot-reloads it)."""
    registry = tmp_path / "registry"
    argv = ["demo", "--duration", "75", "--registry", str(registry), "--metrics-port", "0"]
    argv += ["--scenario", "drift", "--drift", "excipient_lot", "--drift-at", "5", "--rate", "4"]
    argv += ["--cnn-epochs", "0"]  # this story is about PLS: no background CNN
    assert main(argv) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    m = re.search(r"out-of-model (\d+),", out)
    assert m and int(m.group(1)) > 50, out
    assert re.search(r"drift: retrained on \d+ recent lab values: promoted", out), out
    assert "out-of-model share" in out  # the promotion checked it (issue 13 item 5)
    from nirwatch.models.registry import ModelRegistry
    from training.promotion import out_of_model_bound

    versions = ModelRegistry(registry).list()
    assert len(versions) == 2
    champion = next(v for v in versions if v.status == "champion")
    assert sum(v.status == "champion" for v in versions) == 1
    # The retrained model serves the new lot in model: the spectra end back in model.
    now = re.search(r"now: out-of-model (\d+) of the latest (\d+) predictions", out)
    assert now and int(now.group(2)) == 60, out
    assert int(now.group(1)) / 60 <= out_of_model_bound(60), out  # ~ the nominal 2 %, not all
    assert f"served by pls {champion.version}" in out, out
