"""Bundle round trip with the real chemometrics components (PLS + MSC/SG, PCA statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSComponentsCV
from nirwatch.chemometrics.scatter import MultiplicativeScatterCorrection
from nirwatch.models.bundle import BundleContents, data_hash, load_bundle, write_bundle

WL = np.arange(600.0, 1000.0, 4.0)


def spectra(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(150, 250, n)
    band = np.exp(-(((WL - 800) / 40) ** 2))
    base = 0.5 + 0.3 * np.exp(-(((WL - 700) / 80) ** 2))
    scatter = rng.uniform(0.8, 1.2, (n, 1))
    X = scatter * (base + 1e-3 * y[:, None] * band) + rng.normal(0, 1e-4, (n, WL.size))
    return X, y


@pytest.mark.parametrize("statistics_on_pls", [True, False])
def test_real_components_round_trip(tmp_path: Path, statistics_on_pls: bool) -> None:
    X, y = spectra(60, 0)
    steps = [MultiplicativeScatterCorrection(), SavitzkyGolay(11, 2, deriv=1)]
    search = PLSComponentsCV(steps, max_components=8, cv=5).fit(X, y)
    pls = search.best_estimator_
    Z = pls.preprocess(X)
    stats = CalibrationStatistics(n_components=pls.n_components_).fit(Z)
    contents = BundleContents(
        target="assay",
        unit="mg",
        wavelengths=WL,
        data_hash=data_hash(X, y),
        pls=pls,
        statistics=stats,
        statistics_steps=[] if statistics_on_pls else pls.steps_,
        statistics_on_pls=statistics_on_pls,
        fallback_limit=3 * search.rmsecv_,
    )
    loaded = load_bundle(write_bundle(contents, tmp_path / "b"))
    Xn, yn = spectra(20, 1)
    pred = loaded.predict(Xn)
    np.testing.assert_allclose(pred.pls_value, pls.predict(Xn), rtol=1e-10)
    t2, q = stats.t2_q(pls.preprocess(Xn))
    np.testing.assert_allclose(pred.t2, t2, rtol=1e-10)
    np.testing.assert_allclose(pred.q, q, rtol=1e-10)
    assert pred.t2_limit == stats.t2_limit_99_ and pred.q_limit == stats.q_limit_99_
    assert np.sqrt(np.mean((pred.value - yn) ** 2)) < 2.0
    # A spectrum with a band the calibration never saw is flagged.
    odd = Xn[:1] + 0.05 * np.exp(-(((WL - 900) / 20) ** 2))
    assert loaded.predict(odd).out_of_model[0]
