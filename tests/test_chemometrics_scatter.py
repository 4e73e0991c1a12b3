"""Scatter corrections against chemotools (the oracle) on the real shootout spectra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from chemotools import scatter as ct
from numpy.testing import assert_allclose
from sklearn.exceptions import NotFittedError

from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
    polynomial_baseline,
)
from nirwatch.errors import DataError


@pytest.fixture(scope="module")
def spectra(shootout_csv: Path) -> np.ndarray:
    """All 655 shootout spectra, shape (655, 650) float64."""
    return np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=range(4, 654))


def _band(p: int, centre: float, width: float) -> np.ndarray:
    u = np.arange(p, dtype=float)
    return np.exp(-0.5 * ((u - centre) / width) ** 2)


def test_msc_matches_chemotools(spectra: np.ndarray) -> None:
    ours = MultiplicativeScatterCorrection().fit(spectra[:195])
    oracle = ct.MultiplicativeScatterCorrection().fit(spectra[:195])
    assert_allclose(ours.transform(spectra), oracle.transform(spectra), rtol=1e-9, atol=1e-12)
    assert_allclose(ours.reference_, spectra[:195].mean(axis=0))


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_emsc_matches_chemotools(spectra: np.ndarray, order: int) -> None:
    ours = ExtendedMultiplicativeScatterCorrection(order=order).fit(spectra[:195])
    oracle = ct.ExtendedMultiplicativeScatterCorrection(order=order).fit(spectra[:195])
    assert_allclose(ours.transform(spectra), oracle.transform(spectra), rtol=1e-8, atol=1e-10)


def test_emsc_with_reference_and_interferents_matches_chemotools(spectra: np.ndarray) -> None:
    p = spectra.shape[1]
    reference = np.median(spectra, axis=0)
    interferents = np.stack([_band(p, 150, 20), _band(p, 450, 35)])
    ours = ExtendedMultiplicativeScatterCorrection(
        order=2, reference=reference, interferents=interferents
    ).fit(spectra)
    oracle = ct.ExtendedMultiplicativeScatterCorrection(
        order=2, reference=reference, interferences=interferents
    ).fit(spectra)
    assert_allclose(ours.transform(spectra), oracle.transform(spectra), rtol=1e-8, atol=1e-10)
    assert_allclose(ours.reference_, reference)


def test_snv_matches_chemotools(spectra: np.ndarray) -> None:
    ours = StandardNormalVariate().fit(spectra)
    oracle = ct.StandardNormalVariate().fit(spectra)
    assert_allclose(ours.transform(spectra), oracle.transform(spectra), rtol=1e-10, atol=1e-12)


def test_emsc_recovers_known_model_exactly() -> None:
    """x = baseline + m * reference + g * interferent: EMSC returns the reference itself."""
    rng = np.random.default_rng(3)
    p, n = 300, 50
    reference = 1.0 + _band(p, 100, 15) + 0.5 * _band(p, 220, 30)
    water = _band(p, 180, 25)
    baseline_coef = rng.normal(0, 0.3, (n, 3))
    m = rng.uniform(0.7, 1.4, n)
    g = rng.normal(0, 0.2, n)
    X = baseline_coef @ polynomial_baseline(p, 2).T + m[:, None] * reference + g[:, None] * water
    emsc = ExtendedMultiplicativeScatterCorrection(
        order=2, reference=reference, interferents=water
    ).fit(X)
    assert_allclose(emsc.transform(X), np.tile(reference, (n, 1)), atol=1e-10)
    coef = emsc.scatter_coefficients(X)
    assert_allclose(coef[:, :3], baseline_coef, atol=1e-10)
    assert_allclose(coef[:, 3], m, atol=1e-10)
    assert_allclose(coef[:, 4], g, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        MultiplicativeScatterCorrection,
        ExtendedMultiplicativeScatterCorrection,
        StandardNormalVariate,
    ],
)
def test_float32_in_float32_out(spectra: np.ndarray, make: type) -> None:
    step = make().fit(spectra[:195])
    out32 = step.transform(spectra.astype(np.float32))
    assert out32.dtype == np.float32
    out64 = step.transform(spectra)
    scale = np.abs(out64).max()
    assert_allclose(out32, out64, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "make",
    [
        MultiplicativeScatterCorrection,
        ExtendedMultiplicativeScatterCorrection,
        StandardNormalVariate,
    ],
)
def test_shape_and_fit_checks(spectra: np.ndarray, make: type) -> None:
    with pytest.raises(NotFittedError):
        make().transform(spectra)
    step = make().fit(spectra)
    with pytest.raises(DataError, match="expected spectra of 650 points, got 649"):
        step.transform(spectra[:, :649])
    with pytest.raises(DataError, match="2-D"):
        step.transform(spectra[0])
    bad = spectra[:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(DataError, match=r"non-finite values in rows \[1\]"):
        step.transform(bad)


def test_bad_reference_and_interferents(spectra: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"expected shape \(650,\), got \(10,\)"):
        MultiplicativeScatterCorrection(reference=np.ones(10)).fit(spectra)
    with pytest.raises(DataError, match=r"interferents: expected shape \(k, 650\)"):
        ExtendedMultiplicativeScatterCorrection(interferents=np.ones((2, 10))).fit(spectra)
    # A constant interferent duplicates the polynomial's offset column.
    with pytest.raises(DataError, match="rank deficient"):
        ExtendedMultiplicativeScatterCorrection(interferents=np.ones(650)).fit(spectra)


def test_flat_spectrum_gives_nan_not_crash(spectra: np.ndarray) -> None:
    snv = StandardNormalVariate().fit(spectra)
    out = snv.transform(np.vstack([spectra[0], np.full(650, 2.0)]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


@pytest.mark.parametrize(
    "step",
    [
        MultiplicativeScatterCorrection(),
        ExtendedMultiplicativeScatterCorrection(order=3),
        ExtendedMultiplicativeScatterCorrection(
            order=1, reference=1 + _band(650, 100, 30), interferents=_band(650, 300, 40)
        ),
        StandardNormalVariate(),
    ],
    ids=["msc", "emsc3", "emsc-ref-int", "snv"],
)
def test_state_round_trip_through_npz_and_json(
    spectra: np.ndarray, step: object, tmp_path: Path
) -> None:
    fitted = step.fit(spectra[:100])  # type: ignore[attr-defined]
    arrays, meta = fitted.to_state()
    np.savez(tmp_path / "s.npz", **arrays)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        loaded_arrays = {k: npz[k] for k in npz.files}
    loaded = type(fitted).from_state(loaded_arrays, json.loads(json.dumps(meta)))
    assert_allclose(loaded.transform(spectra[100:]), fitted.transform(spectra[100:]), rtol=1e-12)
    assert loaded.get_params().keys() == fitted.get_params().keys()
