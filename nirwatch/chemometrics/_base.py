"""Shared input checks and state types for the chemometrics transformers."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from nirwatch.errors import DataError

#: ``to_state`` returns plain arrays plus JSON-able metadata (no pickle; see docs/CONTRACTS.md).
StateArrays = dict[str, np.ndarray]
StateMeta = dict[str, Any]


def working_dtype(X: np.ndarray) -> type[np.floating[Any]]:
    """float32 stays float32 (the wire format's type); anything else is computed in float64."""
    return np.float32 if X.dtype == np.float32 else np.float64


def check_spectra(X: Any, n_features: int | None = None, *, who: str = "spectra") -> np.ndarray:
    """Validate a batch of spectra and return it as a float array of shape (n, p).

    The messages name what was expected and what arrived, and carry scikit-learn's wording
    (``"X has 3 features, but ... is expecting 4"``, ``"Reshape your data"``...), so that
    callers and scikit-learn's estimator checks recognise the failure.

    Parameters
    ----------
    X : array-like (n, p)
        Spectra, one per row; an object array of numbers is converted.
    n_features : int, optional
        The number of points the fitted transformer expects.
    who : str
        Name used in error messages.

    Raises
    ------
    DataError
        Sparse, complex or non-numeric, not 2-D, empty, the wrong number of points or
        non-finite values.
    TypeError
        An object array holding something that is not a number.
    """
    if sp.issparse(X):
        raise DataError(
            f"{who}: sparse input is not supported; expected a dense (n_spectra, n_points) array"
        )
    arr = np.asarray(X)
    if arr.dtype.kind == "c":
        raise DataError(
            f"{who}: Complex data not supported; expected real spectra, got {arr.dtype}"
        )
    if arr.dtype.kind == "O":
        arr = arr.astype(np.float64)  # TypeError names the element that is not a number
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{who}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(working_dtype(arr), copy=False)
    if arr.ndim != 2:
        raise DataError(
            f"{who}: expected a 2-D array (n_spectra, n_points), got shape {arr.shape}. "
            "Reshape your data with X.reshape(1, -1) for a single spectrum"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{who}: expected at least one spectrum, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise DataError(
            f"{who}: expected spectra of at least one point, got 0 feature(s) "
            f"(shape={arr.shape}) while a minimum of 1 is required."
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise DataError(
            f"{who}: expected spectra of {n_features} points, got {arr.shape[1]} "
            f"(X has {arr.shape[1]} features, but {who} is expecting {n_features} features "
            "as input)"
        )
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise DataError(f"{who}: non-finite values in rows {rows[:10].tolist()} (NaN or inf)")
    return arr


def check_vector(v: Any, n: int, *, who: str) -> np.ndarray:
    """A float64 vector of length ``n`` (a reference spectrum, wavelengths...)."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{who}: expected shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{who}: contains non-finite values")
    return arr


def check_state(arrays: StateArrays, meta: StateMeta, cls: type, keys: list[str]) -> None:
    """Raise if a state written by ``to_state`` lacks arrays or names another class."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{cls.__name__} state: missing arrays {missing}, got {sorted(arrays)}")
    if meta.get("class", cls.__name__) != cls.__name__:
        raise DataError(f"state is for {meta.get('class')!r}, not {cls.__name__}")
