"""Wavelength grid ids.

A grid id names the wavelength axis of a spectrum so that a message need not carry it.
Supported form: ``lin:<first>:<last>:<step>`` in nm, e.g. ``lin:600:1898:2`` (650 points,
the IDRC 2002 shootout grid).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from nirwatch.errors import DataError


@functools.lru_cache(maxsize=256)
def _parse(grid_id: str) -> tuple[float, float, float] | None:
    parts = grid_id.split(":")
    if len(parts) != 4 or parts[0] != "lin":
        return None
    try:
        first, last, step = (float(p) for p in parts[1:])
    except ValueError:
        return None
    if not (np.isfinite([first, last, step]).all() and step > 0 and last >= first):
        return None
    # Bound the point count: a hostile id like lin:0:1e308:1e-308 must not overflow.
    if not (last - first) / step < 1e9:
        return None
    return first, last, step


def points_in_grid(grid_id: str) -> int | None:
    """Number of points of a grid, or ``None`` if the id is not understood."""
    parsed = _parse(grid_id)
    if parsed is None:
        return None
    first, last, step = parsed
    return int(round((last - first) / step)) + 1


def wavelengths(grid_id: str) -> np.ndarray:
    """The wavelengths in nm of a grid id, shape (n_points,)."""
    parsed = _parse(grid_id)
    if parsed is None:
        raise DataError(f"unknown wavelength grid id {grid_id!r}: expected 'lin:first:last:step'")
    first, last, step = parsed
    return first + step * np.arange(int(round((last - first) / step)) + 1)


def grid_id_for(wl: np.ndarray) -> str:
    """The grid id of an evenly spaced wavelength axis (raises if not evenly spaced)."""
    wl = np.asarray(wl, dtype=float)
    if wl.ndim != 1 or wl.size < 2:
        raise DataError(
            f"expected a 1-D wavelength axis of at least 2 points, got shape {wl.shape}"
        )
    steps = np.diff(wl)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) or steps[0] <= 0:
        raise DataError("wavelength axis is not evenly spaced and increasing; no lin: grid id")

    def fmt(v: float) -> str:
        return f"{v:g}"

    return f"lin:{fmt(wl[0])}:{fmt(wl[-1])}:{fmt(steps[0])}"


def axis_id(wl: np.ndarray) -> str:
    """The id a bundle stores for any wavelength axis: its ``lin:`` grid id when evenly
    spaced, else ``custom:<points>:<first 12 hex of the SHA-256 of the float64 values>``."""
    wl = np.asarray(wl, dtype=float)
    try:
        return grid_id_for(wl)
    except DataError:
        digest = hashlib.sha256(wl.astype("<f8").tobytes()).hexdigest()
        return f"custom:{wl.size}:{digest[:12]}"
