"""CSV and npz spectra files read and checked, for :func:`nirwatch.io.datasets.load_spectra`.

CSV: metadata and target columns, then one column per wavelength headed by the wavelength in nm.
npz: ``X`` (n, p), ``wavelengths`` (p,), optional ``y`` (n,) and other length-n arrays, read with
``allow_pickle=False``. Every problem is a :class:`DataError` naming the file and the place.
"""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError

_MISSING = {"", "na", "nan", "n/a", "null", "none"}


def _parse_float(text: str) -> float | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return math.nan
    try:
        return float(t)
    except ValueError:
        return None


def _wavelength_columns(header: list[str], source: str) -> tuple[int, int, np.ndarray]:
    numeric = [
        i
        for i, h in enumerate(header)
        if h.strip() and h.strip().lower() not in _MISSING and _parse_float(h) is not None
    ]
    if not numeric:
        raise DataError(
            f"{source}: no wavelength columns; expected numeric headers (nm) such as 600,602,... "
            f"after the metadata columns, got {header[:8]}"
        )
    first, last = numeric[0], numeric[-1]
    numeric_set = set(numeric)
    for i in range(first, last + 1):
        if i not in numeric_set:
            raise DataError(
                f"{source}: column {i + 1} header {header[i]!r} is not numeric but lies inside "
                f"the wavelength columns {header[first]}..{header[last]}"
            )
    wl = np.array([float(header[i]) for i in range(first, last + 1)])
    if not np.isfinite(wl).all():
        j = int(np.flatnonzero(~np.isfinite(wl))[0])
        raise DataError(
            f"{source}: wavelength header {header[first + j]!r} (column {first + j + 1}) "
            "is not a finite number"
        )
    k = _first_out_of_order(wl)
    if k is not None:
        raise DataError(
            f"{source}: wavelength headers must increase (or all decrease); column "
            f"{first + k + 2} ({header[first + k + 1]}) follows {header[first + k]}"
        )
    return first, last, wl


def _first_out_of_order(wl: np.ndarray) -> int | None:
    """Index of the first point that breaks an increasing axis (None: increasing, or wholly
    decreasing, which :func:`ascending` turns round)."""
    steps = np.diff(wl)
    if (steps < 0).all():
        return None
    bad = np.flatnonzero(steps <= 0)
    return int(bad[0]) if bad.size else None


def ascending(X: np.ndarray, wl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X and its axis with the axis increasing: a decreasing one (wavenumbers in cm-1 are often
    stored high to low) is turned round, columns with it; nirwatch works on increasing axes."""
    if wl.size > 1 and wl[0] > wl[-1]:
        return np.ascontiguousarray(X[:, ::-1]), wl[::-1].copy()
    return X, wl


def _metadata_array(values: list[str]) -> np.ndarray:
    parsed = [_parse_float(v) for v in values]
    if all(p is not None for p in parsed):
        return np.array(parsed, dtype=np.float64)
    return np.array([v.strip() for v in values], dtype=str)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[int]]:
    """X, wavelengths, metadata and the file line number of each data row."""
    source = str(path)
    try:
        return _parse_csv(path, source)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{source}: malformed CSV: {exc}") from exc


def _parse_csv(
    path: Path, source: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[int]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # BOM from spreadsheets
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{source}: empty file") from None
        first, last, wl = _wavelength_columns(header, source)
        rows: list[list[float]] = []
        meta_cols = [i for i in range(len(header)) if not first <= i <= last]
        meta_vals: list[list[str]] = [[] for _ in meta_cols]
        lines: list[int] = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise DataError(
                    f"{source}: line {line} has {len(row)} fields, the header has {len(header)}"
                )
            spectrum = []
            for i in range(first, last + 1):
                v = _parse_float(row[i])
                if v is None:
                    raise DataError(
                        f"{source}: line {line}, column {header[i]} nm: {row[i]!r} is not a number"
                    )
                spectrum.append(v)
            rows.append(spectrum)
            for k, i in enumerate(meta_cols):
                meta_vals[k].append(row[i])
            lines.append(line)
    X, wl = ascending(np.array(rows, dtype=np.float64).reshape(len(rows), wl.size), wl)
    metadata = {
        header[i].strip(): _metadata_array(v) for i, v in zip(meta_cols, meta_vals, strict=True)
    }
    return X, wl, metadata, lines


def read_npz(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[int], str | None]:
    """X, wavelengths, metadata, row numbers and the default target (``y``, renamed)."""
    source = str(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{source}: cannot read as npz: not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            npz = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise DataError(f"{source}: cannot read as npz: {exc}") from exc
        # Object arrays are pickles; nirwatch never unpickles data files.
        raise DataError(
            f"{source}: not a plain npz file (object arrays need pickle): {exc}"
        ) from exc
    except Exception as exc:
        # A damaged archive surfaces as zlib.error, EOFError, OSError, BadZipFile, SyntaxError
        # from the npy header...: all mean the same to the caller.
        raise DataError(f"{source}: cannot read as npz: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in ("X", "wavelengths") if k not in npz]
    if missing:
        raise DataError(f"{source}: missing keys {missing}; found {sorted(npz)}")
    for key in ("X", "wavelengths"):
        if npz[key].dtype.kind not in "fiu":
            raise DataError(f"{source}: {key} must be numeric, got dtype {npz[key].dtype}")
    X = np.asarray(npz["X"], dtype=np.float64)
    wl = np.asarray(npz["wavelengths"], dtype=np.float64)
    if X.ndim != 2 or wl.ndim != 1 or X.shape[1] != wl.size or wl.size == 0:
        raise DataError(
            f"{source}: X of shape (n, p) and wavelengths of shape (p,), p >= 1, expected, got "
            f"{X.shape} and {wl.shape}"
        )
    if not np.isfinite(wl).all():
        raise DataError(
            f"{source}: wavelengths contain non-finite values at points "
            f"{np.flatnonzero(~np.isfinite(wl))[:10].tolist()}"
        )
    j = _first_out_of_order(wl)
    if j is not None:
        raise DataError(
            f"{source}: wavelengths must increase (or all decrease); point {j + 1} "
            f"({wl[j + 1]:g}) follows {wl[j]:g}"
        )
    X, wl = ascending(X, wl)
    metadata = {}
    for key in npz:
        if key in ("X", "wavelengths", "target_name"):
            continue
        arr = np.asarray(npz[key])
        if arr.ndim != 1 or arr.shape[0] != X.shape[0]:
            raise DataError(
                f"{source}: key {key!r} has shape {arr.shape}, expected ({X.shape[0]},)"
            )
        metadata[key] = arr.astype(np.float64) if arr.dtype.kind in "fiub" else arr.astype(str)
    default_target = "y" if "y" in metadata else None
    if "target_name" in npz and "y" in metadata:
        default_target = str(npz["target_name"])
        metadata[default_target] = metadata.pop("y")
    return X, wl, metadata, list(range(X.shape[0])), default_target
