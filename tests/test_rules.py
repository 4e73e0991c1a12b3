"""Alert rules and Alertmanager config, checked and unit-tested by promtool / amtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from metric_sets import JOBS, misselected

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules"
RULE_TESTS = sorted((RULES / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
PROMETHEUS = ROOT / "monitoring" / "prometheus" / "prometheus.yml"

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not (shutil.which("promtool") and shutil.which("amtool")),
        reason="Debian's prometheus / prometheus-alertmanager (promtool, amtool) not installed",
    ),
]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid() -> None:
    for path in sorted(RULES.glob("*.yml")):
        out = _run("promtool", "check", "rules", path)
        assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool rule tests found"
    out = _run("promtool", "test", "rules", *RULE_TESTS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set()


def test_rule_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The promtool tests can fail: loosen one threshold and they must."""
    (tmp_path / "tests").mkdir()
    rules = (RULES / "nirwatch.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "nirwatch.yml").write_text(rules.replace("> 0.05", "> 0.5"))
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    out = _run("promtool", "test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert out.returncode != 0
    assert "NirwatchOutOfModelRateHigh" in out.stdout + out.stderr


def test_alertmanager_config_is_valid_and_routes_drift_to_webhook() -> None:
    out = _run("amtool", "check-config", ALERTMANAGER)
    assert out.returncode == 0, out.stdout + out.stderr
    labels = "alertname=NirwatchDriftDetected nirwatch_action=retrain instrument=p1".split()
    out = _run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert out.returncode == 0 and out.stdout.split() == ["retrain-webhook"], out.stdout
    out = _run(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
        "alertname=NirwatchWorkerDown",
    )  # fmt: skip
    assert out.stdout.split() == ["operators"], out.stdout


def test_retrain_webhook_sends_a_bearer_token_from_a_file() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "retrain-webhook"]
    (hook,) = receiver["webhook_configs"]
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"]
    assert "credentials" not in auth  # never the secret itself in the repo
    assert hook["url"].endswith("/alerts")


def test_prometheus_config_is_valid() -> None:
    out = _run("promtool", "check", "config", "--syntax-only", PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr


def _rules() -> list[dict[str, str]]:
    return [
        rule
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_every_rule_selects_the_job_whose_process_exports_the_metric() -> None:
    """A worker alert must not fire on the drift monitor's (or any other) endpoint."""
    problems = {
        rule.get("alert") or rule.get("record"): misselected(rule["expr"]) for rule in _rules()
    }
    assert not {k: v for k, v in problems.items() if v}


def test_prometheus_scrapes_each_process_under_the_job_the_rules_select() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert set(JOBS) <= jobs
