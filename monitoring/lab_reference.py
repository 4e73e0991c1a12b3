"""Lab reference tracking: predictions against the lab values that arrive later.

A :class:`~monitoring.drift.DriftDetector` like the others (``update(x)``, read-only
``drift_detected``, ``score``, ``reset``; no I/O, no random numbers), on the one signal that
measures accuracy itself rather than a proxy for it. Its observation is the residual
``prediction - lab value``: the RMSE and bias it tests are functions of the residuals alone,
so one number per pair keeps the one-argument ``update`` of every detector (River's
convention of feeding a model's errors to a univariate detector) without a pair type.
"""

from __future__ import annotations

import math
from collections import deque

from scipy import stats

from monitoring.drift import DriftDetector
from nirwatch.errors import DataError

__all__ = ["LabReferenceTracker"]


class LabReferenceTracker(DriftDetector[float]):
    """Rolling RMSE and bias of predictions against later lab values, tested at level ``alpha``.

    Without drift a residual ``r = prediction - lab`` is taken as N(0, σ²) with
    ``σ² = rmsecv² + lab_sd²``: the model's error (its RMSECV) plus the lab method's own noise
    where the RMSECV does not already contain it (a calibration fitted on true contents, or on
    a more precise reference method than the routine lab checks). For the ``n`` most recent
    pairs, ``n · RMSE² / σ² ~ χ²(n)`` and ``bias = mean(r) ~ N(0, σ² / n)``. Drift when either
    test rejects; each gets ``alpha / 2`` (Bonferroni), so a drift-free window alarms with
    probability at most ``alpha``:

    ``rmse_limit(n) = σ · sqrt(χ²_{1-α/2}(n) / n)``, ``bias_limit(n) = z_{1-α/4} · σ / sqrt(n)``.

    A fixed ``k × RMSECV`` limit ignores both the lab noise and how few pairs a window has:
    with RMSECV 1.33 mg and a lab SD of 1.5 mg the drift-free RMSE is about 2 mg, at a
    1.5 × RMSECV limit of 2 mg (issue 13). Windows overlap, so successive tests are correlated:
    the false alarms per lab value are at most ``alpha`` and come in runs.

    Parameters
    ----------
    rmsecv : float
        Calibration RMSECV of the served model, in the target's unit.
    lab_sd : float
        Standard deviation of the lab method not already contained in ``rmsecv`` (0 when the
        calibration's reference values came from the same lab method).
    alpha : float
        False-alarm probability of each test of a drift-free window.
    window : int
        Number of most recent pairs.
    min_samples : int
        No decision before this many pairs.
    """

    def __init__(
        self,
        rmsecv: float,
        lab_sd: float = 0.0,
        alpha: float = 1e-4,
        window: int = 30,
        min_samples: int = 5,
    ) -> None:
        if not rmsecv > 0:
            raise DataError(f"rmsecv must be positive, got {rmsecv}")
        if not lab_sd >= 0:
            raise DataError(f"lab_sd must be >= 0, got {lab_sd}")
        if not 0 < alpha < 1:
            raise DataError(f"alpha must be in (0, 1), got {alpha}")
        if window < 1 or not 1 <= min_samples <= window:
            raise DataError(f"need 1 <= min_samples <= window, got {min_samples}, {window}")
        self.rmsecv = rmsecv
        self.lab_sd = lab_sd
        self.alpha = alpha
        self.sigma = math.hypot(rmsecv, lab_sd)
        self.window = window
        self.min_samples = min_samples
        n = range(1, window + 1)
        self._rmse_limits = [
            self.sigma * math.sqrt(float(stats.chi2.isf(alpha / 2, k)) / k) for k in n
        ]
        z = float(stats.norm.isf(alpha / 4))
        self._bias_limits = [z * self.sigma / math.sqrt(k) for k in n]
        self.reset()

    def reset(self) -> None:
        self._residuals: deque[float] = deque(maxlen=self.window)

    def update(self, x: float) -> None:
        """Add one residual, ``prediction - lab value``; a non-finite one is ignored."""
        r = float(x)
        if math.isfinite(r):
            self._residuals.append(r)

    @property
    def n(self) -> int:
        return len(self._residuals)

    @property
    def rmse(self) -> float:
        return math.sqrt(sum(r * r for r in self._residuals) / self.n) if self.n else math.nan

    @property
    def bias(self) -> float:
        return sum(self._residuals) / self.n if self.n else math.nan

    @property
    def rmse_limit(self) -> float:
        """RMSE limit for the current number of pairs (NaN before the first)."""
        return self._rmse_limits[self.n - 1] if self.n else math.nan

    @property
    def bias_limit(self) -> float:
        """|bias| limit for the current number of pairs (NaN before the first)."""
        return self._bias_limits[self.n - 1] if self.n else math.nan

    @property
    def score(self) -> float:
        if not self.n:
            return 0.0
        return max(self.rmse / self.rmse_limit, abs(self.bias) / self.bias_limit)

    @property
    def drift_detected(self) -> bool:
        return self.n >= self.min_samples and self.score >= 1.0
