"""JCAMP-DX reading: plain and compressed ordinates, headers, blocks, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import jcamp

from nirwatch.errors import DataError
from nirwatch.io.datasets import load_spectra
from nirwatch.io.jcamp import decode_xydata, read_jcamp

# [10, 12, 12, 12, 15, 11] encoded by hand after JCAMP-DX 4.24 (McDonald & Wilks 1988):
# A0 = SQZ 10; K = DIF +2; % = DIF 0; T = DUP "2 in all"; the 2nd line starts with the Y check
# (A2 = 12, the previous line's last ordinate), then L = +3, m = -4.
DIFDUP = ["600A0K%T", "608A2Lm"]
AFFN = ["600 10 12 12 12", "608 15 11"]
VALUES = [10, 12, 12, 12, 15, 11]


def test_compressed_and_plain_ordinates_decode_alike() -> None:
    np.testing.assert_array_equal(decode_xydata(DIFDUP), VALUES)
    np.testing.assert_array_equal(decode_xydata(AFFN), VALUES)
    # SQZ with more digits and signs, AFFN with separators and exponents.
    np.testing.assert_array_equal(decode_xydata(["1 b5J23@"]), [-25, 98, 0])
    np.testing.assert_array_equal(decode_xydata(["1,1.5E-3;-2e1+3"]), [1.5e-3, -20, 3])
    # A DUP of a plain value repeats it.
    np.testing.assert_array_equal(decode_xydata(["1 C7U"]), [37, 37, 37])
    with pytest.raises(DataError, match="Y check failed, expected 12, got 13"):
        decode_xydata(["600A0K%T", "608A3Lm"])
    with pytest.raises(DataError, match="cannot read"):
        decode_xydata(["600 12 #"])
    with pytest.raises(DataError, match="a repeat count with nothing before"):
        decode_xydata(["600 T"])


def test_a_file_of_two_blocks_gives_two_rows(tmp_path: Path) -> None:
    common = dict(YUNITS="ABSORBANCE", YFACTOR=0.001, FIRSTX=600, LASTX=610, NPOINTS=6)
    text = (
        "##TITLE=run 7\n##JCAMP-DX=5.01\n##BLOCKS=2\n$$ exported by the instrument\n"
        + jcamp("tablet 1", DIFDUP, SAMPLE_DESCRIPTION="T-001", **common)
        + jcamp("tablet 2", [f"{line}  $$ comment" for line in AFFN], **common)
        + "##END=\n"
    )
    path = tmp_path / "run.jdx"
    path.write_text(text)
    X, axis, meta, unit = read_jcamp(path)
    np.testing.assert_allclose(axis, [600, 602, 604, 606, 608, 610])
    np.testing.assert_allclose(X, np.array([VALUES, VALUES]) * 0.001)
    assert unit == "nm" and list(meta["title"]) == ["tablet 1", "tablet 2"]
    assert "sample_id" not in meta  # only one of the two spectra names its sample


def test_wavenumber_exports_come_back_in_increasing_order(tmp_path: Path) -> None:
    path = tmp_path / "ft.dx"
    path.write_text(
        jcamp("ft-nir", ["9000 1 2 3 4"], XUNITS="1/CM", FIRSTX=9000, LASTX=6000, NPOINTS=4)
    )
    X, axis, _, unit = read_jcamp(path)
    assert unit == "cm-1"
    np.testing.assert_allclose(axis, [6000, 7000, 8000, 9000])
    np.testing.assert_allclose(X, [[4, 3, 2, 1]])


def test_a_real_spectrum_round_trips(shootout_csv: Path, tmp_path: Path) -> None:
    """A shootout spectrum written as integer AFFN (YFACTOR 1e-6) reads back to 1e-6."""
    data = load_spectra(shootout_csv)
    x, wl = data.X[0], data.wavelengths
    ints = np.rint(x / 1e-6).astype(int)
    lines = [f"{wl[i]:g} " + " ".join(map(str, ints[i : i + 10])) for i in range(0, wl.size, 10)]
    path = tmp_path / "tablet.jdx"
    path.write_text(
        jcamp(
            "tablet",
            lines,
            YFACTOR=1e-6,
            FIRSTX=wl[0],
            LASTX=wl[-1],
            NPOINTS=wl.size,
            **{"$SAMPLE_ID": "S-1"},
        )
    )
    X, axis, meta, _ = read_jcamp(path)
    np.testing.assert_allclose(axis, wl)
    np.testing.assert_allclose(X[0], x, atol=1e-6)
    assert list(meta["sample_id"]) == ["S-1"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("600,0.1,0.2\n", "not JCAMP-DX"),
        ("##TITLE=x\n##END=\n", "no ##XYDATA="),
        (jcamp("t", AFFN, YUNITS="TRANSMITTANCE", FIRSTX=600, LASTX=610), "expected ABSORBANCE"),
        (jcamp("t", AFFN, FIRSTX=600, LASTX=610, NPOINTS=7), "NPOINTS=7 but the data hold 6"),
        (jcamp("t", AFFN, LASTX=610), "no ##FIRSTX="),
        (jcamp("t", AFFN, FIRSTX=600, LASTX=610, XUNITS="SECONDS"), "expected NANOMETERS"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.jdx"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_jcamp(path)


def test_load_spectra_reads_jcamp_for_offline_prediction(tmp_path: Path) -> None:
    path = tmp_path / "t.jdx"
    path.write_text(jcamp("t", AFFN, FIRSTX=600, LASTX=610, NPOINTS=6))
    data = load_spectra(path)
    assert data.X.shape == (1, 6) and data.grid_id == "lin:600:610:2"
    with pytest.raises(DataError, match="no target column 'assay'"):
        load_spectra(path, target="assay")
