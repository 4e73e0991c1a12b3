from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression

from ingest.pacing import ProbeSchedule
from nirwatch.errors import DataError
from nirwatch.grid import points_in_grid
from nirwatch.simulation.simulator import (
    GRID,
    Drift,
    ProbeSpec,
    TabletLineSimulator,
    calibration_set,
)
from nirwatch.simulation.tablet_spectra import component_spectra


@pytest.fixture(scope="module")
def pls() -> PLSRegression:
    X, y, _ = calibration_set(300, seed=0)
    return PLSRegression(6, scale=False).fit(X, y)


def test_calibration_set_shapes_and_design() -> None:
    X, y, wl = calibration_set(200, seed=3, lab_noise=True)
    assert X.shape == (200, points_in_grid(GRID)) and X.dtype == np.float32
    assert wl[0] == 600 and wl[-1] == 1898
    assert np.isfinite(X).all()
    X2, y2, _ = calibration_set(200, seed=3, lab_noise=True)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    _, content, _ = calibration_set(200, seed=3)
    assert 160 <= content.min() and content.max() <= 240 and content.std() > 15
    assert 1.0 < np.std(y - content) < 2.0  # lab reference = true content + lab noise


def test_pls_fitted_on_calibration_predicts_streamed_content(pls: PLSRegression) -> None:
    sim = TabletLineSimulator([ProbeSpec("p1", 2.0), ProbeSpec("p2", 7.0)], seed=11)
    for probe in ("p1", "p2"):
        batch = sim.next_batch(probe, 400)
        pred = pls.predict(batch.spectra).ravel()
        rmse = float(np.sqrt(np.mean((pred - batch.content_mg) ** 2)))
        # Spread of the content is ~6 mg (3 % RSD of 200 mg); the model must resolve it.
        assert rmse < 0.4 * batch.content_mg.std()
        assert abs(batch.content_mg.mean() - 200) < 2
        lab_sd = np.std(batch.reference_mg - batch.content_mg)
        assert 1.0 < lab_sd < 2.0


def test_beer_lambert_linear_in_api_fraction() -> None:
    wl = np.arange(600, 1900, 2.0)
    pure = component_spectra(wl)
    assert pure.shape == (4, wl.size) and (pure > 0).all()
    # API bands (1143, 1648 nm) are where the API spectrum exceeds the excipients'.
    i = np.argmin(abs(wl - 1648))
    assert pure[0, i] > pure[1:, i].max()


def test_probes_counters_and_sample_ids_are_independent() -> None:
    sim = TabletLineSimulator([ProbeSpec("a", 1.0), ProbeSpec("b", 4.0)], seed=0)
    b1 = sim.next_batch("a", 3)
    b2 = sim.next_batch("a", 2)
    b3 = sim.next_batch("b", 2)
    assert b1.sample_ids == ["a-00000000", "a-00000001", "a-00000002"]
    assert list(b2.indices) == [3, 4] and list(b3.indices) == [0, 1]
    np.testing.assert_allclose(b3.times_s, [0.0, 0.25])
    again = TabletLineSimulator([ProbeSpec("a", 1.0), ProbeSpec("b", 4.0)], seed=0)
    np.testing.assert_array_equal(again.next_batch("a", 3).spectra, b1.spectra)


def _before_after(kind: str, n: int = 400, **kw: float) -> tuple[np.ndarray, np.ndarray, object]:
    # 10 spectra/s, onset at 10 s (sample 100), full strength by 20 s.
    drift = Drift(kind, onset_s=10.0, ramp_s=10.0, **kw)  # type: ignore[arg-type]
    sim = TabletLineSimulator([ProbeSpec("p", 10.0)], seed=5, drift=drift)
    batch = sim.next_batch("p", n)
    before = batch.spectra[:100]
    after = batch.spectra[200:]
    assert (batch.drift_progress[:100] == 0).all() and (batch.drift_progress[200:] == 1).all()
    return before, after, batch


def test_no_change_before_onset() -> None:
    ref = TabletLineSimulator([ProbeSpec("p", 10.0)], seed=5).next_batch("p", 400)
    for kind in ("baseline", "excipient_lot", "detector_ageing", "content_shift"):
        _, _, batch = _before_after(kind)
        np.testing.assert_array_equal(batch.spectra[:100], ref.spectra[:100])  # type: ignore[attr-defined]


def test_baseline_drift_lifts_short_wavelengths_most() -> None:
    before, after, _ = _before_after("baseline")
    diff = after.mean(axis=0) - before.mean(axis=0)
    assert diff[0] > 0.1 and 0.02 < diff[-1] < 0.05
    assert diff[0] > 3 * diff[-1]


def test_excipient_lot_shifts_cellulose_bands(pls: PLSRegression) -> None:
    before, after, batch = _before_after("excipient_lot")
    wl = np.arange(600, 1900, 2.0)
    new_lot = component_spectra(wl, cellulose_shift_nm=8.0, cellulose_widen=1.15)[1]
    lot_change = new_lot - component_spectra(wl)[1]
    diff = after.mean(axis=0) - before.mean(axis=0)
    # The change is the cellulose fraction (~0.46) times the change of its spectrum.
    corr = np.corrcoef(diff, lot_change)[0, 1]
    assert corr > 0.9
    scale = float(diff @ lot_change / (lot_change @ lot_change))
    assert 0.35 < scale < 0.6
    pred = pls.predict(batch.spectra).ravel()  # type: ignore[attr-defined]
    err = pred - batch.content_mg  # type: ignore[attr-defined]
    assert abs(err[200:].mean()) > 3 * abs(err[:100].mean()) + 1.0


def test_detector_ageing_adds_noise_and_decays_gain() -> None:
    before, after, _ = _before_after("detector_ageing")

    def hf_noise(x: np.ndarray) -> float:
        return float(np.std(np.diff(x, n=2, axis=1)))

    assert hf_noise(after) > 5 * hf_noise(before)
    wl = np.arange(600, 1900, 2.0)
    band = np.argmin(abs(wl - 1780))
    assert after[:, band].mean() < 0.95 * before[:, band].mean()


def test_content_shift_moves_true_and_predicted_content(pls: PLSRegression) -> None:
    _, _, batch = _before_after("content_shift", magnitude=0.5)
    content = batch.content_mg  # type: ignore[attr-defined]
    assert abs(content[:100].mean() - 200) < 2
    assert abs(content[200:].mean() - 210) < 2
    pred = pls.predict(batch.spectra).ravel()  # type: ignore[attr-defined]
    assert abs(pred[200:].mean() - 210) < 2


def test_onset_by_index_and_validation() -> None:
    d = Drift("baseline", onset_index=50, ramp_s=0)
    np.testing.assert_array_equal(d.progress(np.array([49, 50, 51]), 5.0), [0, 1, 1])
    with pytest.raises(DataError, match="exactly one"):
        Drift("baseline")
    with pytest.raises(DataError, match="drift kind"):
        Drift("gremlins", onset_s=1)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unique"):
        TabletLineSimulator([ProbeSpec("a"), ProbeSpec("a")])


def test_schedule_interleaves_probes_by_rate() -> None:
    sched = ProbeSchedule([ProbeSpec("slow", 1.0), ProbeSpec("fast", 3.0)])
    events = [sched.pop() for _ in range(8)]
    assert [t for t, _ in events] == sorted(t for t, _ in events)
    assert [p for _, p in events].count("fast") == 6
