"""Issue 13 item 5: a candidate that rejects the process as it now is must not be promoted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.simulation.simulator import Drift, ProbeSpec, TabletLineSimulator, calibration_set
from training.labelled import Dataset
from training.promotion import decide, out_of_model_bound
from training.retrain import RetrainRequest, RetrainSettings, fit_bundle_fitter, retrain


def test_out_of_model_bound_is_the_binomial_quantile() -> None:
    # 2.5 x 2 % nominal, 1 % risk of refusing a good model: 2 of 6, 6 of 40, 11 of 100.
    assert out_of_model_bound(6) == pytest.approx(2 / 6)
    assert out_of_model_bound(40) == pytest.approx(6 / 40)
    assert out_of_model_bound(100) == pytest.approx(11 / 100)
    assert out_of_model_bound(100, tolerance=1.0) == pytest.approx(6 / 100)
    assert out_of_model_bound(0) == 0.0


def test_auto_refuses_a_candidate_out_of_model_on_the_holdout() -> None:
    champion = {"rmse": 19.6, "out_of_model_share": 1.0, "n": 6}
    rejecting = {"rmse": 1.9, "out_of_model_share": 1.0, "n": 6}
    promote, why = decide("auto", 0.05, rejecting, champion)
    assert not promote and "out-of-model share 1 of 6" in why
    assert not decide("auto", 0.05, rejecting, None)[0]  # not even as the first model
    assert not decide("auto", 0.05, {**rejecting, "out_of_model_share": 0.5}, champion)[0]
    fitting = {"rmse": 1.9, "out_of_model_share": 2 / 6, "n": 6}
    promote, why = decide("auto", 0.05, fitting, champion)
    assert promote and "out-of-model share 0.333 <= 0.333" in why


def test_retrain_after_a_new_lot_gives_a_candidate_in_model_on_it(tmp_path: Path) -> None:
    """The demo's drift retrain: 300 calibration spectra plus 24 lab-valued new-lot spectra.

    With all 300 calibration spectra the 18 new-lot training spectra were an outlying cluster
    of the candidate's PCA: T² above the 99 % limit on every new-lot spectrum, the candidate
    promoted on RMSE alone. Now the calibration set is subset so they make up a quarter.
    """
    X, y, wl = calibration_set(300, seed=0, lab_noise=True)
    calibration = Dataset(X.astype(float), y, wl)
    fitter = fit_bundle_fitter(target="api_content", unit="mg", model="pls")
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(registry.register(fitter(calibration, tmp_path / "champion")))
    sim = TabletLineSimulator(
        [ProbeSpec("probe-1", 4.0)], drift=Drift("excipient_lot", onset_s=0.0), seed=3
    )
    batch = sim.next_batch("probe-1", 24)
    recent = Dataset(batch.spectra.astype(float), batch.reference_mg, wl, batch.sample_ids)
    settings = RetrainSettings(policy="auto", reports_dir=tmp_path / "reports")
    report = retrain(
        RetrainRequest("alert", "new lot"), calibration, recent, registry, fitter, settings,
        tmp_path / "work",
    )  # fmt: skip
    check = report["out_of_model_check"]
    assert check["n"] == 6 and check["passed"], report
    assert report["data"]["n_calibration_used"] == 54  # 18 recent are a quarter of 72
    assert report["decision"] == "promoted", report["why"]
    assert "out-of-model share" in report["why"]
    fresh = sim.next_batch("probe-1", 200)
    pred = load_bundle(registry.path(report["candidate"])).predict(fresh.spectra)
    assert np.mean(pred.out_of_model) <= out_of_model_bound(200), np.mean(pred.out_of_model)
