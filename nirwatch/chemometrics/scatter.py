"""Scatter correction: MSC, EMSC and SNV as vectorised scikit-learn transformers.

MSC and EMSC regress every spectrum on a fixed design matrix (reference spectrum, polynomial
baseline, optional interferent spectra). The design does not depend on the spectrum, so its
pseudo-inverse is computed once in ``fit`` and a micro-batch is corrected with two matrix
products, no per-spectrum loop (Martens & Stark 1991; Afseth & Kohler 2012).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import (
    StateArrays,
    StateMeta,
    check_spectra,
    check_state,
    check_vector,
)
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError


def polynomial_baseline(n_points: int, order: int) -> np.ndarray:
    """Polynomial basis over the spectral axis, shape (n_points, order + 1).

    The axis is mapped to [-1, 1] so the Vandermonde columns stay well conditioned (the same
    choice as chemotools); on an evenly spaced grid this spans the same baselines as
    polynomials in wavelength.
    """
    return np.vander(np.linspace(-1.0, 1.0, n_points), N=order + 1, increasing=True)


class _ReferenceScatterCorrection(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Least-squares fit of each spectrum to ``[baseline | reference | interferents]``."""

    reference: np.ndarray | None

    def _order(self) -> int:
        raise NotImplementedError

    def _interferents(self, n_features: int) -> np.ndarray | None:
        return None

    def fit(self, X: Any, y: Any = None) -> Self:
        """Learn the reference spectrum (mean of X unless given) and the design's pseudo-inverse.

        Parameters
        ----------
        X : array-like (n, p)
            Calibration spectra.
        """
        X = check_spectra(X, who=type(self).__name__)
        p = X.shape[1]
        if self.reference is not None:
            self.reference_ = check_vector(self.reference, p, who="reference spectrum")
        else:
            self.reference_ = X.mean(axis=0, dtype=np.float64)
        self.interferents_ = self._interferents(p)
        self._build(p)
        return self

    def _build(self, p: int) -> None:
        order = self._order()
        parts = [polynomial_baseline(p, order), self.reference_[:, None]]
        if self.interferents_ is not None:
            parts.append(self.interferents_.T)
        self.design_ = np.hstack(parts)  # (p, k)
        k = self.design_.shape[1]
        if p < k:
            raise DataError(
                f"{type(self).__name__}: {k} terms per spectrum (baseline of order {order}, "
                f"reference, interferents) need spectra of at least {k} points, got n_features={p}"
            )
        if np.linalg.matrix_rank(self.design_) < self.design_.shape[1]:
            raise DataError(
                f"{type(self).__name__}: the design matrix (baseline, reference, interferents) "
                "is rank deficient; the reference or an interferent is a polynomial or "
                "a combination of the others"
            )
        self.pinv_ = np.linalg.pinv(self.design_)  # (k, p)
        self.reference_column_ = order + 1
        self.n_features_in_ = p

    def scatter_coefficients(self, X: Any) -> np.ndarray:
        """Least-squares coefficients of each spectrum, shape (n, k).

        Columns: the ``order + 1`` baseline terms, the reference's multiplier ``m``, then one
        per interferent.
        """
        X = self._check(X)
        return X @ self.pinv_.T.astype(X.dtype, copy=False)

    def _check(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "pinv_")
        return check_spectra(X, self.n_features_in_, who=type(self).__name__)

    def transform(self, X: Any) -> np.ndarray:
        """Corrected spectra ``(x - baseline - interferents) / m``, shape (n, p), X's float type.

        A spectrum with ``m == 0`` (nothing like the reference) comes out as NaN.
        """
        X = self._check(X)
        coef = X @ self.pinv_.T.astype(X.dtype, copy=False)
        k_ref = self.reference_column_
        m = coef[:, k_ref].copy()
        coef[:, k_ref] = 0.0
        design = self.design_.astype(X.dtype, copy=False)
        corrected = X - coef @ design.T
        with np.errstate(divide="ignore", invalid="ignore"):
            corrected /= np.where(m == 0, np.nan, m)[:, None]
        return corrected

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """Arrays and JSON-able metadata that :meth:`from_state` rebuilds this from."""
        check_is_fitted(self, "pinv_")
        arrays: StateArrays = {"reference_": self.reference_}
        if self.interferents_ is not None:
            arrays["interferents_"] = self.interferents_
        meta: StateMeta = {
            "class": type(self).__name__,
            "params": self._state_params(),
            "reference_given": self.reference is not None,
            "n_features_in_": int(self.n_features_in_),
        }
        return arrays, meta

    def _state_params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild a fitted transformer from :meth:`to_state` output."""
        check_state(arrays, meta, cls, ["reference_"])
        params = dict(meta.get("params", {}))
        ref = np.asarray(arrays["reference_"], dtype=np.float64)
        if meta.get("reference_given"):
            params["reference"] = ref
        if "interferents_" in arrays:
            params["interferents"] = np.asarray(arrays["interferents_"], dtype=np.float64)
        obj = cls(**params)
        obj.reference_ = ref
        obj.interferents_ = params.get("interferents")
        obj._build(ref.shape[0])
        return obj


@register_stateful
class MultiplicativeScatterCorrection(_ReferenceScatterCorrection):
    """Multiplicative scatter correction: ``x = c + m * reference``, corrected ``(x - c) / m``.

    Parameters
    ----------
    reference : array-like (p,), optional
        Reference spectrum; default the mean of the spectra given to ``fit``.

    Attributes
    ----------
    reference_ : ndarray (p,)
    design_ : ndarray (p, 2)
        ``[1 | reference]``.
    pinv_ : ndarray (2, p)
        Pseudo-inverse of ``design_``, applied to a whole batch at once.
    """

    def __init__(self, reference: np.ndarray | None = None) -> None:
        self.reference = reference

    def _order(self) -> int:
        return 0


@register_stateful
class ExtendedMultiplicativeScatterCorrection(_ReferenceScatterCorrection):
    """Extended MSC with a polynomial baseline and optional interferent spectra.

    Model per spectrum: ``x = sum_i c_i u^i + m * reference + sum_j g_j z_j + e`` with ``u`` the
    spectral axis mapped to [-1, 1]; corrected ``(x - sum_i c_i u^i - sum_j g_j z_j) / m``
    (Martens & Stark 1991; Afseth & Kohler, Chemom. Intell. Lab. Syst. 117 (2012) 92-99).

    Parameters
    ----------
    order : int, default 2
        Polynomial baseline order (0 offset, 1 linear, 2 quadratic...).
    reference : array-like (p,), optional
        Reference spectrum; default the mean of the spectra given to ``fit``.
    interferents : array-like (k, p), optional
        Spectra of known interferents (water, a filler...) to be removed.

    Attributes
    ----------
    reference_ : ndarray (p,)
    interferents_ : ndarray (k, p) or None
    design_ : ndarray (p, order + 2 + k)
    pinv_ : ndarray (order + 2 + k, p)
    """

    def __init__(
        self,
        order: int = 2,
        reference: np.ndarray | None = None,
        interferents: np.ndarray | None = None,
    ) -> None:
        self.order = order
        self.reference = reference
        self.interferents = interferents

    def _order(self) -> int:
        if not isinstance(self.order, int | np.integer) or self.order < 0:
            raise DataError(f"EMSC order must be an integer >= 0, got {self.order!r}")
        return int(self.order)

    def _interferents(self, n_features: int) -> np.ndarray | None:
        if self.interferents is None:
            return None
        z = np.asarray(self.interferents, dtype=np.float64)
        if z.ndim == 1:
            z = z[None, :]
        if z.ndim != 2 or z.shape[1] != n_features:
            raise DataError(
                f"interferents: expected shape (k, {n_features}), got {np.shape(self.interferents)}"
            )
        if not np.isfinite(z).all():
            raise DataError("interferents: contains non-finite values")
        return z

    def _state_params(self) -> dict[str, Any]:
        return {"order": int(self.order)}


@register_stateful
class StandardNormalVariate(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standard normal variate: centre and scale each spectrum by its own mean and std.

    Stateless apart from the number of points; a flat spectrum (std 0) comes out as NaN
    (Barnes, Dhanoa & Lister, Appl. Spectrosc. 43 (1989) 772).
    """

    def fit(self, X: Any, y: Any = None) -> Self:
        """Record the number of points, shape (n, p) input."""
        self.n_features_in_ = check_spectra(X, who="StandardNormalVariate").shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``(x - mean(x)) / std(x)`` per row, shape (n, p), X's float type."""
        check_is_fitted(self, "n_features_in_")
        X = check_spectra(X, self.n_features_in_, who="StandardNormalVariate")
        centred = X - X.mean(axis=1, keepdims=True)
        std = centred.std(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return centred / np.where(std == 0, np.nan, std)

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """No arrays; the number of points in the metadata."""
        check_is_fitted(self, "n_features_in_")
        return {}, {"class": type(self).__name__, "n_features_in_": int(self.n_features_in_)}

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, [])
        obj = cls()
        obj.n_features_in_ = int(meta["n_features_in_"])
        return obj
