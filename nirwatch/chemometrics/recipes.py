"""PLS preprocessing recipes: a wavelength range, then a scatter correction, then an optional
Savitzky-Golay derivative, then optionally autoscaling; and the candidate sets the search
compares (:func:`compact_recipes`, :func:`default_recipes`), stated for any wavelength grid;
:func:`recipe_transforms` applies many recipes to one set of spectra, each shared intermediate
(range, scatter correction, Savitzky-Golay operator) computed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.scaling import UnitVarianceScaling
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.errors import DataError

__all__ = [
    "AUTOSCALED_RAW",
    "SCATTERS",
    "Recipe",
    "compact_recipes",
    "default_recipes",
    "recipe_transforms",
]

SCATTERS = ("none", "snv", "msc", "emsc1", "emsc2")
SCALINGS = ("none", "autoscale")
#: Wavelength windows as fractions of the axis (by index): full, thirds and halves.
RANGE_FRACTIONS = ((0.0, 1.0), (1 / 3, 1.0), (0.0, 2 / 3), (1 / 6, 5 / 6), (0.5, 1.0), (0.0, 0.5))
#: Savitzky-Golay windows as fractions of the full axis length (rounded to odd, >= 5 points).
WINDOW_FRACTIONS = (1 / 80, 1 / 40, 1 / 20)


@dataclass(frozen=True)
class Recipe:
    """One preprocessing candidate: range, scatter correction, derivative.

    ``start``/``stop`` are in the wavelength axis' units (None keeps that end); ``derivative``
    0 means no Savitzky-Golay step (``window`` then 0); ``scaling`` "autoscale" divides every
    wavelength by its standard deviation last (:class:`UnitVarianceScaling`).
    """

    start: float | None
    stop: float | None
    scatter: str
    derivative: int = 0
    window: int = 0
    polyorder: int = 2
    scaling: str = "none"

    def __post_init__(self) -> None:
        if self.scatter not in SCATTERS:
            raise DataError(f"Recipe: scatter must be one of {SCATTERS}, got {self.scatter!r}")
        if self.derivative not in (0, 1, 2):
            raise DataError(f"Recipe: derivative must be 0, 1 or 2, got {self.derivative!r}")
        if self.scaling not in SCALINGS:
            raise DataError(f"Recipe: scaling must be one of {SCALINGS}, got {self.scaling!r}")

    @property
    def name(self) -> str:
        rng = (
            "full" if self.start is None and self.stop is None else f"{self.start:g}-{self.stop:g}"
        )
        parts = [rng, self.scatter]
        if self.derivative:
            parts.append(f"SG d{self.derivative} w{self.window}")
        if self.scaling != "none":
            parts.append(self.scaling)
        return " | ".join(parts)

    @property
    def complexity(self) -> int:
        """Tie-break order among equally good recipes: fewer steps first."""
        return (
            (self.scatter != "none")
            + (self.derivative > 0)
            + (self.start is not None or self.stop is not None)
            + (self.scaling != "none")
        )

    def scatter_step(self) -> Any | None:
        return {
            "none": None,
            "snv": StandardNormalVariate(),
            "msc": MultiplicativeScatterCorrection(),
            "emsc1": ExtendedMultiplicativeScatterCorrection(order=1),
            "emsc2": ExtendedMultiplicativeScatterCorrection(order=2),
        }[self.scatter]

    def steps(self, wavelengths: Any) -> list[Any]:
        """Unfitted transformers for raw spectra on ``wavelengths``."""
        out: list[Any] = []
        if self.start is not None or self.stop is not None:
            out.append(WavelengthRange(wavelengths, start=self.start, stop=self.stop))
        scatter = self.scatter_step()
        if scatter is not None:
            out.append(scatter)
        if self.derivative:
            out.append(
                SavitzkyGolay(
                    window_length=self.window, polyorder=self.polyorder, deriv=self.derivative
                )
            )
        if self.scaling == "autoscale":
            out.append(UnitVarianceScaling())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "stop": self.stop,
            "scatter": self.scatter,
            "derivative": self.derivative,
            "window": self.window,
            "polyorder": self.polyorder,
            "scaling": self.scaling,
        }


def _odd_window(p: int, fraction: float) -> int:
    w = max(5, int(round(p * fraction)))
    return w + 1 if w % 2 == 0 else w


#: The ten-line script's recipe (scikit-learn's ``PLSRegression()``: raw spectra, autoscaled).
AUTOSCALED_RAW = Recipe(None, None, "none", scaling="autoscale")


def compact_recipes(wavelengths: Any) -> list[Recipe]:
    """The common recipes: the full axis x 5 scatter corrections x {no derivative, first
    derivative at the middle window, second derivative at the wide one}, plus autoscaled raw
    spectra: 16 candidates.

    Fewer candidates select with less noise (Cawley & Talbot 2010, JMLR 11, 2079-2107), which
    matters most for small calibration sets; :func:`default_recipes` adds windows and widths.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    p = wl.size
    middle, wide = (_odd_window(p, f) for f in WINDOW_FRACTIONS[1:])
    derivs = [(0, 0), (1, middle), (2, wide)]
    out = [
        Recipe(None, None, scatter, d, w)
        for scatter in SCATTERS
        for d, w in derivs
        if not d or w <= p // 2
    ]
    return out + [AUTOSCALED_RAW]


