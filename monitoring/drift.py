"""Streaming drift detectors: small, deterministic, no I/O (River's style).

Every detector is a :class:`DriftDetector`: ``update(x)`` with one observation, a read-only
``drift_detected``, a ``score`` (the statistic divided by its threshold: ``score >= 1`` means
drift) and ``reset()``. None draws random numbers, so the same input sequence always gives the
same result (a detector that did would take a ``seed``).

Sequential change-point tests (:class:`PageHinkley`, :class:`CUSUM`) latch: once they signal,
``drift_detected`` stays true until :meth:`reset` (the monitor resets them when a new model
is served). Window tests (:class:`ExceedanceRateDetector`, and in their own modules
:class:`~monitoring.mean_shift.MeanShiftDetector` and
:class:`~monitoring.lab_reference.LabReferenceTracker`) describe the current window and clear
when it is clean again.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, TypeVar

import numpy as np
from scipy import stats

from monitoring.run_length import DEFAULT_ARL0, siegmund_arl, threshold_for_arl0
from nirwatch.errors import DataError

__all__ = [
    "CUSUM",
    "DEFAULT_ARL0",
    "DriftDetector",
    "ExceedanceRateDetector",
    "PageHinkley",
    "siegmund_arl",
    "threshold_for_arl0",
]

#: A warm-up's sigma (and CUSUM's target) are estimates; the thresholds are set so that the
#: ARL0 holds for parameters within this confidence bound of the estimates (see _Standardised).
WARMUP_CONFIDENCE = 0.95

#: What one detector observes per update: a flag, a number or a small vector.
Obs = TypeVar("Obs", contravariant=True)


class DriftDetector(ABC, Generic[Obs]):
    """Base of every drift detector (River's ``DriftDetector``: ``update`` with one argument).

    ``update(x)`` takes one observation of the monitored stream (a limit exceedance flag, a
    predicted content, a residual, a vector of scores...) and returns nothing; the state is
    read through the read-only properties. No I/O: the caller exports the state.
    """

    @abstractmethod
    def update(self, x: Obs) -> None:
        """Add one observation."""

    @property
    @abstractmethod
    def drift_detected(self) -> bool:
        """True while the detector signals drift."""

    @property
    @abstractmethod
    def score(self) -> float:
        """The test statistic over its threshold: drift at ``score >= 1``."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every observation (a new model serves)."""


class ExceedanceRateDetector(DriftDetector[bool]):
    """Rate of T²/Q limit exceedances in a sliding window against the rate the limits imply.

    Under no drift the number of exceedances ``k`` among the last ``n`` spectra is
    Binomial(n, ``expected_rate``) (a 99 % limit is exceeded 1 % of the time). Drift is a
    one-sided binomial test rejecting at level ``alpha``: ``k >= k_crit(n)``, with ``k_crit``
    precomputed for every ``n`` so an update costs O(1).

    Parameters
    ----------
    window : int
        Number of most recent spectra considered.
    expected_rate : float
        Exceedance probability under the calibration (0.01 for one 99 % limit, about 0.02
        for "T² or Q" at 99 %).
    alpha : float
        False-alarm probability of each test.
    min_samples : int
        No decision before this many spectra.
    """

    def __init__(
        self,
        window: int = 500,
        expected_rate: float = 0.02,
        alpha: float = 1e-6,
        min_samples: int = 50,
    ) -> None:
        if not 0.0 < expected_rate < 1.0:
            raise DataError(f"expected_rate must be in (0, 1), got {expected_rate}")
        if window < 1 or not 1 <= min_samples <= window:
            raise DataError(f"need 1 <= min_samples <= window, got {min_samples}, {window}")
        self.window = window
        self.expected_rate = expected_rate
        self.alpha = alpha
        self.min_samples = min_samples
        n = np.arange(1, window + 1)
        # isf gives the largest k with P(X > k) > alpha ... +1: smallest k with P(X >= k) <= alpha
        self._k_crit = stats.binom.isf(alpha, n, expected_rate).astype(int) + 1
        self.reset()

    def reset(self) -> None:
        self._flags: deque[bool] = deque(maxlen=self.window)
        self._count = 0

    def update(self, x: bool) -> None:
        """Add one spectrum: whether it exceeded the T² or Q limit."""
        if len(self._flags) == self.window:
            self._count -= self._flags[0]
        flag = bool(x)
        self._flags.append(flag)
        self._count += flag

    @property
    def n(self) -> int:
        return len(self._flags)

    @property
    def rate(self) -> float:
        """Observed exceedance rate in the window (NaN before the first update)."""
        return self._count / self.n if self.n else math.nan

    @property
    def score(self) -> float:
        if not self.n:
            return 0.0
        return self._count / float(self._k_crit[self.n - 1])

    @property
    def drift_detected(self) -> bool:
        return self.n >= self.min_samples and self.score >= 1.0


class _Standardised(DriftDetector[float]):
    """Warm-up estimate of mean and standard deviation unless both are given; a latched alarm.

    A sigma estimated from ``n`` warm-up samples is taken at its upper
    :data:`WARMUP_CONFIDENCE` bound, ``s · sqrt((n - 1) / χ²_{0.05}(n - 1))`` (5.5 % above ``s``
    for n = 500): an underestimated sigma inflates every z and shortens the in-control run
    length far below the ARL0 the threshold was set for (4 % too small a sigma cuts an ARL0 of
    10⁷ to about 3·10⁶ for Page–Hinkley's λ). Montgomery discusses this effect of estimated
    parameters on CUSUM run lengths (§9.1).
    """

    def __init__(self, warmup: int, mean: float | None, sigma: float | None) -> None:
        if sigma is not None and sigma <= 0:
            raise DataError(f"sigma must be positive, got {sigma}")
        self.warmup = warmup
        self._given = (mean, sigma)
        self._reset_standardisation()

    def _reset_standardisation(self) -> None:
        self.mean, self.sigma = self._given
        self._warm: list[float] = []
        self._latched = False

    def _z(self, x: float) -> float | None:
        """x in units of sigma from the reference mean, None while warming up."""
        if self.mean is None or self.sigma is None:
            self._warm.append(float(x))
            if len(self._warm) < self.warmup:
                return None
            arr = np.asarray(self._warm)
            if self.mean is None:
                self.mean = float(arr.mean())
            if self.sigma is None:
                n = arr.size
                upper = math.sqrt((n - 1) / stats.chi2.ppf(1 - WARMUP_CONFIDENCE, n - 1))
                # a constant warm-up must not give sigma 0 (every later change = infinite z)
                self.sigma = max(float(arr.std(ddof=1)) * upper, 1e-12 * max(1.0, abs(self.mean)))
            self._warm = []
            self._warmed_up(arr.size)
            return None
        return (float(x) - self.mean) / self.sigma

    def _warmed_up(self, n: int) -> None:
        """Called once the warm-up's ``n`` samples gave the estimates (for subclasses)."""

    @property
    def drift_detected(self) -> bool:
        """True from the first signal until ``reset()``."""
        return self._latched


class PageHinkley(_Standardised):
    """Two-sided Page–Hinkley test for a change in the mean (Page 1954; Hinkley 1971).

    ``m_t = Σ (z_i - z̄_i - delta)`` with ``z̄_i`` the running mean; drift when ``m_t`` rises
    more than ``threshold`` above its minimum (or the mirrored statistic for decreases).
    ``delta`` and ``threshold`` are in units of ``sigma`` so one setting suits any signal.

    The threshold is set from a false-alarm rate: ``m_t - min m`` is a CUSUM with allowance
    ``delta`` around the running mean, so λ is the decision interval whose in-control average
    run length is ``arl0`` samples (:func:`threshold_for_arl0`, Siegmund's approximation).
    With ``delta = 0.25`` and ARL0 = 10⁷, λ ≈ 28 σ.

    Parameters
    ----------
    delta : float
        Tolerated change of the mean (magnitude, in sigma).
    threshold : float, optional
        Detection threshold λ (in sigma); default: from ``arl0``.
    warmup : int
        Samples used to estimate sigma (and the mean) when not given.
    sigma : float, optional
        Standard deviation of the signal without drift.
    arl0 : float
        In-control average run length (samples per false alarm) that sets λ.
    """

    def __init__(
        self,
        delta: float = 0.25,
        threshold: float | None = None,
        warmup: int = 500,
        sigma: float | None = None,
        arl0: float = DEFAULT_ARL0,
    ) -> None:
        self.delta = delta
        self.arl0 = arl0
        self.threshold = threshold_for_arl0(delta, arl0) if threshold is None else threshold
        super().__init__(warmup, None, sigma)
        self.reset()

    def reset(self) -> None:
        self._reset_standardisation()
        self._n = 0
        self._running_mean = 0.0
        self._up = self._up_min = 0.0
        self._down = self._down_max = 0.0
        self.statistic = 0.0

    def update(self, x: float) -> None:
        z = self._z(x)
        if z is None or not math.isfinite(z):
            return
        self._n += 1
        self._running_mean += (z - self._running_mean) / self._n
        self._up += z - self._running_mean - self.delta
        self._up_min = min(self._up_min, self._up)
        self._down += z - self._running_mean + self.delta
        self._down_max = max(self._down_max, self._down)
        self.statistic = max(self._up - self._up_min, self._down_max - self._down)
        if self.statistic >= self.threshold:
            self._latched = True

    @property
    def score(self) -> float:
        return self.statistic / self.threshold


class CUSUM(_Standardised):
    """Two-sided tabular CUSUM (Page 1954) for a shift of the mean from a target.

    ``C⁺_t = max(0, C⁺_{t-1} + z_t - k)``, ``C⁻_t = max(0, C⁻_{t-1} - z_t - k)``; drift when
    either exceeds ``h`` (both in sigma). ``h`` is set from a false-alarm rate: the decision
    interval whose two-sided in-control average run length is ``arl0`` samples
    (:func:`threshold_for_arl0`; Page 1954, Montgomery §9.1). With k = 0.5 and ARL0 = 10⁷,
    h ≈ 15.0 σ, and a 2σ shift is found after about h / (2 - k) ≈ 10 samples. A target
    learnt from a 500-sample warm-up may be off by 0.09 σ (95 %): h is then raised to the
    value whose ARL is ``arl0`` at that offset (≈ 17.1 σ); sigma as in :class:`_Standardised`.

    Parameters
    ----------
    k : float
        Reference value (half the shift to detect, in sigma).
    h : float, optional
        Decision interval (in sigma); default: from ``arl0``.
    warmup : int
        Samples used to estimate target and sigma when not given.
    target, sigma : float, optional
        In-control mean and standard deviation.
    arl0 : float
        In-control average run length (samples per false alarm) that sets ``h``.
    """

    def __init__(
        self,
        k: float = 0.5,
        h: float | None = None,
        warmup: int = 500,
        target: float | None = None,
        sigma: float | None = None,
        arl0: float = DEFAULT_ARL0,
    ) -> None:
        self.k = k
        self.arl0 = arl0
        self._h_given = h
        self.h = threshold_for_arl0(k, arl0) if h is None else h
        super().__init__(warmup, target, sigma)
        self.reset()

    def reset(self) -> None:
        self._reset_standardisation()
        self.upper = 0.0
        self.lower = 0.0
        if self._h_given is None:
            self.h = threshold_for_arl0(self.k, self.arl0)

    def _warmed_up(self, n: int) -> None:
        # The target is the warm-up mean, off by up to z·sigma/sqrt(n) (95 %): h is the one
        # whose ARL is arl0 even at that offset (unlike Page-Hinkley's running mean, this
        # target error never shrinks). Capped at k/2: beyond it (a warm-up of a few dozen
        # samples) no h of practical size reaches the ARL0; use a longer warm-up instead.
        if self._h_given is None and self._given[0] is None:
            offset = float(stats.norm.isf((1 - WARMUP_CONFIDENCE) / 2)) / math.sqrt(n)
            self.h = threshold_for_arl0(self.k, self.arl0, shift=min(offset, self.k / 2))

    def update(self, x: float) -> None:
        z = self._z(x)
        if z is None or not math.isfinite(z):
            return
        self.upper = max(0.0, self.upper + z - self.k)
        self.lower = max(0.0, self.lower - z - self.k)
        if max(self.upper, self.lower) >= self.h:
            self._latched = True

    @property
    def score(self) -> float:
        return max(self.upper, self.lower) / self.h
