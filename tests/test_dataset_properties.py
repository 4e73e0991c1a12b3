"""Property tests of the CSV/npz spectra loaders: a usable dataset or a DataError, nothing else.

:func:`check_load` asserts the contract of :func:`nirwatch.io.datasets.load_spectra`: either a
dataset whose spectra are finite, 2-D and as wide as an increasing, finite wavelength axis
(and whose target, if any, is finite and as long), or :class:`DataError`. Defects found while
writing these tests (fixed in datasets.py since) are kept at the end as regressions. ``TRIED`` counts files loaded; run with ``-s`` to see the totals.
"""

from __future__ import annotations

import io
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nirwatch.errors import DataError
from nirwatch.io.datasets import SpectraDataset, load_spectra

TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
EXAMPLES = 200
PROPS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    print(f"\ndataset property inputs tried: {sum(TRIED.values())} {dict(TRIED)}", file=sys.stderr)
    print(f"outcomes: {dict(OUTCOMES)}", file=sys.stderr)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


def check_load(
    path: Path, kind: str, strict: bool = True, **kwargs: Any
) -> SpectraDataset | DataError:
    """Load and assert the contract (``strict``: also the invariants of a usable dataset)."""
    TRIED[kind] += 1
    try:
        ds = load_spectra(path, **kwargs)
    except DataError as exc:
        assert str(exc), "a DataError must say what is wrong"
        OUTCOMES["DataError"] += 1
        return exc
    OUTCOMES["loaded"] += 1
    n, p = ds.X.shape
    assert ds.X.ndim == 2 and n >= 1 and p >= 1
    assert ds.wavelengths.shape == (p,)
    assert all(v.shape[0] == n for v in ds.metadata.values())
    if strict:
        assert ds.X.dtype == np.float64 and np.isfinite(ds.X).all()
        assert np.isfinite(ds.wavelengths).all() and (np.diff(ds.wavelengths) > 0).all()
        if ds.y is not None:
            assert ds.y.shape == (n,) and np.isfinite(ds.y).all()
            assert n == 1 or np.ptp(ds.y) > 0
    return ds


# ---- CSV -------------------------------------------------------------------------------------

numbers = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.6g}")
junk = st.sampled_from(["", "nan", "NA", "abc", "-", "1,5", '"', "  ", "1e5x", "\u00b5", "0x10"])
cells = numbers | junk | st.text(max_size=6).filter(lambda t: "\x00" not in t)
headers = (
    st.integers(300, 2500).map(str) | junk | st.sampled_from(["SampleType", "y", "inf", "1e999"])
)


@st.composite
def csv_documents(draw: st.DrawFn) -> str:
    n_meta = draw(st.integers(0, 3))
    n_wl = draw(st.integers(0, 12))
    start, step = draw(st.integers(400, 1500)), draw(st.sampled_from([-2, 1, 2, 2, 2, 5]))
    head = ["y"] + [f"m{i}" for i in range(n_meta)] + [str(start + step * i) for i in range(n_wl)]
    if draw(st.integers(0, 3)) == 0:
        for i in draw(st.lists(st.integers(0, len(head) - 1), max_size=2)):
            head[i] = draw(headers)
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        row = [draw(numbers) for _ in head]
        if draw(st.integers(0, 5)) == 0:
            for i in draw(st.lists(st.integers(0, len(head) - 1), max_size=2)):
                row[i] = draw(cells)
        if draw(st.integers(0, 9)) == 0:
            row = row[: draw(st.integers(0, len(row)))]
        rows.append(row)
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return sep.join(",".join(r) for r in [head, *rows]) + draw(st.sampled_from(["", sep]))


@PROPS
@given(csv_documents(), st.sampled_from([None, "y", "m0", "missing"]))
def test_csv_documents(workdir: Path, text: str, target: str | None) -> None:
    path = workdir / "doc.csv"
    path.write_text(text, encoding="utf-8")
    check_load(path, "csv_doc", target=target)


@PROPS
@given(st.text(max_size=300).filter(lambda t: "\x00" not in t))
def test_csv_random_text(workdir: Path, text: str) -> None:
    path = workdir / "text.csv"
    path.write_text(text, encoding="utf-8")
    check_load(path, "csv_text")


