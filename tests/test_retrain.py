"""Retraining: candidate, promotion policy, report; the authenticated webhook and schedule."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSComponentsCV
from nirwatch.chemometrics.scatter import MultiplicativeScatterCorrection
from nirwatch.errors import ConfigError, DataError
from nirwatch.io.datasets import load_spectra
from nirwatch.models.bundle import BundleContents, data_hash, write_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.simulation.simulator import Drift, ProbeSpec, TabletLineSimulator, calibration_set
from training.labelled import Dataset, LabelledBuffer
from training.promotion import decide
from training.retrain import RetrainRequest, RetrainSettings, retrain
from training.service import RetrainService

TOKEN = "s3cret-token-0123456789abcdef"


def pls_fitter(data: Dataset, out_dir: Path) -> Path:
    """A small, fast PLS-only bundle (MSC + PLS, T²/Q statistics on MSC spectra)."""
    search = PLSComponentsCV([MultiplicativeScatterCorrection()], max_components=8, cv=5)
    search.fit(data.X, data.y)
    msc = MultiplicativeScatterCorrection().fit(data.X)
    stats = CalibrationStatistics(n_components=5).fit(msc.transform(data.X))
    contents = BundleContents(
        target="api_content",
        unit="mg",
        wavelengths=data.wavelengths,
        data_hash=data_hash(data.X, data.y),
        pls=search.best_estimator_,
        statistics=stats,
        statistics_steps=[msc],
        fallback_limit=3 * search.rmsecv_,
        metrics={"rmsecv": search.rmsecv_},
    )
    return write_bundle(contents, out_dir)


@pytest.fixture(scope="module")
def calibration() -> Dataset:
    X, y, wl = calibration_set(120, seed=0)
    return Dataset(X.astype(float), y, wl)


def simulated(n: int, drift: Drift | None, seed: int = 1) -> Dataset:
    sim = TabletLineSimulator([ProbeSpec("probe-1")], drift=drift, seed=seed)
    batch = sim.next_batch("probe-1", n)
    return Dataset(
        batch.spectra.astype(float), batch.reference_mg, sim.wavelengths, batch.sample_ids
    )


@pytest.fixture(scope="module")
def champion_bundle(tmp_path_factory: pytest.TempPathFactory, calibration: Dataset) -> Path:
    return pls_fitter(calibration, tmp_path_factory.mktemp("champion") / "bundle")


@pytest.fixture
def registry(tmp_path: Path, champion_bundle: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(reg.register(champion_bundle))
    return reg


def _settings(tmp_path: Path, **kw: Any) -> RetrainSettings:
    return RetrainSettings(reports_dir=tmp_path / "reports", **kw)


NEW_LOT = Drift("excipient_lot", onset_index=0, magnitude=1.5)


def test_auto_promotes_a_candidate_that_beats_the_champion(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> None:
    before = registry.champion_version()
    recent = simulated(160, NEW_LOT)
    settings = _settings(tmp_path, policy="auto", margin=0.05)
    req = RetrainRequest("webhook", "alerts: NirwatchDriftDetected")
    report = retrain(req, calibration, recent, registry, pls_fitter, settings, tmp_path / "work")
    assert report["decision"] == "promoted", report["why"]
    assert registry.champion_version() == report["candidate"] != before
    cand, champ = report["metrics"]["candidate"], report["metrics"]["champion"]
    assert cand["rmse"] <= 0.95 * champ["rmse"]
    assert report["data"]["holdout_source"] == "recent"
    assert report["data"]["n_train"] == 120 + 160 - report["data"]["n_holdout"]
    on_disk = json.loads(Path(report["path"]).read_text())
    assert on_disk["decision"] == "promoted" and on_disk["champion_before"] == before
    assert on_disk["trigger"] == "webhook" and "RMSE" in on_disk["why"]


def test_auto_keeps_a_candidate_that_is_not_better_by_the_margin(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> None:
    before = registry.champion_version()
    recent = simulated(60, None)  # no drift: the champion is as good as a retrain
    settings = _settings(tmp_path, policy="auto", margin=0.5)
    report = retrain(
        RetrainRequest("schedule", "periodic"), calibration, recent, registry, pls_fitter,
        settings, tmp_path / "work",
    )  # fmt: skip
    assert report["decision"] == "candidate", report["why"]
    assert registry.champion_version() == before
    status = {i.version: i.status for i in registry.list()}
    assert status[report["candidate"]] == "candidate"
    assert "does not beat" in report["why"]


def test_approval_never_promotes(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> None:
    before = registry.champion_version()
    report = retrain(
        RetrainRequest("webhook", "drift"), calibration, simulated(160, NEW_LOT), registry,
        pls_fitter, _settings(tmp_path, policy="approval"), tmp_path / "work",
    )  # fmt: skip
    assert report["decision"] == "candidate"
    assert "nirwatch models promote" in report["why"]
    assert registry.champion_version() == before
    registry.promote(report["candidate"])  # the human decision
    assert registry.champion_version() == report["candidate"]


def test_first_model_is_promoted_under_auto(tmp_path: Path, calibration: Dataset) -> None:
    reg = ModelRegistry(tmp_path / "empty")
    report = retrain(
        RetrainRequest("manual", "first"), calibration, simulated(0, None), reg, pls_fitter,
        _settings(tmp_path, policy="auto"), tmp_path / "work",
    )  # fmt: skip
    assert report["decision"] == "promoted"
    assert report["data"]["holdout_source"] == "calibration"


def test_failed_fit_is_reported_and_changes_nothing(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> None:
    def broken(data: Dataset, out: Path) -> Path:
        raise DataError("constant target")

    before = registry.list()
    report = retrain(
        RetrainRequest("manual", "x"), calibration, simulated(20, None), registry, broken,
        _settings(tmp_path, policy="auto"), tmp_path / "work",
    )  # fmt: skip
    assert report["decision"] == "failed" and "constant target" in report["why"]
    assert registry.list() == before
    assert Path(report["path"]).exists()


def test_decide_policy() -> None:
    champ = {"rmse": 4.0}
    in_model = {"n": 20, "out_of_model_share": 0.0}
    assert decide("auto", 0.1, {"rmse": 3.5, **in_model}, champ)[0]
    assert not decide("auto", 0.1, {"rmse": 3.7, **in_model}, champ)[0]
    assert not decide("auto", 0.1, {"rmse": float("nan"), **in_model}, champ)[0]
    assert not decide("approval", 0.1, {"rmse": 1.0, **in_model}, champ)[0]
    assert decide("auto", 0.1, {"rmse": 9.0, **in_model}, None)[0]
    assert not decide("auto", 0.1, {"rmse": 3.5}, champ)[0]  # out-of-model share unknown


def test_labelled_buffer_joins_in_either_order_and_is_bounded() -> None:
    wl = np.arange(3.0)
    buf = LabelledBuffer(wl, max_size=2)
    buf.add_spectrum("a", np.ones(3))
    buf.add_lab("b", 2.0)
    buf.add_lab("a", 1.0)
    buf.add_spectrum("b", 2 * np.ones(3))
    buf.add_lab("zz", 5.0)  # never joined
    data = buf.dataset()
    assert list(data.sample_ids) == ["a", "b"] and data.y.tolist() == [1.0, 2.0]
    buf.add_spectrum("c", np.zeros(3))
    buf.add_lab("c", 0.0)
    assert list(buf.dataset().sample_ids) == ["b", "c"]


def test_calibration_files_csv_and_npz(tmp_path: Path) -> None:
    # retrain-service reads its calibration through nirwatch.io.datasets.load_spectra
    wl = np.array([600.0, 602.0, 604.0])
    X = np.arange(6.0).reshape(2, 3)
    lines = ["id,600,602,604,api", "s1,0,1,2,10.5", "s2,3,4,5,11.5"]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    d = Dataset.from_spectra(load_spectra(tmp_path / "d.csv", target="api"))
    np.testing.assert_array_equal(d.X, X)
    assert d.y.tolist() == [10.5, 11.5] and d.wavelengths.tolist() == wl.tolist()
    np.savez(tmp_path / "d.npz", X=X, api=d.y, wavelengths=wl)
    npz = Dataset.from_spectra(load_spectra(tmp_path / "d.npz", target="api"))
    assert npz.y.tolist() == [10.5, 11.5]
    # the settings' default target "y" still finds an npz's y when target_name renames it
    np.savez(tmp_path / "named.npz", X=X, y=d.y, wavelengths=wl, target_name="api")
    named = load_spectra(tmp_path / "named.npz", target="y")
    assert named.target == "api" and Dataset.from_spectra(named).y.tolist() == [10.5, 11.5]
    with pytest.raises(DataError, match="no target column 'assay'"):
        load_spectra(tmp_path / "d.csv", target="assay")
    with pytest.raises(DataError, match="no target"):
        Dataset.from_spectra(load_spectra(tmp_path / "d.csv"))


def test_token_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        RetrainSettings(webhook_token=SecretStr("short")).token()
    with pytest.raises(ConfigError, match="TOKEN"):
        RetrainSettings().token()
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert RetrainSettings(webhook_token_file=tmp_path / "t").token() == TOKEN


# ---- the service: webhook, schedule


@pytest.fixture
def service(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> Iterator[RetrainService]:
    settings = _settings(tmp_path, policy="auto", webhook_port=0, cooldown_seconds=3600)
    svc = RetrainService(
        settings, registry, calibration, pls_fitter, TOKEN, tmp_path / "work"
    ).start()
    recent = simulated(160, NEW_LOT)
    for sid, x, y in zip(recent.sample_ids, recent.X, recent.y, strict=True):
        svc.buffer.add_spectrum(sid, x)
        svc.buffer.add_lab(sid, float(y))
    yield svc
    svc.stop()


ALERT: dict[str, Any] = {
    "version": "4",
    "status": "firing",
    "receiver": "retrain-webhook",
    "groupLabels": {"alertname": "NirwatchDriftDetected"},
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "NirwatchDriftDetected", "instrument": "probe-1"},
            "startsAt": "2026-11-25T18:00:00Z",
        }
    ],
}


def _post(
    svc: RetrainService, body: Any, auth: str | None, path: str = "/alerts"
) -> tuple[int, dict[str, Any]]:
    host, port = svc.address
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", "Bearer ", TOKEN]
)
def test_webhook_rejects_missing_or_wrong_token(
    service: RetrainService, auth: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.service"):
        status, body = _post(service, ALERT, auth)
    assert status == 401 and body == {"error": "unauthorised"}
    assert "rejected unauthorised" in caplog.text and TOKEN not in caplog.text
    assert service.wait_idle(5) and not service.reports  # nothing triggered
    assert not (service.settings.reports_dir).exists()


def test_webhook_alert_triggers_retrain_and_auto_promotion(service: RetrainService) -> None:
    before = service.registry.champion_version()
    status, body = _post(service, ALERT, f"Bearer {TOKEN}")
    assert status == 202 and body["triggered"]
    assert service.wait_idle(300)
    (report,) = service.reports
    assert report["trigger"] == "webhook" and "NirwatchDriftDetected" in report["reason"]
    assert report["data"]["n_recent"] == 160
    assert report["decision"] == "promoted", report["why"]
    assert service.registry.champion_version() == report["candidate"] != before
    # a second alert within the cool-down is acknowledged but trains nothing
    status, body = _post(service, ALERT, f"Bearer {TOKEN}")
    assert status == 200 and not body["triggered"]
    host, port = service.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'nirwatch_retrains_total{decision="promoted"} 1.0' in text
    assert "nirwatch_retrain_labelled_spectra 160.0" in text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        ({"alerts": "x"}, 400),
        ({**ALERT, "alerts": [{**ALERT["alerts"][0], "status": "resolved"}]}, 200),
    ],
)
def test_webhook_bad_or_resolved_payloads_trigger_nothing(
    service: RetrainService, body: Any, status: int
) -> None:
    got, reply = _post(service, body, f"Bearer {TOKEN}")
    assert got == status and not reply.get("triggered")
    assert service.wait_idle(5) and not service.reports


def test_webhook_unknown_path_and_health(service: RetrainService) -> None:
    assert _post(service, ALERT, f"Bearer {TOKEN}", path="/other")[0] == 404
    host, port = service.address
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200


def test_schedule_triggers_retrains(
    tmp_path: Path, calibration: Dataset, registry: ModelRegistry
) -> None:
    settings = _settings(tmp_path, policy="approval", webhook_port=0, schedule_seconds=0.2)
    svc = RetrainService(settings, registry, calibration, pls_fitter, TOKEN, tmp_path / "w")
    done = threading.Event()
    original = svc.fitter

    def fitter(data: Dataset, out: Path) -> Path:
        path = original(data, out)
        done.set()
        return path

    svc.fitter = fitter
    svc.start()
    try:
        assert done.wait(120)
    finally:
        svc.stop()  # lets the retrain in progress finish and write its report
    assert svc.reports and all(r["trigger"] == "schedule" for r in svc.reports)
    assert all(r["decision"] == "candidate" for r in svc.reports)
