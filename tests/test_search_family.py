"""The PLS candidate sets: the compact one (16 common recipes, autoscaled raw spectra among
them), the full one (wavelength windows, more derivative widths), and the honest choice between
them (issue "calibrations that hold on the user's own data")."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import AUTOSCALED_RAW, Recipe, compact_recipes, default_recipes
from nirwatch.chemometrics.scaling import UnitVarianceScaling
from nirwatch.chemometrics.state import dump_steps, load_steps
from nirwatch.errors import DataError
from training.calibration import choose_search, rmse
from training.candidates import fit_pls_candidate
from training.cnn_ensemble import stratified_folds
from training.settings import TrainingSettings

P = 120
WL = np.linspace(1000.0, 1595.0, P)
AXIS = np.arange(P)
QUICK = {"registry": {}, "cv_folds": 5, "cv_repeats": 1, "pls_max_components": 25}


def band(centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((AXIS - centre) / width) ** 2)


def test_unit_variance_scaling_is_scikit_learns_standard_scaler_without_centring() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)) * np.arange(1, 9)
    X[:, 3] = 2.5  # a constant column is left unscaled, as scikit-learn does
    step = UnitVarianceScaling().fit(X)
    ref = StandardScaler(with_mean=False).fit(X)
    np.testing.assert_allclose(step.transform(X), ref.transform(X), rtol=1e-12)
    (again,) = load_steps(*dump_steps([step]))
    np.testing.assert_array_equal(again.transform(X[:4]), step.transform(X[:4]))
    with pytest.raises(DataError, match="expected spectra of 8 points, got 7"):
        step.transform(X[:, :7])


def test_the_autoscaled_recipe_is_the_ten_line_scikit_learn_pls() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 40)).cumsum(axis=1) * rng.uniform(0.1, 10, 40)
    y = X[:, 5] - 0.2 * X[:, 30] + rng.normal(0, 0.1, 50)
    search = PLSCalibrationCV(np.arange(40.0), recipes=[AUTOSCALED_RAW], max_components=6)
    search.fit(X, y)
    ref = PLSRegression(n_components=search.n_components_).fit(X, y)  # scale=True: autoscaled
    np.testing.assert_allclose(search.predict(X), ref.predict(X).ravel(), rtol=1e-8)


def test_the_compact_set_is_part_of_the_full_one() -> None:
    compact, full = compact_recipes(WL), default_recipes(WL)
    assert len(compact) == 16 and set(compact) <= set(full)
    assert all(r.start is None and r.stop is None for r in compact)
    assert AUTOSCALED_RAW in compact and AUTOSCALED_RAW.name == "full | none | autoscale"
    with pytest.raises(DataError, match="scaling must be one of"):
        Recipe(None, None, "none", scaling="pareto")


def test_the_compact_search_serves_unless_the_full_one_is_clearly_better() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=200)
    folds = stratified_folds(y, 5, seed=0)
    compact = y + rng.normal(0, 0.5, 200)
    # The same residuals on other spectra: equal MSE, so the simpler (compact) set serves.
    similar = y + rng.permutation(compact - y)
    clearly = y + rng.normal(0, 0.2, 200)
    tie = choose_search(y, compact, similar, folds)
    assert tie.name == "compact" and set(tie.fold_choices) == {"compact"}
    np.testing.assert_array_equal(tie.nested_pred, compact)
    win = choose_search(y, compact, clearly, folds)
    assert win.name == "full" and win.fold_choices == ["full"] * 5
    assert win.rmsecv == {"compact": rmse(compact, y), "full": rmse(clearly, y)}


def test_each_outer_fold_is_predicted_by_the_search_the_other_folds_chose() -> None:
    y = np.arange(10.0)
    folds = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    compact = y + np.where(folds == 0, 0.1, 3.0)  # bad on fold 1: fold 0 then prefers full
    full = y + np.where(folds == 0, 2.0, 0.1)  # bad on fold 0: fold 1 then prefers compact
    c = choose_search(y, compact, full, folds)
    assert c.fold_choices == ["full", "compact"]
    np.testing.assert_array_equal(c.nested_pred, np.r_[full[:5], compact[5:]])


def window_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The analyte band in the first half; big narrow bands wander over the second half: no
    full-range recipe removes them, a window does."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, n)
    X = np.outer(y, band(30, 3)) + 1.0 + rng.normal(0, 0.01, (n, P))
    for _ in range(8):
        X += rng.uniform(0, 20, (n, 1)) * band(rng.uniform(62, 120, (n, 1)), 3)
    return X, y


def linear_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping broad bands and noise over the whole axis: no window is needed."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 10, n)
    X = np.outer(y, band(40, 8)) + np.outer(rng.uniform(0, 10, n), band(70, 12)) + 1.0
    return X + rng.normal(0, 0.02, X.shape), y


@pytest.mark.parametrize(("data", "chosen"), [(window_set, "full"), (linear_set, "compact")])
def test_the_nested_errors_choose_the_candidate_set(data, chosen: str) -> None:  # type: ignore[no-untyped-def]
    X, y = data(80, 0)
    folds = stratified_folds(y, 5, seed=0)
    s = TrainingSettings.model_validate(QUICK)
    pls = fit_pls_candidate(X, y, WL, s, folds, lambda msg: None)
    family = pls.family
    assert family["chosen"] == chosen, family
    assert len(family["outer_fold_choices"]) == 5
    searched = len(pls.search.cv_results_["recipes"])
    assert searched == (len(default_recipes(WL)) if chosen == "full" else 16)
    if chosen == "full":
        assert pls.search.recipe_.stop is not None and pls.search.recipe_.stop < WL[62]
        assert family["nested_rmsecv"]["full"] < family["nested_rmsecv"]["compact"]
    # The served PLS's honest error is the per-fold choice's, not the better of the two.
    assert rmse(pls.nested_oof, y) >= min(family["nested_rmsecv"].values()) - 1e-12
    fixed = fit_pls_candidate(
        X, y, WL, TrainingSettings.model_validate(QUICK | {"pls_candidates": "compact"}),
        folds, lambda msg: None,
    )  # fmt: skip
    assert fixed.family["chosen"] == "compact" and len(fixed.search.cv_results_["recipes"]) == 16