def test_csv_every_truncation(workdir: Path, shootout_csv: Path) -> None:
    lines = shootout_csv.read_text().splitlines(keepends=True)[:4]
    text = "".join(lines)
    path = workdir / "cut.csv"
    step = max(1, len(text) // 400)
    for cut in range(0, len(text), step):
        path.write_text(text[:cut], encoding="utf-8")
        check_load(path, "csv_truncation", target="assay")
    assert isinstance(check_load(shootout_csv, "csv_truncation", target="assay"), SpectraDataset)


def test_csv_split_and_target_errors_name_the_problem(workdir: Path) -> None:
    path = workdir / "small.csv"
    path.write_text("SampleType,y,600,602\nTrain,1,0.1,0.2\nTest,1,0.3,0.4\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"target": "y"}, "constant"),
        ({"target": "z"}, "no target column 'z'"),
        ({"split_column": "Kind", "split_values": ["Train"]}, "no split column"),
        ({"split_column": "SampleType", "split_values": ["Validate"]}, "none of"),
        ({"min_samples": 3}, "at least 3"),
    ]
    for kwargs, match in cases:
        got = check_load(path, "csv_named_error", **kwargs)
        assert isinstance(got, DataError) and match in str(got), (kwargs, got)


# ---- npz -------------------------------------------------------------------------------------

numeric_dtypes = st.sampled_from(["<f8", "<f4", "<f2", "<i4", "|u1", "|b1", ">f8"])
values = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def npz_archives(draw: st.DrawFn) -> bytes:
    n, p = draw(st.integers(0, 6)), draw(st.integers(0, 8))
    arrays: dict[str, np.ndarray] = {}
    if draw(st.integers(0, 9)):
        shape = draw(st.sampled_from([(n, p), (n, p), (p,), (n, p + 1), (n, p, 1), ()]))
        x = np.random.default_rng(draw(st.integers(0, 9999))).normal(size=shape)
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            if x.size:
                x.flat[draw(st.integers(0, x.size - 1))] = draw(values)
        with np.errstate(all="ignore"):
            arrays["X"] = x.astype(draw(numeric_dtypes))
    if draw(st.integers(0, 9)):
        start, step = draw(st.integers(400, 1500)), draw(st.sampled_from([2.0, 2.0, -2.0, 0.0]))
        arrays["wavelengths"] = start + step * np.arange(draw(st.sampled_from([p, p, p + 1])))
    if draw(st.booleans()):
        y = np.random.default_rng(1).normal(size=draw(st.sampled_from([n, n, n + 1])))
        if y.size and draw(st.integers(0, 3)) == 0:
            y[0] = draw(values)
        with np.errstate(all="ignore"):
            arrays["y"] = y.astype(draw(numeric_dtypes))
    if draw(st.booleans()):
        arrays["batch"] = np.array([f"B{i}" for i in range(draw(st.sampled_from([n, n + 2])))])
    if draw(st.booleans()):
        arrays["target_name"] = np.array(draw(st.sampled_from(["api", "moisture"])))
    buf = io.BytesIO()
    with np.errstate(all="ignore"):
        np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


@PROPS
@given(npz_archives(), st.sampled_from([None, "y", "batch", "missing"]))
def test_npz_archives(workdir: Path, data: bytes, target: str | None) -> None:
    path = workdir / "a.npz"
    path.write_bytes(data)
    check_load(path, "npz_archive", target=target)


@PROPS
@given(npz_archives(), st.data())
def test_npz_truncated_or_bit_flipped(workdir: Path, data: bytes, draw: st.DataObject) -> None:
    raw = bytearray(data)
    if draw.draw(st.booleans()):
        raw = raw[: draw.draw(st.integers(0, len(raw)))]
    else:
        for _ in range(draw.draw(st.integers(1, 8))):
            raw[draw.draw(st.integers(0, len(raw) - 1))] ^= 1 << draw.draw(st.integers(0, 7))
    path = workdir / "b.npz"
    path.write_bytes(bytes(raw))
    # Flipped bits inside the float data give arbitrary values: only the exception contract.
    check_load(path, "npz_corrupt", strict=False)


@PROPS
@given(st.binary(max_size=600))
def test_npz_random_bytes(workdir: Path, data: bytes) -> None:
    path = workdir / "c.npz"
    path.write_bytes(data)
    check_load(path, "npz_bytes")


def test_npz_with_object_array_is_refused_without_unpickling(workdir: Path) -> None:
    path = workdir / "obj.npz"
    np.savez(path, X=np.ones((2, 2)), wavelengths=np.array([1.0, 2.0]), m=np.array([{}, 1]))
    got = check_load(path, "npz_object")
    assert isinstance(got, DataError) and "pickle" in str(got)


# ---- regressions: each of these escaped as another exception or loaded a broken axis -------


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_csv_not_utf8(workdir: Path) -> None:
    (workdir / "latin.csv").write_bytes(b"y,600,602\n1,\xff\xfe,3\n")
    assert isinstance(check_load(workdir / "latin.csv", "regression"), DataError)


def test_csv_field_over_limit(workdir: Path) -> None:
    (workdir / "long.csv").write_text("y,600,602\n1," + "1" * 200_000 + ",3\n")
    assert isinstance(check_load(workdir / "long.csv", "regression"), DataError)


def test_csv_infinite_wavelength_headers(workdir: Path) -> None:
    (workdir / "inf.csv").write_text("y,inf,inf\n1,2,3\n2,3,4\n")
    assert isinstance(check_load(workdir / "inf.csv", "regression"), DataError)


def test_npz_nan_wavelength(workdir: Path) -> None:
    (workdir / "nanwl.npz").write_bytes(
        _npz_bytes(X=np.ones((2, 2)), wavelengths=np.array([np.nan, 2.0]))
    )
    assert isinstance(check_load(workdir / "nanwl.npz", "regression"), DataError)


def test_npz_without_wavelengths(workdir: Path) -> None:
    (workdir / "empty.npz").write_bytes(_npz_bytes(X=np.ones((3, 0)), wavelengths=np.ones(0)))
    assert isinstance(check_load(workdir / "empty.npz", "regression"), DataError)


def test_npz_text_spectra(workdir: Path) -> None:
    (workdir / "text.npz").write_bytes(
        _npz_bytes(X=np.array([["a", "b"]]), wavelengths=np.array([1.0, 2.0]))
    )
    assert isinstance(check_load(workdir / "text.npz", "regression"), DataError)


def test_npz_corrupt_compressed_member(workdir: Path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, X=np.random.default_rng(0).random((20, 50)), wavelengths=np.arange(50.0)
    )
    raw = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("X.npy")
    at = info.header_offset + 30 + len(info.filename) + 40  # inside X's deflate stream
    for i in range(at, at + 64):
        raw[i] ^= 0xFF
    (workdir / "z.npz").write_bytes(bytes(raw))
    assert isinstance(check_load(workdir / "z.npz", "regression"), DataError)
