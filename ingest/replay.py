"""Replay recorded spectra datasets as if an instrument were measuring them now.

Sources:

* a CSV file with one column per wavelength (numeric headers) plus metadata columns, e.g. the
  IDRC 2002 shootout (``SampleType, weight, hardness, assay, 600, 602, ...``);
* an ``.npz`` file with ``X`` (n, p), ``wavelengths`` (p,) and any length-n metadata arrays;
* ``fermentation``: chemotools' inline fermentation spectra (1629 spectra, 1047 points, one
  every 1.25 min; the 34 nearest to an HPLC sample carry its reference values).
  Its axis (428-1833 cm⁻¹) is not evenly spaced (steps 1.2-1.5 cm⁻¹), so it is resampled by
  linear interpolation onto ``lin:428:1833:1``; no wire grid id could name it otherwise.

Files are read and validated by :mod:`nirwatch.io.datasets` (a file with missing or non-numeric
absorbances is refused with the lines named); the producer still validates every spectrum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError
from nirwatch.grid import grid_id_for, points_in_grid
from nirwatch.grid import wavelengths as grid_wavelengths
from nirwatch.io.datasets import FERMENTATION_SPECTRUM_INTERVAL_H, SpectraDataset, load_spectra
from nirwatch.io.datasets import load_fermentation as nd_load_fermentation

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


def _rows_of(metadata: dict[str, np.ndarray], n: int) -> list[dict[str, object]]:
    """Column arrays to one JSON-able dict per row (NaN becomes None)."""
    rows: list[dict[str, object]] = [{} for _ in range(n)]
    for name, col in metadata.items():
        for i, v in enumerate(col.tolist()):
            rows[i][name] = None if isinstance(v, float) and not math.isfinite(v) else v
    return rows


def from_dataset(data: SpectraDataset, name: str, axis_unit: str = "nm") -> ReplayDataset:
    """A :class:`nirwatch.io.datasets.SpectraDataset` on a wire grid, ready to replay."""
    spectra, axis, grid = on_even_grid(data.X, data.wavelengths)
    ids = [f"{name}-{i:05d}" for i in range(data.n_samples)]
    meta = _rows_of(data.metadata, data.n_samples)
    return ReplayDataset(name, spectra, axis, grid, ids, meta, axis_unit)


def load_file(path: Path | str, name: str | None = None) -> ReplayDataset:
    """A CSV (numeric wavelength headers) or npz file, validated by :mod:`nirwatch.io.datasets`."""
    path = Path(path)
    return from_dataset(load_spectra(path), name or path.stem)


def load_fermentation() -> ReplayDataset:
    """chemotools' 1629 inline fermentation spectra in time order (``time_h`` metadata).

    The 34 spectra nearest to an HPLC sample also carry its reference values (glucose, xylose,
    acetic_acid, ethanol, furfural in g/L), so ``--lab-target glucose`` publishes those.
    """
    data = nd_load_fermentation("test", labelled_only=False)
    ds = from_dataset(data, FERMENTATION, axis_unit="cm-1")
    labelled = nd_load_fermentation("test", labelled_only=True)
    idx = np.rint(labelled.metadata["time_h"] / FERMENTATION_SPECTRUM_INTERVAL_H).astype(int)
    refs = {k: v for k, v in labelled.metadata.items() if k not in ("time_h", "hplc_time_h")}
    for j, i in enumerate(idx):
        ds.metadata[i].update({k: float(v[j]) for k, v in refs.items()})
    return ds


def load_dataset(source: str) -> ReplayDataset:
    """``fermentation``, or a path to a ``.csv`` / ``.npz`` file."""
    if source == FERMENTATION:
        return load_fermentation()
    return load_file(source)


def replay_rows(
    ds: ReplayDataset,
    instrument_ids: Sequence[str],
    *,
    loop: bool = False,
) -> Iterator[tuple[str, str, np.ndarray, dict[str, object]]]:
    """Rows in file order, dealt round-robin to the instruments; forever when ``loop``.

    Yields (instrument_id, sample_id, spectrum, metadata); after the first pass sample ids
    get a ``-rN`` suffix so that each replayed measurement stays unique. A dataset whose axis
    is not in nm says so in the metadata's ``axis_unit`` (e.g. ``cm-1``).
    """
    if not instrument_ids:
        raise DataError("need at least one instrument id to replay as")
    passes = itertools.count() if loop else range(1)
    k = 0
    for n_pass in passes:
        for i in range(len(ds)):
            sid = ds.sample_ids[i] if n_pass == 0 else f"{ds.sample_ids[i]}-r{n_pass}"
            meta = dict(ds.metadata[i]) if ds.metadata else {}
            if ds.axis_unit != "nm":  # grid ids are read as nm unless the header says otherwise
                meta["axis_unit"] = ds.axis_unit
            yield instrument_ids[k % len(instrument_ids)], sid, ds.spectra[i], meta
            k += 1
