"""``nirwatch retrain-service`` as a command: --bootstrap and --once through main()."""

from __future__ import annotations

import json
import os
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


def test_bootstrap_then_once(tmp_path: Path) -> None:
    out = _nirwatch(
        tmp_path, "--bootstrap", "--no-kafka", "--simulated-calibration", "80",
        NIRWATCH_RETRAIN_POLICY="auto",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["decision"] == "promoted"
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion_version() == first["candidate"]

    again = _nirwatch(tmp_path, "--bootstrap", "--no-kafka", "--simulated-calibration", "80")
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
