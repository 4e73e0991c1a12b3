"""SavitzkyGolay against chemotools and scipy; WavelengthRange selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from chemotools.derivative import SavitzkyGolay as OracleSG
from numpy.testing import assert_allclose
from scipy.signal import savgol_filter

from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.errors import DataError


@pytest.fixture(scope="module")
def spectra(shootout_csv: Path) -> np.ndarray:
    return np.loadtxt(shootout_csv, delimiter=",", skiprows=1, usecols=range(4, 654))


@pytest.mark.parametrize(
    ("window", "order", "deriv", "mode"),
    [(11, 2, 0, "nearest"), (15, 2, 1, "nearest"), (21, 3, 2, "mirror"), (11, 2, 1, "interp")],
)
def test_matches_chemotools(
    spectra: np.ndarray, window: int, order: int, deriv: int, mode: str
) -> None:
    ours = SavitzkyGolay(window, order, deriv, mode=mode).fit(spectra)  # type: ignore[arg-type]
    oracle = OracleSG(window_length=window, polyorder=order, deriv=deriv, mode=mode).fit(spectra)
    expected = oracle.transform(spectra)
    assert_allclose(
        ours.transform(spectra), expected, rtol=1e-7, atol=1e-10 * np.abs(expected).max()
    )


def test_default_interp_matches_scipy_and_float32(spectra: np.ndarray) -> None:
    sg = SavitzkyGolay(window_length=17, polyorder=2, deriv=1).fit(spectra)
    expected = savgol_filter(spectra, 17, 2, deriv=1, axis=1)
    scale = np.abs(expected).max()
    assert_allclose(sg.transform(spectra), expected, atol=1e-10 * scale)
    out32 = sg.transform(spectra.astype(np.float32))
    assert out32.dtype == np.float32 and out32.flags.c_contiguous
    assert_allclose(out32, expected, atol=1e-5 * scale)


def test_parameter_errors(spectra: np.ndarray) -> None:
    with pytest.raises(DataError, match="odd"):
        SavitzkyGolay(window_length=10).fit(spectra)
    with pytest.raises(DataError, match="deriv <= polyorder"):
        SavitzkyGolay(window_length=11, polyorder=1, deriv=2).fit(spectra)
    with pytest.raises(DataError, match="exceeds the 5 points"):
        SavitzkyGolay(window_length=11).fit(spectra[:, :5])
    sg = SavitzkyGolay().fit(spectra)
    with pytest.raises(DataError, match="expected spectra of 650 points, got 600"):
        sg.transform(spectra[:, :600])


def test_savgol_state_round_trip(spectra: np.ndarray) -> None:
    sg = SavitzkyGolay(13, 3, 2, mode="mirror").fit(spectra)
    arrays, meta = sg.to_state()
    loaded = SavitzkyGolay.from_state(arrays, json.loads(json.dumps(meta)))
    assert_allclose(loaded.transform(spectra[:5]), sg.transform(spectra[:5]))


def test_wavelength_range(spectra: np.ndarray) -> None:
    wl = 600.0 + 2 * np.arange(650)
    sel = WavelengthRange(wl, start=1100, stop=1798).fit(spectra)
    out = sel.transform(spectra)
    assert out.shape == (655, 350)
    assert sel.wavelengths_out_[0] == 1100 and sel.wavelengths_out_[-1] == 1798
    assert_allclose(out, spectra[:, 250:600])
    assert sel.get_feature_names_out()[0] == "1100"
    loaded = WavelengthRange.from_state(*sel.to_state())
    assert_allclose(loaded.transform(spectra), out)
    assert WavelengthRange(wl).fit().transform(spectra).shape == (655, 650)
    with pytest.raises(DataError, match="no wavelength in"):
        WavelengthRange(wl, start=2000).fit()
    with pytest.raises(DataError, match="increasing"):
        WavelengthRange(wl[::-1]).fit()
    with pytest.raises(DataError, match="expected spectra of 650 points, got 649"):
        sel.transform(spectra[:, 1:])


def test_wavelength_range_without_an_axis_selects_by_column_index(spectra) -> None:
    """wavelengths=None: the column index is the axis (scikit-learn's checks use it so)."""
    sel = WavelengthRange(start=250, stop=599).fit(spectra)
    assert_allclose(sel.transform(spectra), spectra[:, 250:600])
    loaded = WavelengthRange.from_state(*sel.to_state())
    assert_allclose(loaded.transform(spectra), spectra[:, 250:600])
    with pytest.raises(DataError, match="without wavelengths, fit needs the spectra"):
        WavelengthRange(stop=3).fit()
