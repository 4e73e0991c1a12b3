"""Spectra tables from CSV or npz files into one dataclass, with clear errors for bad data.

CSV layout (e.g. the IDRC 2002 shootout): metadata and target columns, then one column per
wavelength whose header is the wavelength in nm (``SampleType,weight,hardness,assay,600,602,...``).
npz layout: ``X`` (n, p), ``wavelengths`` (p,), optional ``y`` (n,) and any other length-n
arrays (metadata); written without pickle, read with ``allow_pickle=False``. The files are
parsed and checked by :mod:`nirwatch.io.datasets_files`.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from nirwatch.errors import DataError
from nirwatch.grid import grid_id_for
from nirwatch.io.datasets_files import read_csv, read_npz
from nirwatch.io.jcamp import JCAMP_SUFFIXES, read_jcamp


@dataclass(frozen=True)
class SpectraDataset:
    """Spectra with their wavelength axis, metadata columns and (optionally) one target.

    Attributes
    ----------
    X : ndarray (n, p) float64
    wavelengths : ndarray (p,) float64, increasing (a file's decreasing axis is turned round,
        its columns with it), nm
    metadata : dict of str to ndarray (n,)
        Non-spectral columns: float arrays where every value is numeric, else str arrays.
    target : str or None
        Name of the target column.
    y : ndarray (n,) float64 or None
    source : str
        Where the data came from (path or dataset name).
    left_out : str
        Rows left out for having no reference value (``missing_target="drop"``), as the file
        numbers them, e.g. ``"2 rows, lines [3, 4]"``; empty when none.
    """

    X: np.ndarray
    wavelengths: np.ndarray
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    target: str | None = None
    y: np.ndarray | None = None
    source: str = ""
    left_out: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.X.shape[1])

    @property
    def grid_id(self) -> str | None:
        """``lin:first:last:step`` when the axis is evenly spaced, else None."""
        try:
            return grid_id_for(self.wavelengths)
        except DataError:
            return None

    def subset(self, mask: np.ndarray) -> SpectraDataset:
        """The rows selected by a boolean mask or an index array."""
        return SpectraDataset(
            X=self.X[mask],
            wavelengths=self.wavelengths,
            metadata={k: v[mask] for k, v in self.metadata.items()},
            target=self.target,
            y=None if self.y is None else self.y[mask],
            source=self.source,
        )


def check_same_grid(a: SpectraDataset, b: SpectraDataset) -> None:
    """Raise :class:`DataError` unless two datasets share the wavelength axis (to 1e-6 nm)."""
    wa, wb = a.wavelengths, b.wavelengths
    if wa.shape == wb.shape and np.allclose(wa, wb, rtol=0, atol=1e-6):
        return
    detail = (
        f"{a.source or 'first'}: {wa.size} points {wa[0]:g}-{wa[-1]:g} nm; "
        f"{b.source or 'second'}: {wb.size} points {wb[0]:g}-{wb[-1]:g} nm"
    )
    if wa.shape == wb.shape:
        i = int(np.flatnonzero(~np.isclose(wa, wb, rtol=0, atol=1e-6))[0])
        detail += f"; first difference at point {i}: {wa[i]:g} vs {wb[i]:g} nm"
    raise DataError(f"wavelength grids differ: {detail}")


def load_spectra(
    path: str | Path,
    *,
    target: str | None = None,
    split_column: str | None = None,
    split_values: Collection[str] | None = None,
    min_samples: int = 1,
    missing_target: Literal["error", "drop"] = "error",
) -> SpectraDataset:
    """Load spectra from a CSV, npz or JCAMP-DX file: the one reader of every command.

    Parameters
    ----------
    path : str or Path
        ``.csv`` (numeric wavelength headers), ``.npz`` (keys X, wavelengths, y, ...) or
        JCAMP-DX (``.jdx``, ``.dx``, ``.jcamp``; spectra without targets).
    target : str, optional
        Target column (CSV) or key (npz). For npz files ``y`` is the target when it is present
        and ``target`` is not given or is ``"y"`` (named by an optional ``target_name`` key).
    split_column, split_values : optional
        Keep only rows whose ``split_column`` is one of ``split_values``, e.g.
        ``"SampleType", {"Train", "Validate"}``.
    min_samples : int, default 1
        Fewest rows (after the split) accepted.
    missing_target : {"error", "drop"}
        Rows whose target cell is empty or not finite: refused (naming them), or left out and
        named in :attr:`SpectraDataset.left_out` (lab values often exist for only some of the
        spectra, or for some targets of a multi-target table).

    Raises
    ------
    DataError
        Non-numeric or non-monotonic wavelength headers, NaN in spectra or target (naming the
        rows), missing target or split column (listing the available ones), a constant target,
        fewer than ``min_samples`` rows.
    """
    table = _read_table_file(Path(path), target)
    source = table.source
    where = ""
    if split_column is not None:
        if not split_values:
            raise DataError("split_values must name at least one value of the split column")
        table = table.rows(_select(table.metadata, split_column, split_values, source))
        where = f" with {split_column} in {sorted(map(str, split_values))}"
    if table.X.shape[0] < min_samples:
        raise DataError(
            f"{source}: {table.X.shape[0]} spectra{where}; at least {min_samples} are needed"
        )
    bad = np.flatnonzero(~np.isfinite(table.X).all(axis=1))
    if bad.size:
        raise DataError(
            f"{source}: missing or non-finite absorbances in {bad.size} spectra, {table.where(bad)}"
        )
    if missing_target not in ("error", "drop"):
        raise DataError(f"missing_target must be 'error' or 'drop', got {missing_target!r}")
    left_out = ""
    if missing_target == "drop" and table.target in table.metadata:
        y_raw = table.metadata[table.target]
        if y_raw.dtype.kind == "f" and not np.isfinite(y_raw).all():
            bad = np.flatnonzero(~np.isfinite(y_raw))
            left_out = f"{bad.size} rows, {table.where(bad)}"
            table = table.rows(np.isfinite(y_raw))
            if table.X.shape[0] < min_samples:
                raise DataError(
                    f"{source}: {table.X.shape[0]} spectra with a {table.target!r} value{where}; "
                    f"at least {min_samples} are needed"
                )
    y = None if table.target is None else _target(table, where)
    return SpectraDataset(
        X=table.X,
        wavelengths=table.wavelengths,
        metadata=table.metadata,
        target=table.target,
        y=y,
        source=source,
        left_out=left_out,
    )


@dataclass(frozen=True)
class _Table:
    """A file as read, before the checks: rows are numbered as the file's format counts them."""

    source: str
    X: np.ndarray
    wavelengths: np.ndarray
    metadata: dict[str, np.ndarray]
    numbers: np.ndarray
    row_name: str
    target: str | None

    def rows(self, keep: np.ndarray) -> _Table:
        metadata = {k: v[keep] for k, v in self.metadata.items()}
        return replace(self, X=self.X[keep], metadata=metadata, numbers=self.numbers[keep])

    def where(self, bad: np.ndarray) -> str:
        """The first 20 of the ``bad`` rows as the file numbers them, e.g. ``lines [3, 7]``."""
        return f"{self.row_name} {self.numbers[bad][:20].tolist()}"


