"""PLS calibration: CV path against scikit-learn, component choice, shootout RMSEP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from nirwatch.chemometrics import MultiplicativeScatterCorrection, SavitzkyGolay
from nirwatch.chemometrics.pls import (
    PLSCalibration,
    PLSComponentsCV,
    choose_components,
    cross_validate_pls,
    select_preprocessing_cv,
)
from nirwatch.errors import DataError


@pytest.fixture(scope="module")
def shootout(shootout_csv: Path) -> dict[str, np.ndarray]:
    data = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=range(1, 654))
    kinds = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=0, dtype=str)
    cal = kinds != "Test"
    X, y = data[:, 3:], data[:, 2]
    return {"Xc": X[cal], "yc": y[cal], "Xt": X[~cal], "yt": y[~cal]}


def test_coefficients_match_sklearn_for_every_size(shootout) -> None:
    Xc, yc, Xt = shootout["Xc"], shootout["yc"], shootout["Xt"]
    steps = [MultiplicativeScatterCorrection(), SavitzkyGolay(15, 2, 1)]
    for a in (1, 4, 9):
        ours = PLSCalibration(steps, n_components=a).fit(Xc, yc)
        oracle = make_pipeline(
            MultiplicativeScatterCorrection(),
            SavitzkyGolay(15, 2, 1),
            PLSRegression(a, scale=False),
        ).fit(Xc, yc)
        assert_allclose(ours.predict(Xt), oracle.predict(Xt).ravel(), rtol=1e-10)
        # Inference is a dot product on plain arrays.
        assert_allclose(ours.predict(Xt), ours.preprocess(Xt) @ ours.coef_ + ours.intercept_)


def test_predict_from_preprocessed_spectra(shootout) -> None:
    """One preprocessing pass can serve PLS and the T²/Q statistics (the bundle's path)."""
    Xc, yc, Xt = shootout["Xc"], shootout["yc"], shootout["Xt"]
    model = PLSCalibration([MultiplicativeScatterCorrection(), SavitzkyGolay(15, 2, 1)], 5)
    model.fit(Xc, yc)
    Z = model.preprocess(Xt)
    assert_allclose(model.predict_preprocessed(Z), model.predict(Xt), rtol=1e-12)
    Z32 = model.preprocess(Xt.astype(np.float32))
    assert Z32.dtype == np.float32
    got = model.predict_preprocessed(Z32)  # the product is float64 whatever Z's type
    assert got.dtype == np.float64
    assert_allclose(got, Z32.astype(np.float64) @ model.coef_ + model.intercept_, rtol=0)
    with pytest.raises(DataError, match=r"expected preprocessed spectra of shape \(n, 650\)"):
        model.predict_preprocessed(Xt[:, :600])


def test_rmsecv_curve_matches_sklearn_cross_val_predict(shootout) -> None:
    Xc, yc = shootout["Xc"], shootout["yc"]
    rmsecv, se = cross_validate_pls(Xc, yc, [MultiplicativeScatterCorrection()], 12, cv=5)
    assert rmsecv.shape == se.shape == (12,)
    folds = KFold(5, shuffle=True, random_state=0)
    for a in (2, 7, 12):
        pipe = make_pipeline(MultiplicativeScatterCorrection(), PLSRegression(a, scale=False))
        pred = cross_val_predict(pipe, Xc, yc, cv=folds).ravel()
        assert rmsecv[a - 1] == pytest.approx(np.sqrt(np.mean((pred - yc) ** 2)), rel=1e-9)


def test_choose_components_rules() -> None:
    curve = np.array([10.0, 6.0, 4.2, 4.05, 4.0, 4.1])
    se = np.full(6, 0.1)
    assert choose_components(curve, se, "min") == 5
    assert choose_components(curve, se, "1se") == 4
    assert choose_components(curve, np.full(6, 0.3), "1se") == 3
    with pytest.raises(DataError, match="rule"):
        choose_components(curve, se, "median")  # type: ignore[arg-type]


@pytest.mark.slow
def test_shootout_rmsep_with_cv_chosen_preprocessing(shootout) -> None:
    """MSC + SG 1st derivative, window chosen by RMSECV on the 195 calibration tablets only."""
    candidates = {
        f"msc+sg{w}": [MultiplicativeScatterCorrection(), SavitzkyGolay(w, 2, 1)]
        for w in (11, 13, 15, 17, 19, 21)
    }
    name, model, scores = select_preprocessing_cv(shootout["Xc"], shootout["yc"], candidates)
    assert scores[name] == min(scores.values()) == model.rmsecv_
    assert isinstance(model.best_estimator_, PLSCalibration)
    rmsep = float(np.sqrt(np.mean((model.predict(shootout["Xt"]) - shootout["yt"]) ** 2)))
    print(f"chosen {name}, {model.n_components_} LV, RMSECV {model.rmsecv_:.2f}, RMSEP {rmsep:.2f}")
    # Literature for this set is about 4.3 mg; the reference method itself is +-1.3 mg.
    assert 3.0 < rmsep < 4.8
    assert 2 <= model.n_components_ <= 12


def test_components_cv_owns_its_results(shootout) -> None:
    """The CV curve, the held-out predictions and the choice live on the search, not the model."""
    Xc, yc = shootout["Xc"], shootout["yc"]
    steps = [MultiplicativeScatterCorrection()]
    search = PLSComponentsCV(steps, max_components=8, cv=5, rule="1se").fit(Xc, yc)
    rmsecv, se = cross_validate_pls(Xc, yc, steps, 8, cv=5)
    assert_allclose(search.cv_results_["rmsecv"], rmsecv, rtol=0)
    assert_allclose(search.cv_results_["se"], se, rtol=0)
    assert search.n_components_ == choose_components(rmsecv, se, "1se")
    assert search.rmsecv_ == rmsecv[search.n_components_ - 1]
    # The held-out predictions are those the RMSECV was computed from.
    assert np.sqrt(np.mean((search.oof_pred_ - yc) ** 2)) == pytest.approx(
        search.rmsecv_, rel=1e-12
    )
    folds = KFold(5, shuffle=True, random_state=0)
    pipe = make_pipeline(
        MultiplicativeScatterCorrection(), PLSRegression(search.n_components_, scale=False)
    )
    assert_allclose(search.oof_pred_, cross_val_predict(pipe, Xc, yc, cv=folds).ravel(), rtol=1e-9)
    model = search.best_estimator_
    assert model.n_components_ == search.n_components_ and not hasattr(model, "rmsecv_")
    assert_allclose(search.predict(Xc), model.predict(Xc), rtol=0)
    assert steps[0].get_params() == MultiplicativeScatterCorrection().get_params()
    assert not hasattr(steps[0], "reference_")  # the given steps are cloned, never fitted
    with pytest.raises(DataError, match="rule"):
        PLSComponentsCV(steps, rule="median").fit(Xc, yc)  # type: ignore[arg-type]


def test_state_round_trip_and_float32(shootout, tmp_path: Path) -> None:
    search = PLSComponentsCV(
        [MultiplicativeScatterCorrection(), SavitzkyGolay()], max_components=10, cv=5, rule="1se"
    ).fit(shootout["Xc"], shootout["yc"])
    model = search.best_estimator_
    arrays, meta = model.to_state()
    np.savez(tmp_path / "pls.npz", **arrays)
    with np.load(tmp_path / "pls.npz", allow_pickle=False) as npz:
        loaded = PLSCalibration.from_state(
            {k: npz[k] for k in npz.files}, json.loads(json.dumps(meta))
        )
    Xt = shootout["Xt"]
    assert_allclose(loaded.predict(Xt), model.predict(Xt), rtol=1e-12)
    assert loaded.n_components_ == search.n_components_ and loaded.rmsec_ == model.rmsec_
    pred32 = model.predict(Xt.astype(np.float32))
    assert np.abs(pred32 - model.predict(Xt)).max() < 0.05  # mg, far below the 1.3 mg lab error


def test_input_errors(shootout) -> None:
    Xc, yc = shootout["Xc"], shootout["yc"]
    with pytest.raises(DataError, match="constant"):
        PLSCalibration(n_components=2).fit(Xc, np.full(len(yc), 200.0))
    with pytest.raises(DataError, match=r"expected shape \(195,\)"):
        PLSCalibration(n_components=2).fit(Xc, yc[:10])
    with pytest.raises(DataError, match="at most 4"):
        PLSCalibration(n_components=6).fit(Xc[:5], yc[:5])
    with pytest.raises(DataError, match="folds"):
        PLSComponentsCV(cv=10).fit(Xc[:5], yc[:5])
    model = PLSCalibration(n_components=2).fit(Xc, yc)
    with pytest.raises(DataError, match="expected spectra of 650 points, got 600"):
        model.predict(Xc[:, :600])
