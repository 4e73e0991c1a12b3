"""Synthetic pure-component NIR spectra of a tablet blend (API, three excipients, water).

Smooth Gaussian and Lorentzian bands at the usual NIR overtone and combination positions; the
simulator (:mod:`nirwatch.simulation.simulator`) mixes them by Beer–Lambert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class Band:
    """One absorption band: centre and full width at half maximum in nm, peak height."""

    center_nm: float
    fwhm_nm: float
    height: float
    shape: Literal["gauss", "lorentz"] = "gauss"


def band_profile(
    wl: np.ndarray, band: Band, shift_nm: float = 0.0, widen: float = 1.0
) -> np.ndarray:
    """Absorbance of one band on ``wl`` (nm), shape (n_points,)."""
    fwhm = band.fwhm_nm * widen
    x = (wl - band.center_nm - shift_nm) / fwhm
    if band.shape == "lorentz":
        return band.height / (1.0 + 4.0 * x**2)
    return band.height * np.exp(-4.0 * np.log(2.0) * x**2)


# Band positions follow the usual NIR assignments (Workman & Weyer, Practical Guide to
# Interpretive Near-Infrared Spectroscopy, 2008): CH 3rd/2nd/1st overtones near 880/1150/1700 nm,
# OH and NH 2nd/1st overtones near 980/1450-1530 nm, and the CH combination region near
# 1390 nm; the water combination band at 1930 nm sits just past the grid, so only its tail shows.
API_BANDS = (
    Band(875, 24, 0.05),  # aromatic CH 3rd overtone
    Band(1143, 28, 0.22),  # aromatic CH 2nd overtone
    Band(1240, 40, 0.06),  # CH combination
    Band(1510, 34, 0.30, "lorentz"),  # NH 1st overtone (amide)
    Band(1648, 20, 0.34),  # aromatic CH 1st overtone
    Band(1685, 26, 0.28),
    Band(1800, 40, 0.10),
)
CELLULOSE_BANDS = (
    Band(985, 60, 0.05),  # OH 2nd overtone
    Band(1205, 45, 0.10),  # CH2 2nd overtone
    Band(1490, 80, 0.32),  # OH 1st overtone, H-bonded
    Band(1590, 70, 0.16),
    Band(1710, 40, 0.18),  # CH2 1st overtone
    Band(1780, 50, 0.14),
    Band(1930, 70, 0.50, "lorentz"),  # water combination (tail)
)
LACTOSE_BANDS = (
    Band(995, 45, 0.04),  # OH 2nd overtone
    Band(1200, 40, 0.08),
    Band(1450, 22, 0.26),  # crystal water OH 1st overtone, sharp
    Band(1535, 40, 0.20),
    Band(1690, 36, 0.15),
    Band(1780, 40, 0.10),
    Band(1935, 30, 0.45, "lorentz"),  # crystal water combination (tail)
)
STEARATE_BANDS = (
    Band(1210, 30, 0.20),  # CH2 2nd overtone
    Band(1392, 24, 0.12),  # CH combination
    Band(1725, 22, 0.55),  # CH2 1st overtone, asymmetric
    Band(1765, 22, 0.45),  # CH2 1st overtone, symmetric
)
COMPONENT_NAMES = ("api", "cellulose", "lactose", "mg_stearate")
_COMPONENT_BANDS = (API_BANDS, CELLULOSE_BANDS, LACTOSE_BANDS, STEARATE_BANDS)


def component_spectra(
    wl: np.ndarray, cellulose_shift_nm: float = 0.0, cellulose_widen: float = 1.0
) -> np.ndarray:
    """Pure-component absorptivities on ``wl``, shape (4, n_points), rows as COMPONENT_NAMES.

    A weak sloping background (electronic absorption tail, rising towards short wavelengths)
    is added to each so the spectra are not zero between bands.
    """
    rows = []
    for k, bands in enumerate(_COMPONENT_BANDS):
        shift, widen = (cellulose_shift_nm, cellulose_widen) if k == 1 else (0.0, 1.0)
        row = sum(band_profile(wl, b, shift, widen) for b in bands)
        row = row + 0.02 * (1 + k) * np.exp(-(wl - 600.0) / 400.0)
        rows.append(row)
    return np.stack(rows)


def water_spectrum(wl: np.ndarray) -> np.ndarray:
    """Free water absorptivity (OH 2nd overtone, 1st overtone, combination tail), (n_points,)."""
    bands = (Band(970, 50, 0.1), Band(1450, 90, 1.0), Band(1940, 80, 2.0, "lorentz"))
    return np.asarray(sum(band_profile(wl, bnd) for bnd in bands))
