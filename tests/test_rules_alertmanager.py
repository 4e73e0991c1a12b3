"""The committed Alertmanager routing against the real Alertmanager and the retrain webhook.

Alerts are posted to Alertmanager's API; only those labelled for retraining reach the
webhook, with the bearer token read from the credentials file. A wrong token file gets 401s
and triggers nothing.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import promstack
import pytest
import yaml
from support import wait_until

from nirwatch.errors import DataError
from nirwatch.models.registry import ModelRegistry
from training.labelled import Dataset
from training.retrain import RetrainSettings
from training.service import RetrainService

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "am-token-0123456789abcdef0123"

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(not promstack.HAVE_BINARIES, reason="prometheus-alertmanager missing"),
]


def _refusing_fitter(data: Dataset, out: Path) -> Path:
    raise DataError("fitting is not part of this test")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RetrainService]:
    wl = np.linspace(600, 1898, 50)
    calibration = Dataset(np.zeros((3, 50)), np.zeros(3), wl)
    settings = RetrainSettings(webhook_port=0, reports_dir=tmp_path / "reports")
    svc = RetrainService(
        settings, ModelRegistry(tmp_path / "reg"), calibration, _refusing_fitter, TOKEN,
        tmp_path / "work",
    ).start()  # fmt: skip
    yield svc
    svc.stop()


def _config(svc: RetrainService, token_file: Path) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())
    host, port = svc.address
    for route in config["route"]["routes"]:
        route.update(group_wait="0s", group_interval="1s")
    config["route"].update(group_wait="0s")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://{host}:{port}/alerts"
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return dict(config)


def _post_alerts(am: promstack.Server, alerts: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{am.url}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


ALERTS = [
    {"labels": {"alertname": "NirwatchDriftDetected", "nirwatch_action": "retrain",
                "instrument": "probe-1", "product": "tablet-a", "severity": "warning"}},
    {"labels": {"alertname": "NirwatchWorkerDown", "instance": "w1:9108",
                "severity": "critical"}},
]  # fmt: skip


def _sample(svc: RetrainService, outcome: str) -> float:
    return (
        svc.metrics.registry.get_sample_value(
            "nirwatch_retrain_webhook_requests_total", {"outcome": outcome}
        )
        or 0.0
    )


def test_retrain_alerts_reach_the_webhook_with_the_token(
    tmp_path: Path, service: RetrainService
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with promstack.alertmanager(tmp_path / "am", _config(service, token_file)) as am:
        _post_alerts(am, ALERTS)
        wait_until(lambda: service.reports, 60, "the webhook to be called", interval_s=0.1)
        assert service.wait_idle(30)
    (report,) = service.reports
    assert report["trigger"] == "webhook"
    names = {a["labels"]["alertname"] for a in report["alerts"]}
    assert names == {"NirwatchDriftDetected"}  # the worker-down alert went to operators
    assert _sample(service, "unauthorised") == 0


def test_a_wrong_token_file_is_refused_and_triggers_nothing(
    tmp_path: Path, service: RetrainService
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token-0123456789abcdef")
    with promstack.alertmanager(tmp_path / "am", _config(service, token_file)) as am:
        _post_alerts(am, ALERTS)
        wait_until(lambda: _sample(service, "unauthorised") >= 1, 60, "a request", interval_s=0.1)
    assert service.wait_idle(5) and not service.reports
    assert _sample(service, "triggered") == 0
