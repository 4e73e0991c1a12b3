"""Grafana dashboards: structure, and every panel's PromQL answered by a real Prometheus.

One ``prometheus_client`` endpoint per process (worker, drift monitor, retrain service,
file-drop adapter), each with only its own metric set, is scraped by the real Prometheus
under the job name of ``monitoring/prometheus/prometheus.yml``; a thread keeps filling them
with realistic values. Every target of every panel (template variables substituted as Grafana
would) must return finite data, so a panel selecting the wrong job shows up empty.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import promstack
import pytest
import yaml
from metric_sets import JOBS, exported, misselected
from prometheus_client import CollectorRegistry, start_http_server
from support import wait_until

from nirwatch.metrics import (
    DriftMetrics,
    FileDropMetrics,
    OpcUaServerMetrics,
    RetrainMetrics,
    WorkerMetrics,
)
from nirwatch.transport.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
JOB_NAMES = tuple(JOBS)
#: Values Grafana would put in for the template variables and built-ins.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$instrument": "probe-1",
    "$product": "tablet-a",
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _substitute(expr: str) -> str:
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, SUBSTITUTIONS[name])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def _targets() -> list[tuple[str, str, str]]:
    return [
        (path.stem, panel["title"], target["expr"])
        for path in DASHBOARDS
        for panel in _panels(_load(path))
        for target in panel["targets"]
    ]


def _fill(metrics: WorkerMetrics, drift: DriftMetrics, rng: np.random.Generator) -> None:
    """One worker micro-batch's (and the drift monitor's) worth of realistic metric updates."""
    for instrument, product in (("probe-1", "tablet-a"), ("probe-2", "tablet-b")):
        n = int(rng.integers(20, 60))
        metrics.consumed.labels(instrument).inc(n)
        metrics.predictions.labels(instrument, "cnn").inc(n - 2)
        metrics.predictions.labels(instrument, "pls").inc(2)
        metrics.out_of_model.labels(instrument).inc(int(rng.integers(0, 3)))
        metrics.outside_range.labels(instrument).inc(int(rng.integers(0, 2)))
        metrics.last_prediction.labels(instrument, product).set(rng.normal(200.0, 5.0))
        metrics.t2.labels(instrument).set(rng.chisquare(5))
        metrics.q.labels(instrument).set(rng.gamma(2.0, 0.002))
        metrics.batch_size.observe(n)
        for detector in ("exceedance_rate", "content_page_hinkley", "cnn_pls_cusum"):
            drift.drift_score.labels(instrument, product, detector).set(rng.uniform(0, 0.8))
            drift.drift_detected.labels(instrument, product, detector).set(0)
        drift.lab_rmse.labels(instrument, product).set(abs(rng.normal(4.0, 0.3)))
        drift.lab_bias.labels(instrument, product).set(rng.normal(0.0, 0.5))
        drift.lab_rmse_limit.labels(instrument, product).set(6.5)
        drift.lab_bias_limit.labels(instrument, product).set(3.2)
        for latency in rng.gamma(2.0, 0.004, size=n):
            metrics.latency_seconds.observe(latency)
    metrics.fallbacks.labels("cnn_pls_disagree").inc(4)
    metrics.dead_lettered.labels("non_finite").inc(int(rng.integers(0, 2)))
    metrics.inference_seconds.observe(rng.gamma(2.0, 0.002))
    for stage in ("poll", "decode", "predict", "audit", "publish", "commit"):
        metrics.stage_seconds.labels(stage).observe(rng.gamma(2.0, 0.002))
    for partition in range(3):
        metrics.consumer_lag.labels("nirwatch.spectra", str(partition)).set(
            float(rng.integers(0, 50))
        )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[promstack.Server]:
    if not promstack.HAVE_BINARIES:
        pytest.skip("Debian's prometheus / prometheus-alertmanager not installed")
    registries = {job: CollectorRegistry() for job in JOB_NAMES}
    metrics = WorkerMetrics(registries["nirwatch-worker"])
    metrics.t2_limit.set(15.09)
    metrics.q_limit.set(0.012)
    metrics.broker_up.set(1)
    metrics.model_info.info(
        {"version": "v0003", "checksum": "9f2c41", "target": "assay_mg", "cnn": "loaded"}
    )
    metrics.model_reloads.labels("ok").inc()
    drift = DriftMetrics(registries["nirwatch-drift"])
    drift.lab_rmsecv.set(4.3)
    retrain = RetrainMetrics(registries["nirwatch-retrain"])
    retrain.retrains.labels("promoted").inc()
    retrain.retrains.labels("candidate").inc(2)
    retrain.webhook.labels("triggered").inc()
    retrain.webhook.labels("unauthorised").inc()
    retrain.labelled.set(312)
    file_drop = FileDropMetrics(registries["nirwatch-file-drop"])
    file_drop.inbox_files.set(3)
    file_drop.oldest_file_age_seconds.set(42.0)
    opcua = OpcUaServerMetrics(registries["nirwatch-opcua"])
    opcua.sessions.set(2)
    opcua.broker_reachable.set(1)
    opcua.consumer_lag.set(3)
    for instrument, age in (("probe-1", 0.4), ("probe-2", 31.0)):
        opcua.value_age_seconds.labels(instrument).set(age)
        opcua.stale.labels(instrument).set(float(age > 10))
    servers, targets = [], {}
    for job, registry in registries.items():
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        targets[job] = [f"127.0.0.1:{port}"]
    stop = threading.Event()
    rng = np.random.default_rng(0)

    def feed() -> None:
        while not stop.wait(0.2):
            _fill(metrics, drift, rng)
            file_drop.files.labels("done").inc()
            file_drop.spectra.labels("sent").inc(int(rng.integers(1, 20)))
            opcua.publishes.labels("probe-1").inc(int(rng.integers(1, 20)))
            opcua.latency_seconds.observe(rng.gamma(2.0, 0.004))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with promstack.prometheus(tmp_path_factory.mktemp("prometheus"), targets) as prom:
            # a few scrapes of every job, so rate() has at least two points in its window
            wait_until(
                lambda: (
                    len(promstack.query(prom, "count_over_time(up[1m]) >= 4")) == len(JOB_NAMES)
                ),
                60,
                "four scrapes of every job",
                interval_s=0.25,
            )
            yield prom
    finally:
        stop.set()
        feeder.join()
        for server, thread in servers:
            server.shutdown()
            thread.join()


@pytest.mark.prometheus
@pytest.mark.parametrize(("dashboard", "title", "expr"), _targets())
def test_every_panel_query_returns_data(
    prometheus: promstack.Server, dashboard: str, title: str, expr: str
) -> None:
    result = promstack.query(prometheus, _substitute(expr))
    assert result, f"{dashboard} / {title}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{dashboard} / {title}: {values}"


@pytest.mark.prometheus
def test_template_variables_list_label_values(prometheus: promstack.Server) -> None:
    for path in DASHBOARDS:
        for variable in _load(path)["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert m, variable["query"]
            selector, label = _substitute(m.group(1)), m.group(2)
            body = prometheus.get_json(f"/api/v1/label/{label}/values", **{"match[]": selector})
            assert SUBSTITUTIONS[f"${variable['name']}"] in body["data"], (path.name, body)


def test_dashboards_are_well_formed() -> None:
    assert {p.stem for p in DASHBOARDS} == {"nirwatch-line", "nirwatch-drift"}
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    uids = set()
    for path in DASHBOARDS:
        dash = _load(path)
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in _panels(dash):
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, (path.name, panel["title"])
            assert panel["datasource"]["uid"] == uid
            assert panel["targets"] and panel["description"]
    assert len(uids) == len(DASHBOARDS)


def _variable_queries() -> list[str]:
    return [v["query"]["query"] for p in DASHBOARDS for v in _load(p)["templating"]["list"]]


def test_every_query_selects_the_job_whose_process_exports_the_metric() -> None:
    problems = {
        f"{dashboard} / {title}": misselected(expr)
        for dashboard, title, expr in _targets()
        + [("variables", q, q) for q in _variable_queries()]
    }
    assert not {k: v for k, v in problems.items() if v}


def test_dashboards_cover_the_required_views_with_existing_metrics() -> None:
    every = set().union(*(exported(make) for make in JOBS.values()))
    exprs = " ".join(expr for _, _, expr in _targets())
    used = set(re.findall(r"\bnirwatch_[a-z0-9_]+", exprs))
    assert used <= every, used - every
    required = {
        "nirwatch_predictions_total",  # predictions per instrument
        "nirwatch_out_of_model_total",
        "nirwatch_outside_range_total",
        "nirwatch_file_drop_oldest_file_age_seconds",
        "nirwatch_hotelling_t2",
        "nirwatch_q_residual",
        "nirwatch_drift_score",
        "nirwatch_lab_bias",
        "nirwatch_lab_rmse",
        "nirwatch_lab_rmse_limit",
        "nirwatch_lab_bias_limit",
        "nirwatch_end_to_end_latency_seconds_bucket",
        "nirwatch_consumer_lag_messages",
        "nirwatch_fallbacks_total",
        "nirwatch_model_info",
    }
    assert required <= used, required - used
    assert "histogram_quantile(0.99" in exprs


def test_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/nirwatch.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/nirwatch"