def _read_table_file(path: Path, target: str | None) -> _Table:
    source = str(path)
    if not path.exists():
        raise DataError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        X, wl, metadata, lines = read_csv(path)
        return _Table(source, X, wl, metadata, np.asarray(lines), "lines", target)
    if suffix == ".npz":
        X, wl, metadata, rows, default_target = read_npz(path)
        if target is None or (target == "y" and default_target is not None):
            target = default_target  # "y" still names the target when target_name renamed it
        return _Table(source, X, wl, metadata, np.asarray(rows), "rows", target)
    if suffix in JCAMP_SUFFIXES:
        X, wl, metadata, _ = read_jcamp(path)  # spectra only: targets come from elsewhere
        numbers = np.arange(1, X.shape[0] + 1)
        return _Table(source, X, wl, metadata, numbers, "spectra", target)
    raise DataError(f"{source}: expected a .csv, .npz or JCAMP-DX file, got {suffix!r}")


def _select(
    metadata: dict[str, np.ndarray], split_column: str, split_values: Collection[str], source: str
) -> np.ndarray:
    if split_column not in metadata:
        raise DataError(
            f"{source}: no split column {split_column!r}; available columns: {sorted(metadata)}"
        )
    col = metadata[split_column].astype(str)
    wanted = {str(v) for v in split_values}
    present = set(np.unique(col).tolist())
    if not wanted & present:
        raise DataError(
            f"{source}: {split_column} has none of {sorted(wanted)}; its values: {sorted(present)}"
        )
    return np.isin(col, sorted(wanted))


