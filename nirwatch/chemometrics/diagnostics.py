"""Applicability domain of a calibration: PCA with Hotelling T² and Q residual limits.

A spectrum far from the calibration spectra gives an unreliable prediction even when the model
returns a number. Two complementary distances flag it: Hotelling's T², the distance inside the
PCA model's plane (unusual amounts of known variation), and Q (squared prediction error, SPE),
the distance off the plane (variation the calibration never saw).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError


def hotelling_t2_limit(n_components: int, n_samples: int, confidence: float) -> float:
    """Upper limit of T² for a new observation against an ``n_samples`` PCA model.

    ``A (n-1)(n+1) / (n (n-A)) * F(confidence; A, n-A)`` (Jackson, A User's Guide to Principal
    Components, 1991, sec. 1.7; Tracy, Young & Mason, J. Qual. Technol. 24 (1992) 88).
    """
    a, n = n_components, n_samples
    if not 0 < a < n:
        raise DataError(f"T² limit needs 0 < n_components < n_samples, got {a} and {n}")
    f = stats.f.ppf(confidence, a, n - a)
    return float(a * (n - 1) * (n + 1) / (n * (n - a)) * f)


def q_residual_limit(residual_eigenvalues: np.ndarray, confidence: float) -> tuple[float, str]:
    """Upper limit of Q (SPE) from the eigenvalues left out of the PCA model.

    Jackson & Mudholkar, Technometrics 21 (1979) 341: with ``theta_k = sum_j lambda_j^k`` and
    ``h0 = 1 - 2 theta1 theta3 / (3 theta2^2)``::

        Q = theta1 * (c sqrt(2 theta2 h0^2) / theta1 + 1 + theta2 h0 (h0 - 1) / theta1^2)^(1/h0)

    with ``c`` the standard normal quantile. The approximation needs ``h0 > 0``; with a few
    dominant residual eigenvalues (common on derivative spectra) ``h0 <= 0`` and it returns
    nonsense (an order of magnitude too low on the shootout), so there the scaled chi-squared
    of Box (Ann. Math. Stat. 25 (1954) 290), ``g chi2(h)`` with ``g = theta2 / theta1`` and
    ``h = theta1^2 / theta2`` (as in Nomikos & MacGregor, Technometrics 37 (1995) 41), is used.

    Returns
    -------
    limit : float
    method : str
        ``"jackson-mudholkar"`` or ``"box"``.
    """
    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    lam = lam[lam > 0]
    if lam.size == 0:
        return 0.0, "none"
    theta1, theta2, theta3 = (float(np.sum(lam**k)) for k in (1, 2, 3))
    h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
    if h0 <= 0:
        g, h = theta2 / theta1, theta1**2 / theta2
        return float(g * stats.chi2.ppf(confidence, h)), "box"
    c = stats.norm.ppf(confidence)
    term = c * np.sqrt(2.0 * theta2 * h0**2) / theta1 + 1.0 + theta2 * h0 * (h0 - 1.0) / theta1**2
    return float(theta1 * term ** (1.0 / h0)), "jackson-mudholkar"


def moment_matched_q_limit(mean: float, variance: float, confidence: float) -> float:
    """``g chi2(h)`` quantile with the given mean and variance (``g = v / 2m``, ``h = 2m² / v``).

    Box (1954), as used for SPE limits by Nomikos & MacGregor, Technometrics 37 (1995) 41.
    """
    if not (mean > 0 and variance > 0):
        raise DataError(f"Q limit needs positive mean and variance, got {mean} and {variance}")
    g, h = variance / (2.0 * mean), 2.0 * mean**2 / variance
    return float(g * stats.chi2.ppf(confidence, h))


@register_stateful
class CalibrationStatistics(BaseEstimator):
    """PCA of (preprocessed) calibration spectra with T² and Q limits at 95 % and 99 %.

    Parameters
    ----------
    n_components : int, optional
        Principal components; default the fewest explaining ``explained_variance``.
    explained_variance : float, default 0.95
        Used only when ``n_components`` is None.
    q_limit : {"cv", "eigenvalues"}, default "cv"
        ``"cv"``: the Q limits are a scaled chi-squared matched to the mean and variance of
        *cross-validated* Q residuals (each calibration spectrum scored against a PCA fitted
        without its fold; ``cv_folds`` interleaved folds). ``"eigenvalues"``: Jackson-Mudholkar
        (or Box) from the calibration's own residual eigenvalues. Those describe how the
        calibration spectra fit a model they are part of; cross-validated residuals are
        residuals of spectra the model has not seen, as in service. With fewer spectra than
        wavelengths the two differ: on Gaussian test data (100 spectra x 300 points) the
        eigenvalue limit had 0.1-0.3 % of new spectra above the 99 % limit, the CV limit
        1.1-1.4 %; on the shootout (MSC + SG derivative, 3-7 components) the eigenvalue
        limits put 2.4-9.3 % of the Test tablets above the 99 % Q limit, the CV limits
        0.4-3.3 % (docs/results/shootout.md).
    cv_folds : int, default 10
        Folds for ``q_limit="cv"``; with fewer than ``2 * cv_folds`` spectra the eigenvalue
        limits are used (``q_limit_method_`` says which).

    Attributes
    ----------
    mean_ : ndarray (p,)
    loadings_ : ndarray (p, A)
        Orthonormal principal axes.
    eigenvalues_ : ndarray (min(n, p),)
        Variances of all principal components of the calibration set (``s^2 / (n - 1)``).
    n_components_ : int
    explained_variance_ratio_ : ndarray (A,)
    t2_limit_95_, t2_limit_99_, q_limit_95_, q_limit_99_ : float
    q_limit_method_ : str
        ``"cv-box"`` (cross-validated residuals), else the approximation of
        :func:`q_residual_limit`.
    q_cv_mean_, q_cv_var_ : float
        Mean and variance of the cross-validated Q residuals (NaN unless ``"cv-box"``).
    """

    def __init__(
        self,
        n_components: int | None = None,
        explained_variance: float = 0.95,
        q_limit: str = "cv",
        cv_folds: int = 10,
    ) -> None:
        self.n_components = n_components
        self.explained_variance = explained_variance
        self.q_limit = q_limit
        self.cv_folds = cv_folds

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit the PCA model and the limits, X of shape (n, p)."""
        X = check_spectra(X, who="CalibrationStatistics").astype(np.float64)
        n, p = X.shape
        if n < 3:
            raise DataError(f"CalibrationStatistics: need at least 3 spectra, got n_samples={n}")
        mean = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
        eig = s**2 / (n - 1)
        ratio = eig / eig.sum()
        if self.n_components is None:
            if not 0 < self.explained_variance <= 1:
                raise DataError(
                    f"explained_variance must be in (0, 1], got {self.explained_variance}"
                )
            a = int(np.searchsorted(np.cumsum(ratio), self.explained_variance - 1e-12) + 1)
        else:
            a = int(self.n_components)
        a = min(a, n - 2, p)
        if self.n_components is not None and a != self.n_components or a < 1:
            raise DataError(
                f"n_components={self.n_components}: {n} spectra x {p} points allow 1..{min(n - 2, p)}"
            )
        self.mean_ = mean
        self.loadings_ = vt[:a].T.copy()
        self.eigenvalues_ = eig
        self.n_samples_ = n
        self.q_cv_mean_ = self.q_cv_var_ = float("nan")
        if self.q_limit not in ("cv", "eigenvalues"):
            raise DataError(f"q_limit must be 'cv' or 'eigenvalues', got {self.q_limit!r}")
        k = int(self.cv_folds)
        if self.q_limit == "cv" and k >= 2 and n >= 2 * k and n - n // k - 2 >= a:
            folds = np.arange(n) % k
            q_cv = np.empty(n)
            for fold in range(k):
                held = folds == fold
                # The same PCA and Q as this class, fitted without the held-out fold.
                part = CalibrationStatistics(n_components=a, q_limit="eigenvalues")
                q_cv[held] = part.fit(X[~held]).t2_q(X[held])[1]
            self.q_cv_mean_, self.q_cv_var_ = float(q_cv.mean()), float(q_cv.var(ddof=1))
        self._set_limits(a)
        return self

    def _set_limits(self, a: int) -> None:
        self.n_components_ = a
        self.n_features_in_ = self.mean_.shape[0]
        self.explained_variance_ratio_ = self.eigenvalues_[:a] / self.eigenvalues_.sum()
        self.t2_limit_95_ = hotelling_t2_limit(a, self.n_samples_, 0.95)
        self.t2_limit_99_ = hotelling_t2_limit(a, self.n_samples_, 0.99)
        m, v = self.q_cv_mean_, self.q_cv_var_
        if np.isfinite(m) and np.isfinite(v) and m > 0 and v > 0:
            self.q_limit_95_ = moment_matched_q_limit(m, v, 0.95)
            self.q_limit_99_ = moment_matched_q_limit(m, v, 0.99)
            self.q_limit_method_ = "cv-box"
            return
        self.q_limit_95_, _ = q_residual_limit(self.eigenvalues_[a:], 0.95)
        self.q_limit_99_, self.q_limit_method_ = q_residual_limit(self.eigenvalues_[a:], 0.99)

    def t2_q(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Hotelling T² and Q residual of each spectrum.

        Parameters
        ----------
        X : array-like (n, p), preprocessed like the calibration spectra

        Returns
        -------
        t2, q : ndarray (n,) float64
        """
        check_is_fitted(self, "loadings_")
        X = check_spectra(X, self.n_features_in_, who="CalibrationStatistics")
        P = self.loadings_.astype(X.dtype, copy=False)
        centred = X - self.mean_.astype(X.dtype, copy=False)
        scores = centred @ P
        t2 = (scores.astype(np.float64) ** 2 / self.eigenvalues_[: self.n_components_]).sum(axis=1)
        # Residual formed explicitly: ||x||² - ||t||² cancels badly in float32.
        residual = centred - scores @ P.T
        q = np.einsum("ij,ij->i", residual, residual, dtype=np.float64)
        return t2, q

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """Mean, loadings and eigenvalues as arrays; sizes and limits as metadata."""
        check_is_fitted(self, "loadings_")
        arrays = {
            "mean_": self.mean_,
            "loadings_": self.loadings_,
            "eigenvalues_": self.eigenvalues_,
        }
        meta: StateMeta = {
            "class": type(self).__name__,
            "n_components_": int(self.n_components_),
            "n_samples_": int(self.n_samples_),
            "explained_variance": self.explained_variance,
            "t2_limit_95_": self.t2_limit_95_,
            "t2_limit_99_": self.t2_limit_99_,
            "q_limit_95_": self.q_limit_95_,
            "q_limit_99_": self.q_limit_99_,
            "q_limit_method_": self.q_limit_method_,
            # NaN is not JSON: absent when the limits come from the eigenvalues.
            **(
                {"q_cv_mean_": self.q_cv_mean_, "q_cv_var_": self.q_cv_var_}
                if self.q_limit_method_ == "cv-box"
                else {}
            ),
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output (limits recomputed, so they always agree)."""
        check_state(arrays, meta, cls, ["mean_", "loadings_", "eigenvalues_"])
        a = int(meta["n_components_"])
        obj = cls(n_components=a, explained_variance=float(meta["explained_variance"]))
        obj.mean_ = np.asarray(arrays["mean_"], dtype=np.float64)
        obj.loadings_ = np.asarray(arrays["loadings_"], dtype=np.float64)
        obj.eigenvalues_ = np.asarray(arrays["eigenvalues_"], dtype=np.float64)
        obj.n_samples_ = int(meta["n_samples_"])
        # Bundles written before the CV limits have no moments: eigenvalue limits, as then.
        obj.q_cv_mean_ = float(meta.get("q_cv_mean_", float("nan")))
        obj.q_cv_var_ = float(meta.get("q_cv_var_", float("nan")))
        obj.q_limit = "cv" if "q_cv_mean_" in meta else "eigenvalues"
        if obj.loadings_.shape != (obj.mean_.shape[0], a):
            raise DataError(
                f"CalibrationStatistics state: loadings shape {obj.loadings_.shape}, "
                f"expected ({obj.mean_.shape[0]}, {a})"
            )
        obj._set_limits(a)
        return obj


def leverage_scale(t2: Any, n_calibration: int) -> np.ndarray:
    """Relative prediction uncertainty from Hotelling T²: ``sqrt(1 + 1/n + T²/(n - 1))``.

    ``1/n + T²/(n - 1)`` is the leverage of a new spectrum on the calibration's scores
    (Faber & Kowalski 1997, J. Chemom. 11, 181-238): predictions far out in score space are
    less certain. NaN T² (no diagnostics) gives NaN.
    """
    n = max(int(n_calibration), 2)
    return np.sqrt(1.0 + 1.0 / n + np.asarray(t2, dtype=np.float64) / (n - 1))
