"""Model choice by validation (issue "calibrations that hold on the user's own data").

The fast PLS path against scikit-learn, recipe choice where a derivative is needed, nested CV
that is not fooled by its own selection, the served model (PLS where PLS is right, the CNN
where only a nonlinear model can fit), conformal interval coverage, the range-end rule and
the manifest/report fields that say why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression

from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.krylov import (
    FoldIndex,
    cv_splits,
    fold_kernels,
    krylov_pls_predictions,
)
from nirwatch.chemometrics.pls import PLSCalibration
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import Recipe, default_recipes
from nirwatch.errors import DataError
from nirwatch.models.bundle import load_bundle
from nirwatch.models.bundle_predictor import LoadedBundle
from training.calibration import (
    choose_blend,
    conformal_quantile,
    cross_validated_coverage,
    range_end_split,
)
from training.cnn_ensemble import stratified_folds
from training.fit import fit_bundle

P = 60
WL = np.linspace(1000.0, 1590.0, P)


def peak(centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((np.arange(P) - centre) / width) ** 2)


def linear_set(n: int, seed: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Beer-Lambert mixture of two bands plus noise: a linear model is right."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0.0, 10.0, n)
    other = rng.uniform(0.0, 10.0, n)
    X = np.outer(y, peak(20, 4)) + np.outer(other, peak(35, 6)) + 1.0
    return X + rng.normal(0, noise, X.shape), y


def test_krylov_pls_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 80)).cumsum(axis=1)
    y = X[:, 10] - 0.3 * X[:, 60] + rng.normal(0, 0.1, 50)
    splits = cv_splits(50, 5, 2, seed=1)
    K, Ks, yc, ym = fold_kernels(X @ X.T, y, FoldIndex(splits))
    pred, done = krylov_pls_predictions(K, Ks, yc, 12)
    assert done == 12
    for f, (tr, te) in enumerate(splits):
        for a in (1, 4, 12):
            ref = PLSRegression(a, scale=False).fit(X[tr], y[tr]).predict(X[te]).ravel()
            np.testing.assert_allclose(pred[f, : te.size, a - 1] + ym[f], ref, atol=1e-8)


def test_search_chooses_a_derivative_when_baselines_swamp_the_signal() -> None:
    # Ten broad random bands per spectrum (no polynomial, not the mean spectrum, more shapes
    # than 60 spectra can teach a linear model) dwarf a narrow analyte band; a second
    # derivative suppresses broad features by (narrow / broad width)^2.
    p = 120
    wl = np.linspace(1000.0, 1595.0, p)
    axis = np.arange(p)
    rng = np.random.default_rng(3)
    n = 60
    y = rng.uniform(0, 1, n)
    X = 0.05 * np.outer(y, np.exp(-0.5 * ((axis - 60) / 2) ** 2)) + rng.normal(0, 2e-4, (n, p))
    for _ in range(10):
        centres = rng.uniform(-10, 130, (n, 1))
        X += rng.normal(0, 2, (n, 1)) * np.exp(-0.5 * ((axis - centres) / 8) ** 2)
    recipes = [r for r in default_recipes(wl) if r.start is None and r.scatter == "none"]
    search = PLSCalibrationCV(wl, recipes=recipes, max_components=15).fit(X, y)
    assert search.recipe_.derivative > 0, search.summary(5)
    rm = search.cv_results_["rmsecv"]
    plain = [i for i, r in enumerate(recipes) if r.derivative == 0]
    # The derivative recipe is far better than any recipe without one.
    assert search.rmsecv_ < 0.6 * np.nanmin(rm[plain])


def test_a_recipe_that_refuses_the_spectra_is_left_out_of_the_search() -> None:
    """MSC cannot scale spectra to a flat mean spectrum: that recipe is skipped (NaN row),
    the others are still searched, as for a recipe that makes spectra non-finite."""
    X, y = linear_set(60, 4)
    X = X - X.mean(axis=0)  # mean spectrum all zeros
    recipes = [Recipe(None, None, "msc"), Recipe(None, None, "none")]
    search = PLSCalibrationCV(WL, recipes=recipes, max_components=5).fit(X, y)
    assert search.recipe_ == recipes[1]
    assert np.isnan(search.cv_results_["rmsecv"][0]).all()
    assert np.isfinite(search.cv_results_["rmsecv"][1]).all()
    assert np.sqrt(np.mean((search.predict(X) - y) ** 2)) < 0.1


def test_nested_search_is_not_fooled_by_its_own_selection() -> None:
    # y is noise: any RMSECV below its spread is the search's selection optimism.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, P)).cumsum(axis=1)
    y = rng.normal(size=40)
    folds = stratified_folds(y, 5, seed=0)
    from training.calibration import nested_pls_predictions, rmse

    def make() -> PLSCalibrationCV:
        return PLSCalibrationCV(WL, max_components=8, rule="min")

    search = make().fit(X, y)
    nested, chosen = nested_pls_predictions(X, y, folds, make)
    assert len(chosen) == 5
    assert search.rmsecv_ < rmse(nested, y)  # the selected minimum is optimistic
    assert rmse(nested, y) > 0.95 * y.std()  # the nested estimate is not


def test_blend_weight_follows_the_better_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    folds = stratified_folds(y, 5, seed=0)
    good, bad = y + rng.normal(0, 0.1, 200), y + rng.normal(0, 1.0, 200)
    assert choose_blend(y, good, bad, folds).weight >= 0.9  # CNN much better
    assert choose_blend(y, bad, good, folds).weight <= 0.1  # PLS much better
    similar = choose_blend(y, y + rng.normal(0, 0.3, 200), y + rng.normal(0, 0.3, 200), folds)
    assert 0.2 <= similar.weight <= 0.8  # independent errors of one size: averaging helps
    assert len(similar.fold_weights) == 5


def test_conformal_quantile_is_the_finite_sample_order_statistic() -> None:
    scores = np.arange(1.0, 20.0)  # 19 scores: ceil(20 * 0.95) = 19th smallest
    assert conformal_quantile(scores, np.ones(19), 0.95) == 19.0
    assert conformal_quantile(scores[:10], np.ones(10), 0.95) == np.inf  # too few for 95 %
    assert conformal_quantile(np.array([4.0, -2.0]), np.array([2.0, 1.0]), 0.5) == 2.0


def test_cross_validated_coverage_checks_the_intervals_on_held_out_folds() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    folds = np.arange(n) % 5
    scale = rng.uniform(0.5, 2.0, n)
    tracked = rng.normal(0, 1, n) * scale  # the scale tracks the error: about 95 % covered
    assert 0.935 <= cross_validated_coverage(tracked, scale, folds, 0.95) <= 0.965
    # Errors that grow on one fold only: calibrated on the others, that fold is under-covered
    # and the whole falls clearly below the nominal 95 % (binomial SD here 0.3 points).
    shifted = np.where(folds == 0, 3.0, 1.0) * tracked
    assert cross_validated_coverage(shifted, scale, folds, 0.95) < 0.92
    assert cross_validated_coverage(np.r_[tracked[:-1], np.nan], scale, folds) is None


def test_range_end_split_holds_out_both_ends() -> None:
    y = np.arange(50.0)[::-1]
    mid, ends = range_end_split(y, 0.1)
    assert sorted(y[ends]) == [0, 1, 2, 3, 4, 45, 46, 47, 48, 49]
    assert mid.sum() == 40 and not (mid & ends).any()


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    X, y = linear_set(120, seed=1)
    return fit_bundle(
        X, y, WL, target="api", unit="mg", model="both",
        out_dir=tmp_path_factory.mktemp("lin") / "b",
        cnn_min_samples=50, cnn_members=3, epochs=4, augment_copies=1, seed=0,
    )  # fmt: skip


@pytest.mark.slow
def test_pls_serves_where_a_linear_model_is_right(linear_bundle: Path) -> None:
    manifest = json.loads((linear_bundle / "manifest.json").read_text())
    assert manifest["serving"] == {"model": "pls", "cnn_weight": 0.0}
    cands = manifest["selection"]["candidates"]
    assert cands["pls"]["rmsecv"] < cands["cnn"]["rmsecv"]
    assert "blend" in cands and manifest["selection"]["reason"].startswith("lowest out-of-fold")
    assert not manifest["models"]["cnn"]  # a CNN that does not serve is not shipped


@pytest.mark.slow
def test_manifest_and_report_say_what_was_compared(linear_bundle: Path) -> None:
    manifest = json.loads((linear_bundle / "manifest.json").read_text())
    report = json.loads((linear_bundle / "report" / "report.json").read_text())
    sel = manifest["selection"]
    assert sel["served"] == "pls" and "nested" in sel["rmsecv_kind"]
    pls = sel["candidates"]["pls"]
    assert pls["recipe"]["name"] and pls["n_components"] >= 1
    assert len(pls["outer_fold_choices"]) == 3
    family = pls["candidate_set"]
    assert family["chosen"] in ("compact", "full") and len(family["outer_fold_choices"]) == 3
    assert set(family["nested_rmsecv"]) == {"compact", "full"}
    assert pls["candidates_searched"] == (
        16 if family["chosen"] == "compact" else len(default_recipes(WL))
    )
    averaged = pls["averaged"]  # the served PLS: the recipes within 1 SE of the best, averaged
    assert 1 <= len(averaged) <= 10 and averaged[0]["recipe"] == pls["recipe"]["name"]
    assert averaged[0]["n_components"] == pls["n_components"]
    served = load_bundle(linear_bundle).pls_model
    assert len(getattr(served, "calibrations_", [served])) == len(averaged)
    assert set(sel["range_ends"]["rmse_at_ends"]) == {"pls"}  # the CNN does not serve
    interval = manifest["interval"]
    assert interval["method"] == "conformal" and interval["level"] == 0.95
    assert set(interval["quantiles"]) >= {"pls", "cnn"} and interval["quantile"] > 0
    assert manifest["extrapolation"]["model"] == "pls"
    assert report["served_by"] == "pls" and report["selection"] == sel
    png = (linear_bundle / "report" / "selection.png").read_bytes()  # why the winner won
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert 0.8 <= report["interval"]["cv_coverage"] <= 1.0  # checked on held-out folds
    assert manifest["metrics"]["rmsecv"] == pytest.approx(sel["rmsecv"])


@pytest.mark.slow
def test_interval_coverage_on_new_data_from_the_same_process(linear_bundle: Path) -> None:
    X, y = linear_set(3000, seed=9)
    p = load_bundle(linear_bundle).predict(X)
    assert p.interval_low is not None and p.interval_high is not None
    covered = np.mean((y >= p.interval_low) & (y <= p.interval_high))
    assert 0.92 <= covered <= 0.99, covered
    assert p.too_wide is None  # no max_interval_width set


@pytest.mark.slow
def test_cnn_serves_where_only_a_nonlinear_model_fits(tmp_path: Path) -> None:
    # y = sin(4 pi h) of an analyte band's height h on a fixed matrix spectrum: two periods
    # that no (normalised) linear function of the absorbances can follow; a few rectified
    # units of the network can. (The matrix dominates the spectrum, as in real NIR spectra; a
    # spectrum that is all analyte band would have EMSC's multiplier absorb the band.)
    p = 200
    wl = np.linspace(1000.0, 1398.0, p)
    axis = np.arange(p)
    rng = np.random.default_rng(2)
    n = 150
    h = rng.uniform(0, 1, n)
    band = np.exp(-0.5 * ((axis - 100) / 6) ** 2)
    matrix = np.exp(-0.5 * ((axis - 60) / 40) ** 2) + np.exp(-0.5 * ((axis - 160) / 30) ** 2)
    X = np.outer(h, 0.3 * band) + 2 * matrix + 0.5 + rng.normal(0, 0.002, (n, p))
    y = np.sin(4 * np.pi * h)
    path = fit_bundle(
        X, y, wl, target="v", unit="", model="both", out_dir=tmp_path / "b",
        cnn_min_samples=50, cnn_members=3, augment_copies=0, seed=0,
        pls_max_components=10, nested_cv=False, cv_repeats=1,
    )  # fmt: skip
    manifest = json.loads((path / "manifest.json").read_text())
    cands = manifest["selection"]["candidates"]
    assert cands["cnn"]["rmsecv"] < 0.8 * cands["pls"]["rmsecv"], cands
    assert manifest["serving"]["model"] in ("cnn", "blend")
    assert manifest["serving"]["cnn_weight"] >= 0.5


class _Net:
    """A stand-in CNN: predicts a fixed offset from PLS's truth, for the serving rules."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.values[: X.shape[0]]


