"""Hotelling T² test of window means of a vector against a reference (no I/O, no random numbers).

A :class:`~monitoring.drift.DriftDetector`; the monitor feeds it the cube roots of each
spectrum's T² and Q over their limits (input drift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from monitoring.drift import DriftDetector
from nirwatch.errors import DataError

__all__ = ["MeanShiftDetector", "Vector"]

#: One sample of a vector (array, tuple or list), or a scalar for a 1-vector.
Vector = np.ndarray | Sequence[float] | float


class MeanShiftDetector(DriftDetector[Vector]):
    """Hotelling T² of tumbling-window means of a vector (e.g. latent scores) vs a reference.

    The reference mean and covariance are given (e.g. zero mean and the calibration's score
    variances) or learned from the first ``n_reference`` samples. For a window of ``m``
    samples, ``T² = d' S⁻¹ d / (1/m + 1/n_ref)`` with ``d`` the difference of means. With a
    given (known) reference it is χ²(p) under no shift; with ``S`` estimated from ``n_ref``
    samples (``ν = n_ref − 1`` degrees of freedom) it follows Hotelling's
    ``T²(p, ν) = ν p / (ν − p + 1) · F(p, ν − p + 1)`` (Montgomery, *Introduction to Statistical
    Quality Control*, ch. 11). Drift when T² exceeds that law's quantile at ``1 - alpha``: the
    χ² limit with a short warm-up (30 samples, say) would alarm far more often than ``alpha``.

    Parameters
    ----------
    window : int
        Samples per window mean.
    alpha : float
        False-alarm probability per window.
    n_reference : int
        Warm-up samples used to learn the reference when ``mean``/``cov`` are not given.
    mean : ndarray (p,), optional
    cov : ndarray (p, p), optional
    """

    def __init__(
        self,
        window: int = 50,
        alpha: float = 1e-5,
        n_reference: int = 200,
        mean: np.ndarray | None = None,
        cov: np.ndarray | None = None,
    ) -> None:
        if (mean is None) != (cov is None):
            raise DataError("give both mean and cov of the reference, or neither")
        self.window = window
        self.alpha = alpha
        self.n_reference = n_reference
        self._given = (mean, cov)
        self.reset()

    def reset(self) -> None:
        mean, cov = self._given
        self._ref: list[Any] = []
        self._buf: list[Any] = []
        self._mean: np.ndarray | None = None
        self._inv: np.ndarray | None = None
        self._n_ref = math.inf
        self.t2 = 0.0
        self.n_windows = 0
        if mean is not None and cov is not None:
            self._set_reference(np.atleast_1d(np.asarray(mean, float)), np.atleast_2d(cov))

    def _set_reference(self, mean: np.ndarray, cov: np.ndarray) -> None:
        if cov.shape != (mean.size, mean.size):
            raise DataError(f"cov must be ({mean.size}, {mean.size}), got {cov.shape}")
        self._mean = mean
        self._inv = np.linalg.pinv(cov)
        p = mean.size
        if math.isinf(self._n_ref):  # known reference
            self._limit = float(stats.chi2.ppf(1.0 - self.alpha, p))
        else:
            nu = self._n_ref - 1.0
            if nu - p + 1 <= 0:
                raise DataError(
                    f"MeanShiftDetector: a reference of {self._n_ref:g} samples cannot estimate "
                    f"the covariance of {p} values (need n_reference > {p})"
                )
            f = float(stats.f.ppf(1.0 - self.alpha, p, nu - p + 1))
            self._limit = nu * p / (nu - p + 1) * f

    def update(self, x: Vector) -> None:
        """Add one sample, a vector of shape (p,) (array, tuple or list) or a scalar."""
        # Samples are buffered as given and converted once per window: a numpy conversion
        # per sample would cost more than the test itself.
        size = len(x) if isinstance(x, tuple | list | np.ndarray) else 1
        if self._mean is None:
            self._ref.append(x)
            if len(self._ref) >= self.n_reference:
                ref = np.asarray(self._ref, dtype=float).reshape(len(self._ref), -1)
                self._n_ref = float(len(ref))
                self._set_reference(ref.mean(axis=0), np.atleast_2d(np.cov(ref, rowvar=False)))
                self._ref = []
            return
        if size != self._mean.size:
            raise DataError(f"expected a vector of {self._mean.size} values, got {size}")
        self._buf.append(x)
        if len(self._buf) == self.window:
            buf = np.asarray(self._buf, dtype=float).reshape(self.window, -1)
            d = buf.mean(axis=0) - self._mean
            assert self._inv is not None
            self.t2 = float(d @ self._inv @ d) / (1.0 / self.window + 1.0 / self._n_ref)
            self.n_windows += 1
            self._buf = []

    @property
    def score(self) -> float:
        return self.t2 / self._limit if self._mean is not None else 0.0

    @property
    def drift_detected(self) -> bool:
        return self.n_windows > 0 and self.score >= 1.0
