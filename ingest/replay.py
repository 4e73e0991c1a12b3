"""Replay recorded spectra datasets as if an instrument were measuring them now.

Sources:

* a CSV file with one column per wavelength (numeric headers) plus metadata columns, e.g. the
  IDRC 2002 shootout (``SampleType, weight, hardness, assay, 600, 602, ...``);
* an ``.npz`` file with ``X`` (n, p) and ``wavelengths`` (p,) (optional ``sample_ids``);
* ``fermentation``: chemotools' inline fermentation spectra (1629 spectra, 1047 points).
  Its axis (428-1833 cm⁻¹) is not evenly spaced (steps 1.2-1.5 cm⁻¹), so it is resampled by
  linear interpolation onto ``lin:428:1833:1``; no wire grid id could name it otherwise.

Cells that are empty or not numbers become NaN and the producer dead-letters those rows
(reason ``non_finite``): bad data is shown at the edge, not silently dropped.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError
from nirwatch.grid import grid_id_for, points_in_grid
from nirwatch.grid import wavelengths as grid_wavelengths

FERMENTATION = "fermentation"


@dataclass(slots=True)
class ReplayDataset:
    """Spectra to replay, on a named grid.

    Attributes
    ----------
    spectra : ndarray (n, n_points) float32
    wavelengths : ndarray (n_points,)  the grid's axis (nm, or cm⁻¹ where ``axis_unit`` says)
    grid : str                          wire grid id
    sample_ids : list of str, length n
    metadata : list of dict, length n   non-spectral columns of each row (numbers where numeric)
    """

    name: str
    spectra: np.ndarray
    wavelengths: np.ndarray
    grid: str
    sample_ids: list[str]
    metadata: list[dict[str, object]] = field(default_factory=list)
    axis_unit: str = "nm"

    def __len__(self) -> int:
        return int(self.spectra.shape[0])


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def on_even_grid(spectra: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Spectra on an evenly spaced axis and its grid id, resampling when ``axis`` is uneven.

    Returns
    -------
    spectra : ndarray (n, m) float32
    axis : ndarray (m,)
    grid : str
    """
    try:
        grid = grid_id_for(axis)
        if points_in_grid(grid) == axis.size:
            return spectra.astype(np.float32), axis, grid
    except DataError:
        pass
    if not np.all(np.diff(axis) > 0):
        raise DataError("wavelength axis must be strictly increasing to resample it")
    step = max(1.0, float(np.round(np.median(np.diff(axis)))))
    first = float(np.ceil(axis[0]))
    last = first + step * np.floor((axis[-1] - first) / step)
    grid = f"lin:{first:g}:{last:g}:{step:g}"
    new_axis = grid_wavelengths(grid)
    out = np.empty((spectra.shape[0], new_axis.size), dtype=np.float32)
    for i, row in enumerate(spectra):
        out[i] = np.interp(new_axis, axis, row)
    return out, new_axis, grid


def load_csv(path: Path | str, name: str | None = None) -> ReplayDataset:
    """Read a spectra CSV: numeric headers are wavelengths, the other columns metadata."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            head = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header row") from None
        spec_cols = [i for i, h in enumerate(head) if _is_number(h)]
        meta_cols = [i for i, h in enumerate(head) if not _is_number(h)]
        if len(spec_cols) < 2:
            raise DataError(
                f"{path}: expected numeric column headers (wavelengths), found {len(spec_cols)}"
            )
        rows: list[list[float]] = []
        meta: list[dict[str, object]] = []
        for line_no, rec in enumerate(reader, start=2):
            if not rec:
                continue
            if len(rec) != len(head):
                raise DataError(
                    f"{path}:{line_no}: expected {len(head)} cells as in the header, got {len(rec)}"
                )
            rows.append([_float(rec[i]) for i in spec_cols])
            meta.append(
                {
                    head[i]: (float(rec[i]) if _is_number(rec[i]) else rec[i] or None)
                    for i in meta_cols
                }
            )
    if not rows:
        raise DataError(f"{path}: no data rows")
    axis = np.array([float(head[i]) for i in spec_cols])
    spectra, axis, grid = on_even_grid(np.array(rows, dtype=np.float64), axis)
    stem = name or path.stem
    ids = [f"{stem}-{i:05d}" for i in range(len(rows))]
    return ReplayDataset(stem, spectra, axis, grid, ids, meta)


def load_npz(path: Path | str, name: str | None = None) -> ReplayDataset:
    """Read ``X`` (n, p) and ``wavelengths`` (p,) from an npz file (no pickled objects)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("X", "wavelengths") if k not in z]
        if missing:
            raise DataError(f"{path}: npz lacks {', '.join(missing)} (has {sorted(z.files)})")
        X, axis = np.asarray(z["X"], dtype=np.float64), np.asarray(z["wavelengths"], float)
        ids = [str(s) for s in z["sample_ids"]] if "sample_ids" in z else None
    if X.ndim != 2 or X.shape[1] != axis.size:
        raise DataError(
            f"{path}: expected X of shape (n, {axis.size}) to match wavelengths, got {X.shape}"
        )
    spectra, axis, grid = on_even_grid(X, axis)
    stem = name or path.stem
    ids = ids or [f"{stem}-{i:05d}" for i in range(X.shape[0])]
    return ReplayDataset(stem, spectra, axis, grid, ids, [{} for _ in ids])


def load_fermentation() -> ReplayDataset:
    """chemotools' inline fermentation test spectra (read directly: pandas is not needed)."""
    from chemotools.datasets import _base

    path = Path(_base.PACKAGE_DIRECTORY) / "data" / "fermentation_spectra.csv"
    ds = load_csv(path, name=FERMENTATION)
    ds.axis_unit = "cm-1"
    return ds


def load_dataset(source: str) -> ReplayDataset:
    """``fermentation``, or a path to a ``.csv`` / ``.npz`` file."""
    if source == FERMENTATION:
        return load_fermentation()
    path = Path(source)
    if not path.exists():
        raise DataError(f"no such dataset file: {path} (or use '{FERMENTATION}')")
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    return load_csv(path)


def replay_rows(
    ds: ReplayDataset,
    instrument_ids: Sequence[str],
    *,
    loop: bool = False,
) -> Iterator[tuple[str, str, np.ndarray, dict[str, object]]]:
    """Rows in file order, dealt round-robin to the instruments; forever when ``loop``.

    Yields (instrument_id, sample_id, spectrum, metadata); after the first pass sample ids
    get a ``-rN`` suffix so that each replayed measurement stays unique.
    """
    if not instrument_ids:
        raise DataError("need at least one instrument id to replay as")
    passes = itertools.count() if loop else range(1)
    k = 0
    for n_pass in passes:
        for i in range(len(ds)):
            sid = ds.sample_ids[i] if n_pass == 0 else f"{ds.sample_ids[i]}-r{n_pass}"
            meta = ds.metadata[i] if ds.metadata else {}
            yield instrument_ids[k % len(instrument_ids)], sid, ds.spectra[i], meta
            k += 1
