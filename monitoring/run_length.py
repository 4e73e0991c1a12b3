"""Run lengths of CUSUM-type tests: thresholds from a stated in-control ARL (no I/O)."""

from __future__ import annotations

import math

from scipy import optimize

from nirwatch.errors import DataError

#: Default in-control average run length of the sequential tests, in samples: one false alarm
#: per 10⁷ samples per detector and (instrument, product), about 58 days at 2 spectra/s.
DEFAULT_ARL0 = 1e7


def siegmund_arl(k: float, h: float, shift: float = 0.0) -> float:
    """Average run length of a two-sided CUSUM (Siegmund's approximation).

    One side: ``ARL = (exp(-2Δb) + 2Δb - 1) / (2Δ²)`` with ``Δ = shift - k`` (upper side;
    ``-shift - k`` for the lower one), ``b = h + 1.166``, and ``b²`` for ``Δ = 0``; the two
    sides combine as ``1/ARL = 1/ARL⁺ + 1/ARL⁻`` (Montgomery, *Introduction to Statistical
    Quality Control*, 8th ed., §9.1; Siegmund 1985). ``k``, ``h`` and ``shift`` in sigma.
    """
    b = h + 1.166

    def one(delta: float) -> float:
        if abs(delta) < 1e-9:
            return b * b
        x = -2.0 * delta * b
        # exp overflows long after any ARL of interest: cap it (the ARL is then "infinite")
        return (math.exp(min(x, 700.0)) + 2.0 * delta * b - 1.0) / (2.0 * delta * delta)

    return 1.0 / (1.0 / one(shift - k) + 1.0 / one(-shift - k))


def threshold_for_arl0(k: float, arl0: float, shift: float = 0.0) -> float:
    """Decision interval ``h`` (in sigma) of a two-sided CUSUM with allowance ``k`` whose
    ARL is ``arl0`` samples when the mean is ``shift`` sigma off target (0: in control),
    inverting :func:`siegmund_arl`."""
    if not arl0 > 1:
        raise DataError(f"arl0 must be > 1 sample, got {arl0}")
    if k < 0:
        raise DataError(f"k must be >= 0, got {k}")
    return float(optimize.brentq(lambda h: siegmund_arl(k, h, shift) - arl0, 0.0, 1e6))
