"""``nirwatch retrain-service`` as a command: --initial-model and --once through main()."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nirwatch.models.registry import ModelRegistry

pytestmark = pytest.mark.slow


def _nirwatch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "NIRWATCH_RETRAIN_MODEL": "pls",
        "NIRWATCH_RETRAIN_TARGET": "api_content",
        "NIRWATCH_RETRAIN_UNIT": "mg",
        "NIRWATCH_RETRAIN_REPORTS_DIR": str(tmp_path / "reports"),
        "NIRWATCH_RETRAIN_WEBHOOK_PORT": "0",
        "NIRWATCH_REGISTRY_DIR": str(tmp_path / "registry"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "nirwatch.apps.cli", "retrain-service", *args],
        env=environ, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_initial_model_then_once(tmp_path: Path) -> None:
    out = _nirwatch(
        tmp_path, "--initial-model", "--no-kafka", "--simulated-calibration", "80",
        NIRWATCH_RETRAIN_POLICY="auto",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["decision"] == "promoted"
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion_version() == first["candidate"]

    again = _nirwatch(tmp_path, "--initial-model", "--no-kafka", "--simulated-calibration", "80")
    assert again.returncode == 0 and "already serves" in again.stdout

    # --once needs the webhook token (the service starts), approval policy keeps the champion
    no_token = _nirwatch(tmp_path, "--once", "--no-kafka", "--simulated-calibration", "80")
    assert no_token.returncode == 1 and "NIRWATCH_RETRAIN_WEBHOOK_TOKEN" in no_token.stderr
    once = _nirwatch(
        tmp_path, "--once", "--no-kafka", "--simulated-calibration", "80",
        NIRWATCH_RETRAIN_WEBHOOK_TOKEN="0123456789abcdef0123",
        NIRWATCH_RETRAIN_POLICY="approval",
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    report = json.loads(once.stdout.strip().splitlines()[-1])
    assert report["decision"] == "candidate"
    assert registry.champion_version() == first["candidate"]
    assert len(list((tmp_path / "reports").glob("retrain-*.json"))) == 2


def test_missing_calibration_is_a_clear_error(tmp_path: Path) -> None:
    out = _nirwatch(tmp_path, "--once", "--no-kafka")
    assert out.returncode == 1 and "no calibration data" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_service_stops_cleanly_on_a_stop_signal(tmp_path: Path, sig: signal.Signals) -> None:
    environ = {
        **os.environ,
        "NIRWATCH_RETRAIN_MODEL": "pls",
        "NIRWATCH_RETRAIN_TARGET": "api_content",
        "NIRWATCH_RETRAIN_REPORTS_DIR": str(tmp_path / "reports"),
        "NIRWATCH_RETRAIN_WEBHOOK_PORT": "0",
        "NIRWATCH_RETRAIN_WEBHOOK_TOKEN": "0123456789abcdef0123",
        "NIRWATCH_REGISTRY_DIR": str(tmp_path / "registry"),
    }
    argv = ["retrain-service", "--no-kafka", "--simulated-calibration", "40"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nirwatch.apps.cli", *argv],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # ends at EOF if the service dies first
            seen.append(line)
            if "event=retrain_service_started" in line:
                break
        assert seen and "event=retrain_service_started" in seen[-1], "".join(seen)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
