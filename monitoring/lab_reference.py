"""Lab reference tracking: predictions against the lab values that arrive later.

A drift detector like those in :mod:`monitoring.drift` (``update``, read-only
``drift_detected``, ``score``, ``reset``; no I/O, no random numbers), on the one signal that
measures accuracy itself rather than a proxy for it.
"""

from __future__ import annotations

import math
from collections import deque

from nirwatch.errors import DataError

__all__ = ["LabReferenceTracker"]


class LabReferenceTracker:
    """Rolling RMSE and bias of predictions against later lab reference values.

    Drift when the rolling RMSE exceeds ``k × rmsecv`` (the calibration's cross-validated
    error) or the absolute bias exceeds ``bias_limit`` (default: ``rmsecv``).

    Parameters
    ----------
    rmsecv : float
        Calibration RMSECV of the served model, in the target's unit.
    k : float
        Allowed RMSE inflation.
    bias_limit : float, optional
        Allowed |mean(prediction - lab)|.
    window : int
        Number of most recent pairs.
    min_samples : int
        No decision before this many pairs.
    """

    def __init__(
        self,
        rmsecv: float,
        k: float = 1.5,
        bias_limit: float | None = None,
        window: int = 30,
        min_samples: int = 5,
    ) -> None:
        if not rmsecv > 0:
            raise DataError(f"rmsecv must be positive, got {rmsecv}")
        self.rmsecv = rmsecv
        self.k = k
        self.bias_limit = rmsecv if bias_limit is None else bias_limit
        self.window = window
        self.min_samples = min_samples
        self.reset()

    def reset(self) -> None:
        self._residuals: deque[float] = deque(maxlen=self.window)

    def update(self, prediction: float, reference: float) -> None:
        """Add one (prediction, lab value) pair; non-finite pairs are ignored."""
        r = float(prediction) - float(reference)
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
    def score(self) -> float:
        if not self.n:
            return 0.0
        return max(self.rmse / (self.k * self.rmsecv), abs(self.bias) / self.bias_limit)

    @property
    def drift_detected(self) -> bool:
        return self.n >= self.min_samples and self.score >= 1.0
