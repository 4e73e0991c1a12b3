"""SpectralAugmenter: drawn offsets, tilts and gains have the configured distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
from nirwatch.errors import DataError


@pytest.fixture(scope="module")
def spectra(shootout_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 195 Train+Validate shootout spectra (195, 650) and their assay values."""
    data = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=range(1, 654))
    kinds = np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=0, dtype=str)
    keep = kinds != "Test"
    return data[keep, 3:], data[keep, 2]


def _recover(aug: SpectralAugmenter, X: np.ndarray, X_copies: np.ndarray) -> np.ndarray:
    """Regress each copy on [original, 1, u]: columns gain, offset/spread, tilt/spread."""
    p = X.shape[1]
    originals = np.tile(X, (aug.n_copies, 1))
    # Batched normal equations, one 3x3 system per copy.
    design = np.stack(
        [
            originals,
            np.ones_like(originals),
            np.broadcast_to(np.linspace(-0.5, 0.5, p), originals.shape),
        ],
        axis=2,
    )
    gram = np.einsum("npi,npj->nij", design, design)
    rhs = np.einsum("npi,np->ni", design, X_copies)
    out = np.linalg.solve(gram, rhs[..., None])[..., 0]
    out[:, 1:] /= aug.spread_
    return out


def test_uniform_draws_have_configured_bounds_and_shape(spectra) -> None:
    X, y = spectra
    aug = SpectralAugmenter(
        n_copies=8, offset_std=0.1, slope_std=0.05, gain_std=0.1, random_state=1
    ).fit(X)
    assert aug.spread_ == pytest.approx(np.std(X))
    X_aug, y_aug = aug.augment(X, y)
    assert X_aug.shape == (9 * 195, 650) and y_aug is not None and y_aug.shape == (9 * 195,)
    assert_allclose(X_aug[:195], X)
    assert_allclose(y_aug, np.tile(y, 9))
    coef = _recover(aug, X, X_aug[195:])
    gain, offset, tilt = coef[:, 0] - 1.0, coef[:, 1], coef[:, 2]
    for values, half in ((gain, 0.1), (offset, 0.1), (tilt, 0.05)):
        assert np.abs(values).max() <= half * (1 + 1e-6)
        # Kolmogorov-Smirnov against U(-half, half); 1560 draws from a fixed seed.
        assert stats.kstest(values, stats.uniform(-half, 2 * half).cdf).pvalue > 0.01
    # Wrong magnitude must be detectable: the same draws are not U(-2h, 2h).
    assert stats.kstest(offset, stats.uniform(-0.2, 0.4).cdf).pvalue < 1e-6


def test_normal_draws_and_noise(spectra) -> None:
    X, _ = spectra
    aug = SpectralAugmenter(
        n_copies=10,
        offset_std=0.2,
        slope_std=0.1,
        gain_std=0.05,
        noise_std=1e-4,
        random_state=2,
        distribution="normal",
    ).fit(X)
    X_aug, y_aug = aug.augment(X, include_original=False)
    assert y_aug is None and X_aug.shape == (1950, 650)
    coef = _recover(aug, X, X_aug)
    for values, std in ((coef[:, 0] - 1.0, 0.05), (coef[:, 1], 0.2), (coef[:, 2], 0.1)):
        assert stats.kstest(values, stats.norm(0, std).cdf).pvalue > 0.01
    # Residual of the regression is the added white noise.
    u = np.linspace(-0.5, 0.5, 650)
    fit = coef[:, :1] * np.tile(X, (10, 1)) + aug.spread_ * (coef[:, 1:2] + coef[:, 2:3] * u)
    noise = (X_aug - fit) / aug.spread_
    assert np.std(noise) == pytest.approx(1e-4, rel=0.05)


def test_seed_reproducible_and_different_seeds_differ(spectra) -> None:
    X, _ = spectra
    a1, _ = SpectralAugmenter(n_copies=3, random_state=7).fit(X).augment(X)
    a2, _ = SpectralAugmenter(n_copies=3, random_state=7).fit(X).augment(X)
    b, _ = SpectralAugmenter(n_copies=3, random_state=8).fit(X).augment(X)
    assert np.array_equal(a1, a2)
    assert not np.allclose(a1[195:], b[195:])


def test_emsc_removes_augmented_offset_tilt_and_gain(spectra) -> None:
    """Augment-then-EMSC equals EMSC of the original (Bjerrum et al. 2017, their fig. 4)."""
    X, _ = spectra
    emsc = ExtendedMultiplicativeScatterCorrection(order=2).fit(X)
    aug = SpectralAugmenter(n_copies=4, random_state=3).fit(X)
    X_aug, _ = aug.augment(X, include_original=False)
    expected = np.tile(emsc.transform(X), (4, 1))
    assert_allclose(emsc.transform(X_aug), expected, rtol=1e-9, atol=1e-9)
    # With noise the agreement degrades gracefully, to about the noise level.
    noisy, _ = (
        SpectralAugmenter(n_copies=4, noise_std=1e-3, random_state=3)
        .fit(X)
        .augment(X, include_original=False)
    )
    err = np.abs(emsc.transform(noisy) - expected).max()
    assert 0 < err < 0.05 * aug.spread_
    # ...while without EMSC the copies differ from the originals by much more.
    assert np.abs(X_aug - np.tile(X, (4, 1))).max() > 10 * err


def test_float32_and_errors_and_state(spectra, tmp_path: Path) -> None:
    X, y = spectra
    aug = SpectralAugmenter(n_copies=2, noise_std=0.01, random_state=0).fit(X)
    X32, _ = aug.augment(X.astype(np.float32))
    assert X32.dtype == np.float32
    with pytest.raises(DataError, match="expected 195 values"):
        aug.augment(X, y[:10])
    with pytest.raises(DataError, match="expected spectra of 650 points, got 600"):
        aug.augment(X[:, :600])
    with pytest.raises(DataError, match="offset_std must be"):
        SpectralAugmenter(offset_std=-1).fit(X)
    arrays, meta = aug.to_state()
    loaded = SpectralAugmenter.from_state(arrays, json.loads(json.dumps(meta)))
    assert np.array_equal(loaded.augment(X)[0], aug.augment(X)[0])