def _loaded(
    ends_model: str, margin: float, max_width: float | None
) -> tuple[LoadedBundle, np.ndarray]:
    X, y = linear_set(60, seed=4)
    pls = PLSCalibration(steps=Recipe(None, None, "none").steps(WL), n_components=2).fit(X, y)
    stats = CalibrationStatistics(n_components=2).fit(pls.preprocess(X))
    manifest = {
        "version": "v1",
        "wavelengths": WL.tolist(),
        "grid": "custom",
        "target": {"name": "api", "unit": "mg", "range": [2.0, 8.0]},
        "fallback_limit": 100.0,
        "training": {"n_calibration": 60},
        "serving": {"model": "cnn", "cnn_weight": 1.0},
        "interval": {"quantiles": {"cnn": 1.0, "pls": 2.0}, "level": 0.95},
        "extrapolation": {"model": ends_model, "margin": margin},
        "max_interval_width": max_width,
    }
    Xn = X[:5]
    cnn = _Net(pls.predict(Xn) + 0.5)
    bundle = LoadedBundle(
        path=Path("."), manifest=manifest, checksum="x", pls=pls, statistics=stats,
        statistics_steps=[], statistics_on_pls=True, cnn=cnn, cnn_steps=[],
    )  # fmt: skip
    return bundle, Xn


