"""Savitzky-Golay smoothing and derivatives along the spectral axis."""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from scipy.signal import savgol_filter
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError

Mode = Literal["interp", "mirror", "nearest", "constant", "wrap"]


@register_stateful
class SavitzkyGolay(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Savitzky-Golay filter: local polynomial fit in a sliding window, with derivative.

    Savitzky & Golay, Anal. Chem. 36 (1964) 1627. Derivatives are per point (``delta=1``),
    the usual convention in chemometrics; scale by the grid step for per-nm units.

    The filter is linear, so ``fit`` applies :func:`scipy.signal.savgol_filter` to the identity
    matrix once and keeps the result as a sparse banded operator (edge rows included); a batch
    is then one sparse product, several times faster than filtering it with ``savgol_filter``
    and numerically the same.

    Parameters
    ----------
    window_length : int, default 11
        Odd number of points in the window.
    polyorder : int, default 2
        Order of the local polynomial, less than ``window_length``.
    deriv : int, default 0
        Derivative order (0 smooths).
    mode : str, default "interp"
        Edge handling of :func:`scipy.signal.savgol_filter`; ``"interp"`` fits the polynomial to
        the edge window instead of padding, so derivatives at the edges are not flattened.
    """

    def __init__(
        self, window_length: int = 11, polyorder: int = 2, deriv: int = 0, mode: Mode = "interp"
    ) -> None:
        self.window_length = window_length
        self.polyorder = polyorder
        self.deriv = deriv
        self.mode = mode

    def _validate(self, n_points: int) -> None:
        w, k, d = self.window_length, self.polyorder, self.deriv
        if not all(isinstance(v, int | np.integer) for v in (w, k, d)):
            raise DataError(f"SavitzkyGolay: integer parameters expected, got {w!r}, {k!r}, {d!r}")
        if w < 3 or w % 2 == 0:
            raise DataError(f"SavitzkyGolay: window_length must be odd and >= 3, got {w}")
        if not 0 <= k < w:
            raise DataError(f"SavitzkyGolay: need 0 <= polyorder < window_length, got {k}, {w}")
        if not 0 <= d <= k:
            raise DataError(f"SavitzkyGolay: need 0 <= deriv <= polyorder, got {d}, {k}")
        if w > n_points:
            raise DataError(
                f"SavitzkyGolay: window_length {w} exceeds the {n_points} points per spectrum "
                f"(n_features={n_points})"
            )
        if self.mode not in ("interp", "mirror", "nearest", "constant", "wrap"):
            raise DataError(f"SavitzkyGolay: unknown mode {self.mode!r}")

    def fit(self, X: Any, y: Any = None) -> Self:
        """Check the parameters against the number of points, X of shape (n, p)."""
        p = check_spectra(X, who="SavitzkyGolay").shape[1]
        self._build(p)
        return self

    def _build(self, p: int) -> None:
        self._validate(p)
        # Row i of savgol_filter(I) is the filter's response to a unit impulse at point i, so
        # filtered = X @ F. Stored transposed for a CSR product with X.T.
        F = savgol_filter(
            np.eye(p), self.window_length, self.polyorder, deriv=self.deriv, axis=1, mode=self.mode
        )
        F[np.abs(F) < 1e-15 * np.abs(F).max()] = 0.0
        self.operator_ = sp.csr_array(F.T)
        self._operator32 = sp.csr_array(F.T.astype(np.float32))
        self.n_features_in_ = p

    def transform(self, X: Any) -> np.ndarray:
        """Filtered spectra, shape (n, p), X's float type."""
        check_is_fitted(self, "n_features_in_")
        X = check_spectra(X, self.n_features_in_, who="SavitzkyGolay")
        op = self._operator32 if X.dtype == np.float32 else self.operator_
        return np.ascontiguousarray((op @ X.T).T)

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """No arrays; parameters in the metadata."""
        check_is_fitted(self, "n_features_in_")
        return {}, {
            "class": type(self).__name__,
            "params": {
                "window_length": int(self.window_length),
                "polyorder": int(self.polyorder),
                "deriv": int(self.deriv),
                "mode": self.mode,
            },
            "n_features_in_": int(self.n_features_in_),
        }

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, [])
        obj = cls(**meta["params"])
        obj._build(int(meta["n_features_in_"]))
        return obj
