"""The served PLS as the average of the recipes cross-validation cannot tell apart (issue
"calibrations that hold on the user's own data"): the average itself, its storage, the
one-standard-error tie set, and the search and the range-end refit serving it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.pls import PLSCalibration
from nirwatch.chemometrics.pls_average import AveragedPLSCalibration, one_se_tied
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import compact_recipes
from nirwatch.chemometrics.scatter import StandardNormalVariate
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import dump_steps, load_steps
from nirwatch.errors import DataError
from training.candidates import refit_pls

P = 80
WL = np.linspace(1100.0, 1890.0, P)


def mixture(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping bands with scatter (offset and gain): several recipes fit about as well."""
    rng = np.random.default_rng(seed)
    axis = np.arange(P)
    y = rng.uniform(0.0, 10.0, n)
    other = rng.uniform(0.0, 10.0, n)
    pure = np.outer(y, np.exp(-0.5 * ((axis - 30) / 5) ** 2)) + np.outer(
        other, np.exp(-0.5 * ((axis - 45) / 8) ** 2)
    )
    X = (1.0 + pure) * rng.uniform(0.9, 1.1, (n, 1)) + rng.normal(0, 0.05, (n, 1))
    return X + rng.normal(0, 0.01, X.shape), y


def members() -> list[PLSCalibration]:
    return [
        PLSCalibration(steps=[StandardNormalVariate()], n_components=3),
        PLSCalibration(steps=[SavitzkyGolay(9, 2, 1)], n_components=4),
        PLSCalibration(steps=[WavelengthRange(WL, start=1300.0), StandardNormalVariate()], n_components=2),
    ]  # fmt: skip


def test_the_average_predicts_the_mean_of_its_members_and_diagnoses_with_the_lead() -> None:
    X, y = mixture(60, seed=0)
    avg = AveragedPLSCalibration(members()).fit(X, y)
    alone = [m.fit(X, y) for m in members()]
    Xn, _ = mixture(9, seed=1)
    expected = np.mean([m.predict(Xn) for m in alone], axis=0)
    np.testing.assert_allclose(avg.predict(Xn), expected, rtol=1e-10)
    values, Z = avg.predict_and_preprocess(Xn)
    np.testing.assert_allclose(values, expected, rtol=1e-10)
    np.testing.assert_allclose(Z, alone[0].preprocess(Xn), rtol=1e-12)
    assert avg.n_components_ == 3  # the lead's: the T²/Q statistics' model


def test_the_average_is_stored_without_pickle_and_predicts_the_same_after_loading() -> None:
    X, y = mixture(60, seed=2)
    avg = AveragedPLSCalibration(members()).fit(X, y)
    (again,) = load_steps(*dump_steps([avg]))
    assert isinstance(again, AveragedPLSCalibration) and len(again.calibrations_) == 3
    np.testing.assert_array_equal(again.predict(X[:7]), avg.predict(X[:7]))
    arrays, meta = avg.to_state()
    with pytest.raises(DataError, match="non-empty list of members, got list"):
        AveragedPLSCalibration.from_state(arrays, meta | {"members": []})
    with pytest.raises(DataError, match="expected at least one calibration, got none"):
        AveragedPLSCalibration([]).fit(X, y)


def test_the_tie_set_is_the_one_standard_error_band_best_first_and_capped() -> None:
    scores = np.array([1.00, 0.98, 1.10, 1.04, np.inf, 1.01])
    se = np.array([0.05, 0.06, 0.01, 0.01, 0.0, 0.02])
    # Best is recipe 0 (e.g. simpler than 1, within the tie-break): band 1.05.
    assert one_se_tied(scores, se, best=0, max_members=10) == [0, 1, 5, 3]
    assert one_se_tied(scores, se, best=0, max_members=2) == [0, 1]
    assert one_se_tied(scores, se, best=0, max_members=1) == [0]
    with pytest.raises(DataError, match="max_members must be >= 1, got 0"):
        one_se_tied(scores, se, best=0, max_members=0)