def test_range_end_model_serves_near_and_beyond_the_calibrated_range() -> None:
    bundle, X = _loaded("pls", margin=1.0, max_width=None)
    p = bundle.predict(X)
    near = (p.cnn_value < 3.0) | (p.cnn_value > 7.0)  # within 1.0 of [2, 8] or beyond
    assert near.any() and (~near).any()
    np.testing.assert_allclose(p.value[near], p.pls_value[near])
    np.testing.assert_allclose(p.value[~near], p.cnn_value[~near])
    assert list(p.model[near]) == ["pls"] * int(near.sum())
    assert all(p.fallback_reason[i] == "range_end" for i in np.flatnonzero(near))
    assert p.outside_range is not None
    beyond = (p.cnn_value < 2.0) | (p.cnn_value > 8.0) | (p.value < 2.0) | (p.value > 8.0)
    np.testing.assert_array_equal(p.outside_range, beyond)
    # PLS's interval uses PLS's quantile, the CNN's its own.
    assert p.interval_low is not None and p.interval_high is not None
    width = p.interval_high - p.interval_low
    assert np.all(width[near] > width[~near].max() * 1.5)


def test_too_wide_interval_is_not_releasable() -> None:
    from inference.records import encode_predictions
    from nirwatch.messages.spectrum import SpectrumHeader

    bundle, X = _loaded("cnn", margin=0.0, max_width=2.5)
    p = bundle.predict(X)
    assert p.too_wide is not None
    # CNN values (quantile 1) are narrow enough, the stand-in never falls back to PLS.
    assert not p.too_wide.any()
    narrow, _ = _loaded("cnn", margin=0.0, max_width=1.0)
    q = narrow.predict(X)
    assert q.too_wide is not None and q.too_wide.all()
    headers = [
        SpectrumHeader(message_id=f"m{i}", instrument_id="p1", sample_id=f"s{i}",
                       timestamp=1.0, grid="custom", n_points=P)
        for i in range(X.shape[0])
    ]  # fmt: skip
    values, releasable = encode_predictions(headers, q, narrow, published_at=2.0)
    assert not any(releasable)
    record = json.loads(values[0])
    assert record["interval_low"] == pytest.approx(q.interval_low[0])
    assert record["interval_high"] == pytest.approx(q.interval_high[0])