def _target(table: _Table, where: str) -> np.ndarray:
    """The target column, checked: present, numeric, finite, not constant."""
    source, target, metadata = table.source, table.target, table.metadata
    if target not in metadata:
        raise DataError(
            f"{source}: no target column {target!r}; available columns: {sorted(metadata)}"
        )
    y = metadata[target]
    if y.dtype.kind != "f":
        raise DataError(f"{source}: target {target!r} is not numeric (e.g. {y[0]!r})")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(
            f"{source}: target {target!r} missing in {bad.size} rows, {table.where(bad)}"
        )
    if y.size and np.ptp(y) == 0:
        raise DataError(
            f"{source}: target {target!r} is constant ({y[0]:g}) over {y.size} rows{where}; "
            "nothing to calibrate"
        )
    return y


#: The fermentation test spectra carry no time stamps; 1629 spectra over the 33.9 h spanned by
#: the HPLC samples is one spectrum every 1.25 min from t = 0 (as in chemotools' examples).
FERMENTATION_SPECTRUM_INTERVAL_H = 1.25 / 60


def load_fermentation(
    part: Literal["train", "test"] = "train",
    target: str = "glucose",
    *,
    labelled_only: bool = True,
) -> SpectraDataset:
    """chemotools' lignocellulose fermentation data set (Cabaneros Lopez et al.) as a dataset.

    Read straight from the CSV files shipped in the chemotools package (its own loaders need
    pandas, which nirwatch does not depend on).

    Parameters
    ----------
    part : {"train", "test"}
        ``"train"``: 21 off-line spectra of semi-synthetic samples with glucose (g/L).
        ``"test"``: 1629 on-line spectra of a real fermentation and 34 HPLC samples with
        glucose, xylose, acetic_acid, ethanol, furfural.
    target : str, default "glucose"
    labelled_only : bool, default True
        For ``"test"``: keep only the spectrum nearest in time to each HPLC sample (34 rows,
        with the target); False returns all 1629 spectra without a target.

    Metadata: ``time_h`` for the test part (see :data:`FERMENTATION_SPECTRUM_INTERVAL_H`).
    """
    data = resources.files("chemotools.datasets") / "data"
    if part == "train":
        with resources.as_file(data / "train_spectra.csv") as spectra_path:
            spectra = load_spectra(spectra_path)
        with resources.as_file(data / "train_hplc.csv") as hplc_path:
            hplc = _read_table(hplc_path)
        return _attach_target(spectra, hplc, target, "chemotools fermentation (train)")
    if part != "test":
        raise DataError(f"part must be 'train' or 'test', got {part!r}")
    with resources.as_file(data / "fermentation_spectra.csv") as spectra_path:
        spectra = load_spectra(spectra_path)
    time_h = np.arange(spectra.n_samples) * FERMENTATION_SPECTRUM_INTERVAL_H
    spectra = SpectraDataset(
        X=spectra.X,
        wavelengths=spectra.wavelengths,
        metadata={"time_h": time_h},
        source="chemotools fermentation (test)",
    )
    if not labelled_only:
        return spectra
    with resources.as_file(data / "fermentation_hplc.csv") as hplc_path:
        hplc = _read_table(hplc_path)
    idx = np.clip(
        np.rint(hplc["time"] / FERMENTATION_SPECTRUM_INTERVAL_H).astype(int),
        0,
        spectra.n_samples - 1,
    )
    labelled = spectra.subset(idx)
    labelled.metadata["hplc_time_h"] = hplc["time"]
    return _attach_target(labelled, hplc, target, labelled.source)


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """A small all-numeric CSV table as columns."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    header, body = rows[0], rows[1:]
    return {
        h.strip(): np.array([float(r[i]) for r in body], dtype=np.float64)
        for i, h in enumerate(header)
    }


def _attach_target(
    ds: SpectraDataset, table: dict[str, np.ndarray], target: str, source: str
) -> SpectraDataset:
    refs = {k: v for k, v in table.items() if k != "time"}
    if target not in refs:
        raise DataError(f"{source}: no target {target!r}; available: {sorted(refs)}")
    y = refs[target]
    if y.shape[0] != ds.n_samples:
        raise DataError(f"{source}: {y.shape[0]} reference values for {ds.n_samples} spectra")
    metadata = dict(ds.metadata)
    metadata.update(refs)
    return SpectraDataset(
        X=ds.X, wavelengths=ds.wavelengths, metadata=metadata, target=target, y=y, source=source
    )
