"""Wavelength range selection."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError


@register_stateful
class WavelengthRange(TransformerMixin, BaseEstimator):
    """Keep the points with ``start <= wavelength <= stop`` (inclusive, in nm).

    Parameters
    ----------
    wavelengths : array-like (p,), optional
        The wavelength axis of the input spectra, increasing; None: the column index
        (0, 1, ... p - 1) of the spectra given to ``fit`` is the axis.
    start, stop : float, optional
        Bounds; None keeps that end of the axis.

    Attributes
    ----------
    indices_ : ndarray (q,) of int
        Kept columns of the input.
    wavelengths_out_ : ndarray (q,)
    """

    def __init__(
        self, wavelengths: Any = None, start: float | None = None, stop: float | None = None
    ) -> None:
        self.wavelengths = wavelengths
        self.start = start
        self.stop = stop

    def fit(self, X: Any = None, y: Any = None) -> Self:
        """Work out the kept columns; X (n, p), if given, must match the wavelength axis."""
        if self.wavelengths is None:
            if X is None:
                raise DataError("WavelengthRange: without wavelengths, fit needs the spectra")
            wl = np.arange(check_spectra(X, who="WavelengthRange").shape[1], dtype=np.float64)
        else:
            wl = np.asarray(self.wavelengths, dtype=np.float64)
            if wl.ndim != 1 or wl.size == 0 or not np.all(np.diff(wl) > 0):
                raise DataError(
                    "WavelengthRange: wavelengths must be a non-empty increasing 1-D axis"
                )
            if X is not None:
                check_spectra(X, wl.size, who="WavelengthRange")
        lo = -np.inf if self.start is None else float(self.start)
        hi = np.inf if self.stop is None else float(self.stop)
        idx = np.flatnonzero((wl >= lo) & (wl <= hi))
        if idx.size == 0:
            raise DataError(
                f"WavelengthRange: no wavelength in [{self.start}, {self.stop}] nm; "
                f"the axis runs from {wl[0]:g} to {wl[-1]:g} nm"
            )
        self.indices_ = idx
        self.wavelengths_in_ = wl
        self.wavelengths_out_ = wl[idx]
        self.n_features_in_ = wl.size
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The selected columns, shape (n, q)."""
        check_is_fitted(self, "indices_")
        X = check_spectra(X, self.n_features_in_, who="WavelengthRange")
        return X[:, self.indices_]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output names: the kept wavelengths as strings."""
        check_is_fitted(self, "indices_")
        return np.array([f"{w:g}" for w in self.wavelengths_out_], dtype=object)

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """The input wavelength axis as an array; bounds in the metadata."""
        check_is_fitted(self, "indices_")
        return {"wavelengths": self.wavelengths_in_}, {
            "class": type(self).__name__,
            "params": {"start": self.start, "stop": self.stop},
        }

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, ["wavelengths"])
        return cls(np.asarray(arrays["wavelengths"]), **meta["params"]).fit()