def test_a_spectrum_the_preprocessing_cannot_correct_does_not_fail_the_batch() -> None:
    # An all-zero spectrum (a dark or failed reading) has nothing of the MSC reference in it:
    # its multiplier is 0, the correction divides by it.
    X, y = linear_set(60, seed=6)
    steps = Recipe(None, None, "msc", 1, 5).steps(WL)
    pls = PLSCalibration(steps=steps, n_components=2).fit(X, y)
    stats = CalibrationStatistics(n_components=2).fit(pls.preprocess(X))
    manifest = {
        "version": "v1", "wavelengths": WL.tolist(), "grid": "custom",
        "target": {"name": "api", "unit": "mg"}, "fallback_limit": 1.0,
    }  # fmt: skip
    bundle = LoadedBundle(
        path=Path("."), manifest=manifest, checksum="x", pls=pls, statistics=stats,
        statistics_steps=[], statistics_on_pls=True, cnn=None, cnn_steps=[],
    )  # fmt: skip
    batch = X[:4].copy()
    batch[2] = 0.0
    p = bundle.predict(batch)
    assert np.isnan(p.value[2]) and bool(p.out_of_model[2])
    keep = [0, 1, 3]
    assert np.isfinite(p.value[keep]).all() and np.isfinite(p.t2[keep]).all()
    np.testing.assert_allclose(p.value[keep], bundle.predict(X[keep]).value)


def test_large_sets_are_searched_on_a_spread_subset_and_refitted_on_all() -> None:
    X, y = linear_set(300, seed=8)
    search = PLSCalibrationCV(
        WL, recipes=default_recipes(WL)[:6], max_components=6, max_search_samples=120
    ).fit(X, y)
    assert search.cv_results_["n_searched"] == 120
    assert search.oof_pred_.shape == (300,) and np.isfinite(search.oof_pred_).all()
    assert np.sqrt(np.mean((search.oof_pred_ - y) ** 2)) < 0.2  # a linear set: PLS fits it
    assert search.best_estimator_.n_features_in_ == P


def test_a_decreasing_axis_is_refused_by_name_not_searched_without_its_windows() -> None:
    """The range candidates select by wavelength; on a decreasing axis they would all fail
    and the search would silently lose them (load_spectra turns such files round)."""
    from training.fit import check_training_data

    X, y = linear_set(30, seed=4)
    with pytest.raises(DataError, match="expected increasing wavelengths, got 1590 ... 1000"):
        PLSCalibrationCV(WL[::-1], max_components=3).fit(X, y)
    with pytest.raises(DataError, match="expected increasing wavelengths"):
        check_training_data(X, y, WL[::-1])
