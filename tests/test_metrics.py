"""Each process exports only its own metric set; the worker says whether its bundle has a CNN."""

from __future__ import annotations

from itertools import combinations
from types import SimpleNamespace

import pytest
from metric_sets import JOBS, exported
from prometheus_client import CollectorRegistry

from inference.observe import WorkerObserver
from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.prediction import Prediction
from nirwatch.metrics import DriftMetrics, WorkerMetrics


def test_metric_sets_of_the_processes_are_disjoint() -> None:
    for (a, make_a), (b, make_b) in combinations(JOBS.items(), 2):
        assert not exported(make_a) & exported(make_b), (a, b)


def _prediction(i: int) -> Prediction:
    return Prediction(
        prediction_id=f"p{i}", message_id=f"m{i}", instrument_id="probe-1",
        sample_id=f"s{i}", timestamp=1e9 + i, published_at=1e9 + i, target="api",
        value=200.0 + i % 3, model="pls", model_version="v0001", bundle_checksum="c",
        product="tablet-a", cnn_value=None, pls_value=200.0, t2=3.0, q=0.001,
        t2_limit=15.0, q_limit=0.01, out_of_model=False,
    )  # fmt: skip


def test_drift_monitor_endpoint_exports_no_worker_metric() -> None:
    """The drift monitor used to export every worker metric at zero (``broker_up 0``)."""
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftMetrics(registry), DriftSettings(warmup=10), rmsecv=2.0)
    monitor.observe([_prediction(i) for i in range(50)])
    monitor.observe_lab([LabResult(f"s{i}", 200.0, 1e9 + i) for i in range(50)])
    names = {s.name for family in registry.collect() for s in family.samples}
    assert names, "the drift monitor exported nothing"
    assert not names & exported(WorkerMetrics)
    assert "nirwatch_broker_up" not in names and "nirwatch_model_info" not in names
    assert registry.get_sample_value(
        "nirwatch_lab_rmse_limit", {"instrument": "probe-1", "product": "tablet-a"}
    ) == pytest.approx(monitor.lab_trackers()[("probe-1", "tablet-a")].rmse_limit)


@pytest.mark.parametrize(
    ("has_cnn", "error", "label"),
    [(True, None, "loaded"), (False, "RuntimeError: CUDA", "failed"), (False, None, "none")],
)
def test_model_info_says_whether_the_bundle_has_a_cnn(
    has_cnn: bool, error: str | None, label: str
) -> None:
    registry = CollectorRegistry()
    predictor = SimpleNamespace(
        version="v0002", checksum="c", target="api", unit="mg", grid="g",
        has_cnn=has_cnn, cnn_load_error=error,
    )  # fmt: skip
    WorkerObserver(WorkerMetrics(registry)).note_model(predictor)  # type: ignore[arg-type]
    info = {"version": "v0002", "checksum": "c", "target": "api", "unit": "mg", "grid": "g"}
    assert registry.get_sample_value("nirwatch_model_info", {**info, "cnn": label}) == 1.0
