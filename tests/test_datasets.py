"""Spectra loaders: the shootout CSV, npz files, chemotools' fermentation set, and every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nirwatch.errors import DataError
from nirwatch.io.datasets import SpectraDataset, check_same_grid, load_fermentation, load_spectra

HEADER = "SampleType,assay,600,602,604,606"


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text.strip() + "\n")
    return path


def _rows(n: int = 4, assay: list[float] | None = None) -> str:
    rng = np.random.default_rng(0)
    assay = assay or [float(190 + i) for i in range(n)]
    lines = [HEADER]
    for i in range(n):
        kind = "Test" if i % 2 else "Train"
        spec = ",".join(f"{v:.4f}" for v in rng.uniform(1, 3, 4))
        lines.append(f"{kind},{assay[i]},{spec}")
    return "\n".join(lines)


def test_shootout_calibration_split(shootout_csv: Path) -> None:
    ds = load_spectra(
        shootout_csv, target="assay", split_column="SampleType", split_values={"Train", "Validate"}
    )
    assert ds.X.shape == (195, 650) and ds.y is not None and ds.y.shape == (195,)
    assert ds.grid_id == "lin:600:1898:2" and ds.wavelengths[1] == 602
    assert set(ds.metadata) == {"SampleType", "weight", "hardness", "assay"}
    assert set(ds.metadata["SampleType"]) == {"Train", "Validate"}
    assert ds.metadata["weight"].dtype == np.float64
    everything = load_spectra(shootout_csv)
    assert everything.X.shape == (655, 650) and everything.y is None
    test = everything.subset(everything.metadata["SampleType"] == "Test")
    assert test.n_samples == 460
    check_same_grid(ds, test)


def test_nan_rows_are_named_by_line(tmp_path: Path) -> None:
    text = _rows(5).splitlines()
    text[2] = "Test,191.0,1.0,,1.2,1.3"  # empty cell: line 3
    text[4] = "Test,193.0,1.0,nan,1.2,1.3"  # line 5
    with pytest.raises(DataError, match=r"non-finite absorbances in 2 spectra, lines \[3, 5\]"):
        load_spectra(_csv(tmp_path, "\n".join(text)))


def test_non_numeric_cell_and_ragged_row(tmp_path: Path) -> None:
    text = _rows(3).splitlines()
    text[2] = "Test,191.0,1.0,abc,1.2,1.3"
    with pytest.raises(DataError, match=r"line 3, column 602 nm: 'abc' is not a number"):
        load_spectra(_csv(tmp_path, "\n".join(text)))
    text[2] = "Test,191.0,1.0,1.2,1.3"
    with pytest.raises(DataError, match="line 3 has 5 fields, the header has 6"):
        load_spectra(_csv(tmp_path, "\n".join(text)))


def test_wavelength_headers_must_be_numeric_and_increasing(tmp_path: Path) -> None:
    body = "\n".join(_rows(3).splitlines()[1:])
    with pytest.raises(DataError, match=r"column 4 header 'x602' is not numeric"):
        load_spectra(_csv(tmp_path, "SampleType,assay,600,x602,604,606\n" + body))
    with pytest.raises(
        DataError, match=r"must increase \(or all decrease\); column 5 \(602\) follows 604"
    ):
        load_spectra(_csv(tmp_path, "SampleType,assay,600,604,602,606\n" + body))
    with pytest.raises(DataError, match="no wavelength columns"):
        load_spectra(_csv(tmp_path, "a,b,c,d,e,f\n" + body))


def test_target_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(4))
    with pytest.raises(
        DataError, match=r"no target column 'potency'; available columns: \['SampleType', 'assay'\]"
    ):
        load_spectra(path, target="potency")
    with pytest.raises(DataError, match="target 'SampleType' is not numeric"):
        load_spectra(path, target="SampleType")
    flat = _csv(tmp_path, _rows(4, [200.0] * 4), "flat.csv")
    with pytest.raises(DataError, match=r"target 'assay' is constant \(200\) over 4 rows"):
        load_spectra(flat, target="assay")
    text = _rows(4).splitlines()
    text[3] = "Train,," + text[3].split(",", 2)[2]
    with pytest.raises(DataError, match=r"target 'assay' missing in 1 rows, lines \[4\]"):
        load_spectra(_csv(tmp_path, "\n".join(text), "gap.csv"), target="assay")


def test_split_and_min_samples(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(6))
    ds = load_spectra(path, target="assay", split_column="SampleType", split_values=["Train"])
    assert ds.n_samples == 3 and (ds.metadata["SampleType"] == "Train").all()
    with pytest.raises(
        DataError, match=r"3 spectra with SampleType in \['Train'\]; at least 10 are needed"
    ):
        load_spectra(path, split_column="SampleType", split_values=["Train"], min_samples=10)
    with pytest.raises(DataError, match=r"no split column 'Set'; available columns"):
        load_spectra(path, split_column="Set", split_values=["Train"])
    with pytest.raises(DataError, match=r"none of \['Calib'\]; its values: \['Test', 'Train'\]"):
        load_spectra(path, split_column="SampleType", split_values=["Calib"])


def test_grids_that_differ() -> None:
    def ds(wl: np.ndarray, name: str) -> SpectraDataset:
        return SpectraDataset(X=np.ones((2, wl.size)), wavelengths=wl, source=name)

    a = ds(600 + 2.0 * np.arange(650), "a")
    check_same_grid(a, ds(600 + 2.0 * np.arange(650), "same"))
    with pytest.raises(DataError, match="a: 650 points 600-1898 nm; b: 649 points"):
        check_same_grid(a, ds(600 + 2.0 * np.arange(649), "b"))
    shifted = 600 + 2.0 * np.arange(650)
    shifted[10:] += 1
    with pytest.raises(DataError, match="first difference at point 10: 620 vs 621 nm"):
        check_same_grid(a, ds(shifted, "c"))


def test_npz_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X, wl = rng.uniform(1, 2, (12, 30)), 1000.0 + 4 * np.arange(30)
    y, batch = rng.uniform(0, 5, 12), np.array(["b1", "b2"] * 6)
    np.savez(tmp_path / "ok.npz", X=X, wavelengths=wl, y=y, batch=batch, target_name="ethanol")
    ds = load_spectra(tmp_path / "ok.npz")
    assert ds.target == "ethanol" and np.array_equal(ds.y, y) and np.array_equal(ds.X, X)
    assert ds.grid_id == "lin:1000:1116:4" and list(ds.metadata["batch"][:2]) == ["b1", "b2"]
    sub = load_spectra(tmp_path / "ok.npz", split_column="batch", split_values={"b2"})
    assert sub.n_samples == 6
    np.savez(tmp_path / "noy.npz", X=X, wavelengths=wl)
    assert load_spectra(tmp_path / "noy.npz").y is None
    np.savez(tmp_path / "nowl.npz", X=X)
    with pytest.raises(DataError, match=r"missing keys \['wavelengths'\]"):
        load_spectra(tmp_path / "nowl.npz")
    np.savez(tmp_path / "obj.npz", X=X, wavelengths=wl, notes=np.array([{"a": 1}] * 12))
    with pytest.raises(DataError, match="pickle"):
        load_spectra(tmp_path / "obj.npz")
    np.savez(tmp_path / "short.npz", X=X, wavelengths=wl, y=y[:5])
    with pytest.raises(DataError, match=r"key 'y' has shape \(5,\), expected \(12,\)"):
        load_spectra(tmp_path / "short.npz")
    bad = X.copy()
    bad[7, 3] = np.inf
    np.savez(tmp_path / "inf.npz", X=bad, wavelengths=wl, y=y)
    with pytest.raises(DataError, match=r"1 spectra, rows \[7\]"):
        load_spectra(tmp_path / "inf.npz")
    (tmp_path / "ok.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .csv, .npz or JCAMP-DX file"):
        load_spectra(tmp_path / "ok.txt")
    with pytest.raises(DataError, match="no such file"):
        load_spectra(tmp_path / "absent.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read as npz"):
        load_spectra(tmp_path / "broken.npz")


def test_fermentation() -> None:
    train = load_fermentation("train")
    assert train.X.shape == (21, 1047) and train.target == "glucose" and train.y is not None
    test = load_fermentation("test", target="ethanol")
    assert test.X.shape == (34, 1047) and test.target == "ethanol"
    check_same_grid(train, test)
    # Nearest spectrum in time to each HPLC sample: within half a spectrum interval.
    assert np.abs(test.metadata["time_h"] - test.metadata["hplc_time_h"]).max() <= 1.25 / 120
    online = load_fermentation("test", labelled_only=False)
    assert online.X.shape == (1629, 1047) and online.y is None
    with pytest.raises(DataError, match=r"no target 'ethanol'; available: \['glucose'\]"):
        load_fermentation("train", target="ethanol")


def test_damaged_inputs_raise_data_error(tmp_path: Path) -> None:
    """Whatever is wrong with a file, the caller sees a DataError, never a decoder's exception."""
    (tmp_path / "latin.csv").write_bytes(b"y,600,602\n1,\xff\xfe,3\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_spectra(tmp_path / "latin.csv")
    (tmp_path / "long.csv").write_text("y,600,602\n1," + "1" * 200_000 + ",3\n")
    with pytest.raises(DataError, match="malformed CSV"):
        load_spectra(tmp_path / "long.csv")
    (tmp_path / "inf.csv").write_text("y,600,inf\n1,2,3\n2,3,4\n")
    with pytest.raises(DataError, match=r"header 'inf' \(column 3\) is not a finite number"):
        load_spectra(tmp_path / "inf.csv")
    (tmp_path / "bom.csv").write_bytes("\ufeffassay,600,602\n1,2,3\n2,3,4\n".encode())
    assert load_spectra(tmp_path / "bom.csv", target="assay").y is not None
    np.savez(tmp_path / "nanwl.npz", X=np.ones((2, 2)), wavelengths=np.array([np.nan, 2.0]))
    with pytest.raises(DataError, match=r"non-finite values at points \[0\]"):
        load_spectra(tmp_path / "nanwl.npz")
    np.savez(tmp_path / "empty.npz", X=np.ones((1, 0)), wavelengths=np.ones(0))
    with pytest.raises(DataError, match="p >= 1"):
        load_spectra(tmp_path / "empty.npz")
    np.savez(tmp_path / "text.npz", X=np.array([["a", "b"]]), wavelengths=np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="X must be numeric"):
        load_spectra(tmp_path / "text.npz")
    np.savez_compressed(
        tmp_path / "z.npz", X=np.random.default_rng(0).random((20, 50)), wavelengths=np.arange(50.0)
    )
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    for i in range(200, 264):  # inside X's deflate stream
        raw[i] ^= 0xFF
    (tmp_path / "z.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read as npz"):
        load_spectra(tmp_path / "z.npz")


def test_a_decreasing_axis_is_turned_round_with_its_columns(tmp_path: Path) -> None:
    """Wavenumbers are often stored high to low: the same data, read either way, are equal."""
    up = load_spectra(_csv(tmp_path, _rows(4), "up.csv"), target="assay")
    lines = _rows(4).splitlines()
    flipped = []
    for line in lines:
        cells = line.split(",")
        flipped.append(",".join(cells[:2] + cells[2:][::-1]))
    down = load_spectra(_csv(tmp_path, "\n".join(flipped), "down.csv"), target="assay")
    np.testing.assert_array_equal(down.wavelengths, up.wavelengths)
    np.testing.assert_array_equal(down.X, up.X)
    assert up.wavelengths[0] < up.wavelengths[-1]


def test_rows_without_a_reference_value_are_refused_or_left_out_by_name(tmp_path: Path) -> None:
    lines = _rows(6).splitlines()
    for i in (2, 5):  # lines 3 and 6 of the file: no assay value
        cells = lines[i].split(",")
        lines[i] = ",".join([cells[0], "", *cells[2:]])
    path = _csv(tmp_path, "\n".join(lines))
    with pytest.raises(DataError, match=r"target 'assay' missing in 2 rows, lines \[3, 6\]"):
        load_spectra(path, target="assay")
    data = load_spectra(path, target="assay", missing_target="drop")
    assert data.left_out == "2 rows, lines [3, 6]" and data.n_samples == 4
    assert data.y is not None and np.isfinite(data.y).all()
    full = load_spectra(_csv(tmp_path, _rows(6), "full.csv"), target="assay")
    np.testing.assert_array_equal(data.X, full.X[[0, 2, 3, 5]])
    with pytest.raises(
        DataError,
        match=r"2 spectra with a 'assay' value with SampleType in \['Train'\]; at least 3",
    ):
        load_spectra(path, target="assay", missing_target="drop", min_samples=3,
                     split_column="SampleType", split_values={"Train"})  # fmt: skip