def test_the_search_serves_the_average_of_its_tied_recipes() -> None:
    X, y = mixture(70, seed=3)
    kw = {"recipes": compact_recipes(WL), "max_components": 8, "cv": 5, "repeats": 2}
    single = PLSCalibrationCV(WL, **kw).fit(X, y)
    avg = PLSCalibrationCV(WL, max_average=4, **kw).fit(X, y)
    assert isinstance(single.best_estimator_, PLSCalibration) and len(single.averaged_) == 1
    assert avg.recipe_ == single.recipe_ and avg.n_components_ == single.n_components_
    names = [m["recipe"] for m in avg.averaged_]
    assert 2 <= len(names) <= 4 and names[0] == avg.recipe_.name, names
    r = avg.cv_results_
    lead = r["recipes"].index(names[0])
    band = r["rmsecv"][lead, avg.n_components_ - 1] + r["se"][lead, avg.n_components_ - 1]
    assert all(m["rmsecv"] <= band + 1e-12 for m in avg.averaged_)
    model = avg.best_estimator_
    assert isinstance(model, AveragedPLSCalibration)
    assert [m.n_components_ for m in model.calibrations_] == [
        m["n_components"] for m in avg.averaged_
    ]
    # Its held-out predictions are the members' mean: the lead's are the single search's.
    assert not np.allclose(avg.oof_pred_, single.oof_pred_)
    assert np.sqrt(np.mean((avg.oof_pred_ - y) ** 2)) < 1.0


def test_a_large_set_averages_members_held_out_on_all_spectra() -> None:
    X, y = mixture(90, seed=4)
    search = PLSCalibrationCV(
        WL, recipes=compact_recipes(WL), max_components=6, cv=5, repeats=1,
        max_search_samples=40, max_average=3,
    ).fit(X, y)  # fmt: skip
    assert search.cv_results_["n_searched"] == 40 and search.oof_pred_.shape == (90,)
    assert np.isfinite(search.oof_pred_).all()
    assert search.best_estimator_.predict(X).shape == (90,)
    # Inside outer folds only the fitted model is used: the held-out pass is skipped.
    quick = clone(search).set_params(held_out=False).fit(X, y)
    assert not hasattr(quick, "oof_pred_")
    np.testing.assert_array_equal(quick.predict(X), search.predict(X))


def test_the_range_end_refit_keeps_every_member_and_caps_its_components() -> None:
    X, y = mixture(60, seed=5)
    avg = AveragedPLSCalibration(members()).fit(X, y)
    few = refit_pls(avg, X[:5], y[:5])  # 5 spectra: at most 3 latent variables each
    assert isinstance(few, AveragedPLSCalibration)
    assert [m.n_components_ for m in few.calibrations_] == [3, 3, 2]
    single = refit_pls(avg.calibrations_[1], X[:40], y[:40])
    assert isinstance(single, PLSCalibration) and single.n_components_ == 4


def test_members_sharing_a_scatter_correction_share_one_pass_and_predict_the_same() -> None:
    X, y = mixture(60, seed=6)
    shared = [
        PLSCalibration(steps=[StandardNormalVariate(), SavitzkyGolay(9, 2, 1)], n_components=3),
        PLSCalibration(steps=[StandardNormalVariate(), SavitzkyGolay(15, 2, 2)], n_components=2),
        PLSCalibration(steps=[StandardNormalVariate()], n_components=4),
    ]
    avg = AveragedPLSCalibration(shared).fit(X, y)
    assert len(avg._groups) == 1  # one SNV pass serves all three
    alone = [m.fit(X, y) for m in shared]
    np.testing.assert_allclose(
        avg.predict(X[:9]), np.mean([m.predict(X[:9]) for m in alone], axis=0), rtol=1e-9
    )


def test_a_spectrum_one_member_cannot_correct_is_nan_and_the_batch_is_served() -> None:
    X, y = mixture(60, seed=7)
    avg = AveragedPLSCalibration(members()).fit(X, y)
    batch = np.vstack([X[:3], np.full((1, P), 2.0)])  # a flat spectrum: SNV divides by 0
    values, Z = avg.predict_and_preprocess(batch)
    assert np.isfinite(values[:3]).all() and np.isnan(values[3])
    assert np.isnan(Z[3]).all() and np.isfinite(Z[:3]).all()