def default_recipes(wavelengths: Any) -> list[Recipe]:
    """The default candidate set: 6 ranges x 5 scatter corrections x 6 derivative settings,
    plus autoscaled raw spectra.

    Derivatives: none; first derivative at 3 windows; second derivative at the 2 wider ones
    (a second derivative amplifies noise more). Windows scale with the axis length (1/80, 1/40
    and 1/20 of it: 9, 17 and 33 points on a 650-point NIR axis), so the set is stated for any
    grid rather than tuned to one. Ranges: the full axis, its thirds-based windows and halves.
    It holds every recipe of :func:`compact_recipes`.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    p = wl.size
    windows = sorted({_odd_window(p, f) for f in WINDOW_FRACTIONS})
    derivs = [(0, 0)] + [(1, w) for w in windows] + [(2, w) for w in windows[-2:]]
    out: list[Recipe] = []
    for lo, hi in RANGE_FRACTIONS:
        i0, i1 = int(round(lo * p)), int(round(hi * p))
        q = i1 - i0
        full = i0 == 0 and i1 == p
        # min/max: a window is the same points whichever way the caller's axis runs.
        start = None if full else float(min(wl[i0], wl[i1 - 1]))
        stop = None if full else float(max(wl[i0], wl[i1 - 1]))
        for scatter in SCATTERS:
            for d, w in derivs:
                if d and w > q // 2:
                    continue  # a window over half the range is no local derivative
                out.append(Recipe(start, stop, scatter, d, w))
    return out + [AUTOSCALED_RAW]


def recipe_transforms(
    X: np.ndarray, wl: np.ndarray, recipes: Sequence[Recipe]
) -> dict[Recipe, np.ndarray | None]:
    """Preprocessed spectra per recipe, each intermediate computed once; None for a recipe
    whose steps refuse these spectra (e.g. MSC of spectra whose mean is flat, EMSC on a range
    shorter than its terms): that recipe cannot serve these data, the others still can."""
    out: dict[Recipe, np.ndarray | None] = {}
    ranged: dict[tuple[Any, Any], np.ndarray] = {}
    scattered: dict[tuple[Any, Any, str], np.ndarray] = {}
    filters: dict[tuple[int, int, int, int], SavitzkyGolay] = {}
    for r in recipes:
        try:
            out[r] = _recipe_transform(X, wl, r, ranged, scattered, filters)
        except DataError:
            out[r] = None
    return out


def _recipe_transform(
    X: np.ndarray,
    wl: np.ndarray,
    r: Recipe,
    ranged: dict[tuple[Any, Any], np.ndarray],
    scattered: dict[tuple[Any, Any, str], np.ndarray],
    filters: dict[tuple[int, int, int, int], SavitzkyGolay],
) -> np.ndarray:
    """One recipe's preprocessed spectra, reusing and filling the caches of intermediates."""
    key = (r.start, r.stop)
    if key not in ranged:
        ranged[key] = (
            X
            if r.start is None and r.stop is None
            else WavelengthRange(wl, r.start, r.stop).fit(X).transform(X)
        )
    skey = (*key, r.scatter)
    if skey not in scattered:
        step = r.scatter_step()
        Z = ranged[key]
        scattered[skey] = Z if step is None else step.fit(Z).transform(Z)
    Z = scattered[skey]
    if r.derivative:
        fkey = (Z.shape[1], r.window, r.polyorder, r.derivative)
        if fkey not in filters:  # building the banded operator costs more than applying it
            filters[fkey] = SavitzkyGolay(r.window, r.polyorder, r.derivative).fit(Z)
        Z = filters[fkey].transform(Z)
    if r.scaling == "autoscale":
        Z = UnitVarianceScaling().fit(Z).transform(Z)
    return Z
