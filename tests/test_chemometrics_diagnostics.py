"""CalibrationStatistics: T² / Q against sklearn PCA, limits against Monte Carlo and data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats
from sklearn.decomposition import PCA

from nirwatch.chemometrics import MultiplicativeScatterCorrection, SavitzkyGolay
from nirwatch.chemometrics.diagnostics import (
    CalibrationStatistics,
    hotelling_t2_limit,
    q_residual_limit,
)
from nirwatch.errors import DataError


@pytest.fixture(scope="module")
def preprocessed(shootout_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """MSC + SG first derivative of the 195 calibration and 460 test shootout spectra."""
    X = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=range(4, 654))
    kinds = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=0, dtype=str)
    cal = kinds != "Test"
    msc = MultiplicativeScatterCorrection().fit(X[cal])
    sg = SavitzkyGolay(21, 2, 1).fit(X)
    return sg.transform(msc.transform(X[cal])), sg.transform(msc.transform(X[~cal]))


def test_t2_and_q_match_sklearn_pca(preprocessed) -> None:
    Zc, Zt = preprocessed
    stats_ = CalibrationStatistics(n_components=4).fit(Zc)
    pca = PCA(n_components=4).fit(Zc)
    scores = pca.transform(Zt)
    t2, q = stats_.t2_q(Zt)
    assert_allclose(t2, (scores**2 / pca.explained_variance_).sum(axis=1), rtol=1e-8)
    residual = Zt - pca.inverse_transform(scores)
    assert_allclose(q, (residual**2).sum(axis=1), rtol=1e-8)
    t2_32, q_32 = stats_.t2_q(Zt.astype(np.float32))
    assert_allclose(t2_32, t2, rtol=1e-3)
    assert_allclose(q_32, q, rtol=1e-2)


def test_t2_limit_formula() -> None:
    # A=2, n=20: 2*19*21/(20*18) * F_0.99(2, 18)
    assert hotelling_t2_limit(2, 20, 0.99) == pytest.approx(
        2 * 19 * 21 / (20 * 18) * stats.f.ppf(0.99, 2, 18)
    )
    with pytest.raises(DataError):
        hotelling_t2_limit(5, 5, 0.99)


@pytest.mark.parametrize("a", [1, 3, 6, 8, 15])
def test_q_limit_agrees_with_monte_carlo(preprocessed, a: int) -> None:
    """Q of Gaussian data is sum_j lambda_j chi2_1; both approximations track its quantile."""
    lam = CalibrationStatistics(n_components=a).fit(preprocessed[0]).eigenvalues_[a:]
    rng = np.random.default_rng(a)
    q = (rng.standard_normal((10000, lam.size)) ** 2) @ lam
    for conf in (0.95, 0.99):
        limit, method = q_residual_limit(lam, conf)
        assert method in ("jackson-mudholkar", "box")
        assert limit == pytest.approx(np.quantile(q, conf), rel=0.12)


def test_jackson_mudholkar_used_when_valid() -> None:
    lam = np.linspace(1.0, 0.1, 50)  # smooth decay: h0 > 0
    limit, method = q_residual_limit(lam, 0.99)
    assert method == "jackson-mudholkar"
    q = (np.random.default_rng(0).standard_normal((40000, 50)) ** 2) @ lam
    assert limit == pytest.approx(np.quantile(q, 0.99), rel=0.03)


def test_calibration_mostly_inside_and_far_spectra_outside(preprocessed) -> None:
    Zc, Zt = preprocessed
    cs = CalibrationStatistics(n_components=3).fit(Zc)
    t2, q = cs.t2_q(Zc)
    frac_t2, frac_q = np.mean(t2 > cs.t2_limit_99_), np.mean(q > cs.q_limit_99_)
    print(f"calibration above 99 % limits: T² {frac_t2:.3f}, Q {frac_q:.3f}")
    assert frac_t2 < 0.06 and frac_q < 0.06
    assert cs.t2_limit_95_ < cs.t2_limit_99_ and cs.q_limit_95_ < cs.q_limit_99_
    # New structure off the model plane: Q flags it.
    p = Zc.shape[1]
    band = np.exp(-0.5 * ((np.arange(p) - 300) / 10) ** 2)
    off_plane = Zc[:5] + 20 * np.sqrt(cs.q_limit_99_ / (band**2).sum()) * band
    assert (cs.t2_q(off_plane)[1] > cs.q_limit_99_).all()
    # Far along the first principal axis: T² flags it, Q does not move.
    along = cs.mean_ + 10 * np.sqrt(cs.eigenvalues_[0]) * cs.loadings_[:, 0]
    t2_far, q_far = cs.t2_q(along[None, :])
    assert t2_far[0] > cs.t2_limit_99_
    assert q_far[0] == pytest.approx(0.0, abs=1e-12)


def test_components_by_explained_variance_and_state(preprocessed) -> None:
    Zc, Zt = preprocessed
    cs = CalibrationStatistics(explained_variance=0.9).fit(Zc)
    cum = np.cumsum(cs.eigenvalues_) / cs.eigenvalues_.sum()
    assert cum[cs.n_components_ - 1] >= 0.9 > cum[cs.n_components_ - 2]
    arrays, meta = cs.to_state()
    loaded = CalibrationStatistics.from_state(arrays, json.loads(json.dumps(meta)))
    for got, want in zip(loaded.t2_q(Zt), cs.t2_q(Zt), strict=True):
        assert_allclose(got, want)
    assert loaded.q_limit_99_ == cs.q_limit_99_ and loaded.t2_limit_99_ == cs.t2_limit_99_
    with pytest.raises(DataError, match="allow 1..193"):
        CalibrationStatistics(n_components=500).fit(Zc)
    with pytest.raises(DataError, match="expected spectra of 650 points"):
        cs.t2_q(Zt[:, :10])


def _gaussian_spectra(
    rng: np.random.Generator, p: int, offset: float = 0.0
) -> Callable[[int], np.ndarray]:
    """``draw(n)``: n Gaussian "spectra" of p points, 3 strong components then a decaying tail."""
    basis = np.linalg.qr(rng.normal(size=(p, p)))[0]
    sd = np.concatenate([[5.0, 3.0, 2.0], np.linspace(0.4, 0.05, p - 3)])

    def draw(n: int) -> np.ndarray:
        return offset + (rng.normal(size=(n, p)) * sd) @ basis.T

    return draw


def test_false_alarm_rate_is_one_percent_on_gaussian_data() -> None:
    """Data that meets the assumptions: new in-model spectra exceed a 99 % limit ~1 % of the time."""
    a, draw = 3, _gaussian_spectra(np.random.default_rng(11), 60, offset=1.0)
    cs = CalibrationStatistics(n_components=a).fit(draw(1000))
    t2, q = cs.t2_q(draw(20000))
    rate_t2, rate_q = np.mean(t2 > cs.t2_limit_99_), np.mean(q > cs.q_limit_99_)
    assert 0.006 < rate_t2 < 0.015 and 0.006 < rate_q < 0.015
    assert 0.04 < np.mean(t2 > cs.t2_limit_95_) < 0.065
    assert 0.04 < np.mean(q > cs.q_limit_95_) < 0.065


def test_cv_q_limit_holds_its_rate_when_spectra_are_fewer_than_wavelengths() -> None:
    """n < p, as with NIR spectra: the CV limit keeps its nominal rate on new spectra."""
    a, draw = 3, _gaussian_spectra(np.random.default_rng(5), 300)
    cal, new = draw(100), draw(20000)
    by_eig = CalibrationStatistics(n_components=a, q_limit="eigenvalues").fit(cal)
    by_cv = CalibrationStatistics(n_components=a).fit(cal)
    assert by_eig.q_limit_method_ != "cv-box" and by_cv.q_limit_method_ == "cv-box"
    q = by_cv.t2_q(new)[1]
    rate_cv, rate_eig = np.mean(q > by_cv.q_limit_99_), np.mean(q > by_eig.q_limit_99_)
    assert 0.005 < rate_cv < 0.025 and 0.03 < np.mean(q > by_cv.q_limit_95_) < 0.08
    assert abs(rate_cv - 0.01) < abs(rate_eig - 0.01)  # here the eigenvalue limit is too loose


def test_cv_q_limit_state_round_trip_and_old_states(preprocessed) -> None:
    Zc, Zt = preprocessed
    cs = CalibrationStatistics(n_components=5).fit(Zc)
    assert cs.q_limit_method_ == "cv-box" and cs.q_limit_99_ > cs.q_limit_95_ > 0
    arrays, meta = cs.to_state()
    loaded = CalibrationStatistics.from_state(arrays, json.loads(json.dumps(meta)))
    assert loaded.q_limit_99_ == cs.q_limit_99_ and loaded.q_limit_method_ == "cv-box"
    # A state written before CV limits existed (no moments) keeps its eigenvalue limits.
    old_meta = {k: v for k, v in meta.items() if not k.startswith("q_cv_")}
    old = CalibrationStatistics.from_state(arrays, old_meta)
    eig = CalibrationStatistics(n_components=5, q_limit="eigenvalues").fit(Zc)
    assert old.q_limit_99_ == pytest.approx(eig.q_limit_99_) and old.q_limit_method_ != "cv-box"
    with pytest.raises(DataError, match="q_limit must be 'cv' or 'eigenvalues'"):
        CalibrationStatistics(n_components=5, q_limit="loo").fit(Zc)
