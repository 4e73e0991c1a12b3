"""Property tests of the wire format: hostile input gives a valid spectrum or a WireFormatError.

Every decoder outcome is checked by :func:`check_spectrum_outcome`: either a header plus a
finite float32 array as long as the header's grid, or :class:`WireFormatError` with a reason
in :data:`REASONS`. Anything else (IndexError, OverflowError, RecursionError...) would escape
the worker's dead-letter path and is a failure. ``TRIED`` counts the inputs decoded; run with
``-s`` to see the totals (reported in docs/results/reliability.md).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nirwatch.errors import WireFormatError
from nirwatch.grid import points_in_grid
from nirwatch.messages.codec import REASONS
from nirwatch.messages.prediction import PREDICTION_SCHEMA, Prediction, decode_prediction
from nirwatch.messages.spectrum import (
    MAX_MESSAGE_BYTES,
    MAX_POINTS,
    SpectrumHeader,
    decode_batch,
    decode_spectrum,
    encode_spectrum,
    encode_spectrum_unchecked,
)

GRID = "lin:600:1898:2"
N = 650
PREFIX = struct.Struct("<4sBBH")
REQUIRED = ("message_id", "instrument_id", "sample_id", "timestamp", "grid", "n_points")
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()

#: Examples per property; a few thousand decodes per second on this 2-core machine.
EXAMPLES = 400
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    total = sum(TRIED.values())
    print(f"\nwire property inputs tried: {total} {dict(TRIED)}", file=sys.stderr)
    print(f"outcomes: {dict(OUTCOMES)}", file=sys.stderr)


def check_spectrum_outcome(
    value: bytes | None, expected_grid: str | None = None, kind: str = "spectrum"
) -> tuple[SpectrumHeader, np.ndarray] | WireFormatError:
    """Decode and assert the contract; returns what the decoder gave."""
    TRIED[kind] += 1
    try:
        header, x = decode_spectrum(value, expected_grid)
    except WireFormatError as exc:
        assert exc.reason in REASONS, f"unbounded reason {exc.reason!r}"
        assert exc.detail, "a reason needs a detail naming expected vs got"
        OUTCOMES[exc.reason] += 1
        return exc
    OUTCOMES["valid"] += 1
    assert isinstance(header, SpectrumHeader)
    for key in ("message_id", "instrument_id", "sample_id", "grid"):
        assert isinstance(getattr(header, key), str) and getattr(header, key)
    assert isinstance(header.timestamp, float) and math.isfinite(header.timestamp)
    assert x.dtype == np.dtype("<f4") and x.ndim == 1
    assert x.shape == (header.n_points,) == (points_in_grid(header.grid),)
    assert np.isfinite(x).all()
    if expected_grid is not None:
        assert header.grid == expected_grid
    return header, x


def raw_message(head: Any, body: bytes, version: int = 1, magic: bytes = b"NIRS") -> bytes:
    h = head if isinstance(head, bytes) else json.dumps(head).encode()
    return PREFIX.pack(magic, version, 0, len(h)) + h + body


def good_header(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        message_id="m1",
        instrument_id="probe-1",
        sample_id="s1",
        timestamp=1.7e9,
        grid=GRID,
        n_points=N,
    )
    base.update(kw)
    return base


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
text = st.text(min_size=1, max_size=20)
grids = st.builds(
    lambda a, n, s: f"lin:{a}:{a + (n - 1) * s}:{s}",
    st.integers(0, 2000),
    st.integers(1, 700),
    st.sampled_from([1, 2, 4]),
)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[bytes, SpectrumHeader, np.ndarray]:
    grid = draw(grids)
    n = points_in_grid(grid)
    assert n is not None
    header = SpectrumHeader(
        message_id=draw(text),
        instrument_id=draw(text),
        sample_id=draw(text),
        timestamp=draw(st.floats(0, 4e9)),
        grid=grid,
        n_points=n,
        product=draw(st.text(max_size=10)),
        batch=draw(st.text(max_size=10)),
        extra=draw(st.dictionaries(st.text(max_size=5), st.integers(-100, 100), max_size=3)),
    )
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    return encode_spectrum(header, x), header, x


# JSON values bounded in depth and integer size; the unbounded cases have their own tests below.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FAST
@given(st.binary(max_size=4096))
def test_random_bytes(value: bytes) -> None:
    check_spectrum_outcome(value, kind="random_bytes")


@FAST
@given(st.binary(max_size=3000), st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535))
def test_random_bytes_behind_a_valid_prefix(body: bytes, version: int, flags: int, hl: int) -> None:
    check_spectrum_outcome(PREFIX.pack(b"NIRS", version, flags, hl) + body, kind="prefixed_bytes")


@FAST
@given(valid_messages())
def test_valid_messages_round_trip_exactly(msg: tuple[bytes, SpectrumHeader, np.ndarray]) -> None:
    value, header, x = msg
    got = check_spectrum_outcome(value, kind="valid")
    assert not isinstance(got, WireFormatError), got
    assert got[0] == header
    np.testing.assert_array_equal(got[1], x)


def test_every_truncation_and_extension_of_a_valid_message_is_refused() -> None:
    x = np.linspace(0.1, 1.2, N, dtype=np.float32)
    value = encode_spectrum(SpectrumHeader("m", "probe", "s", 1.7e9, GRID, N), x)
    for cut in range(len(value)):
        got = check_spectrum_outcome(value[:cut], kind="truncation_all")
        assert isinstance(got, WireFormatError), f"prefix of {cut} bytes accepted"
    for extra in (b"\0", b"\0" * 3, b"\0" * 4, x.tobytes()):
        got = check_spectrum_outcome(value + extra, kind="extension")
        assert isinstance(got, WireFormatError) and got.reason == "length_mismatch"


@FAST
@given(valid_messages(), st.data())
def test_truncation_of_random_valid_messages(
    msg: tuple[bytes, SpectrumHeader, np.ndarray], data: st.DataObject
) -> None:
    value = msg[0]
    cut = data.draw(st.integers(0, len(value) - 1))
    assert isinstance(check_spectrum_outcome(value[:cut], kind="truncation"), WireFormatError)


@FAST
@given(
    st.lists(st.integers(0, N - 1), min_size=1, max_size=5),
    st.sampled_from([np.nan, np.inf, -np.inf]),
    st.integers(0, 2**22 - 1),
)
def test_nan_and_inf_anywhere_are_non_finite(where: list[int], bad: float, payload: int) -> None:
    x = np.ones(N, dtype="<f4")
    x[where] = bad
    if np.isnan(bad):  # any NaN bit pattern, signalling ones included
        bits = x.view("<u4")
        bits[where] = 0x7F800000 | max(payload, 1) | (bits[where] & 0x80000000)
    got = check_spectrum_outcome(raw_message(good_header(), x.tobytes()), kind="non_finite")
    assert isinstance(got, WireFormatError) and got.reason == "non_finite"


@FAST
@given(st.integers(-5, MAX_POINTS + 5), st.sampled_from(["<f4", "<f8", "<f2", ">f4", "<i4"]))
def test_wrong_length_or_dtype(n_body: int, dtype: str) -> None:
    body = np.ones(max(n_body, 0), dtype=dtype).tobytes()
    got = check_spectrum_outcome(raw_message(good_header(), body), kind="length_dtype")
    if len(body) == 4 * N:
        # Same byte count: big-endian ones decode as finite numbers; a valid but wrong spectrum
        # is caught downstream by the T²/Q applicability domain, not by the wire format.
        return
    assert isinstance(got, WireFormatError) and got.reason in ("length_mismatch", "too_large")


@FAST
@given(st.integers(-(2**40), 2**40) | json_values, grids)
def test_wrong_n_points_or_grid(n_points: Any, grid: str) -> None:
    head = good_header(n_points=n_points, grid=grid)
    got = check_spectrum_outcome(
        raw_message(head, np.ones(N, "<f4").tobytes()), GRID, kind="n_points_grid"
    )
    if not isinstance(got, WireFormatError):
        assert grid == GRID and n_points == N


@FAST
@given(st.text(max_size=30))
def test_arbitrary_grid_ids(grid: str) -> None:
    check_spectrum_outcome(raw_message(good_header(grid=grid), b""), kind="grid_text")


@FAST
@given(st.integers(0, 255).filter(lambda v: v != 1))
def test_unknown_versions(version: int) -> None:
    got = check_spectrum_outcome(
        raw_message(good_header(), np.ones(N, "<f4").tobytes(), version=version), kind="version"
    )
    assert isinstance(got, WireFormatError) and got.reason == "unknown_version"


@FAST
@given(st.sets(st.sampled_from(REQUIRED), min_size=1))
def test_missing_header_fields(missing: set[str]) -> None:
    head = {k: v for k, v in good_header().items() if k not in missing}
    got = check_spectrum_outcome(raw_message(head, np.ones(N, "<f4").tobytes()), kind="missing")
    assert isinstance(got, WireFormatError) and got.reason == "missing_field"


@FAST
@given(st.sampled_from([*REQUIRED, "product", "batch", "units", "extra"]), json_values)
def test_any_json_in_any_header_field(key: str, value: Any) -> None:
    head = good_header(**{key: value})
    check_spectrum_outcome(raw_message(head, np.ones(N, "<f4").tobytes()), kind="field_json")


@FAST
@given(json_values | st.binary(max_size=200))
def test_any_header_document(head: Any) -> None:
    if isinstance(head, str):
        head = head.encode()
    elif not isinstance(head, bytes):
        head = json.dumps(head).encode()
    check_spectrum_outcome(raw_message(head, np.ones(N, "<f4").tobytes()), kind="header_doc")


def test_huge_messages() -> None:
    huge = raw_message(good_header(), b"\0" * (MAX_MESSAGE_BYTES + 1))
    got = check_spectrum_outcome(huge, kind="huge")
    assert isinstance(got, WireFormatError) and got.reason == "too_large"
    pad = {**good_header(), "extra": {"pad": "x" * (65535 - len(json.dumps(good_header())) - 30)}}
    got = check_spectrum_outcome(raw_message(pad, np.ones(N, "<f4").tobytes()), kind="huge")
    assert not isinstance(got, WireFormatError), got  # a full 64 KiB header is still legal
    big_n = good_header(n_points=MAX_POINTS + 1, grid=f"lin:0:{MAX_POINTS}:1")
    got = check_spectrum_outcome(raw_message(big_n, b""), kind="huge")
    assert isinstance(got, WireFormatError) and got.reason == "bad_field"
    assert isinstance(check_spectrum_outcome(None, kind="huge"), WireFormatError)


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(
    st.lists(
        st.one_of(valid_messages().map(lambda m: m[0]), st.binary(max_size=64), st.none()),
        max_size=12,
    )
)
def test_decode_batch_keeps_good_messages(values: list[bytes | None]) -> None:
    TRIED["batch_items"] += len(values)
    batch = decode_batch(values)
    assert sorted(batch.good_index + [i for i, _ in batch.errors]) == list(range(len(values)))
    assert all(e.reason in REASONS for _, e in batch.errors)
    assert batch.spectra.shape[0] == len(batch.headers) == len(batch.good_index)
    if batch.headers:
        assert {h.grid for h in batch.headers} == {batch.headers[0].grid}
        assert batch.spectra.dtype == np.float32 and np.isfinite(batch.spectra).all()


# ---- the encoder refuses what the decoder refuses -------------------------------------------

odd_values = st.one_of(
    st.text(max_size=12), st.integers(), st.floats(width=32), st.none(), st.booleans()
)


@st.composite
def any_spectra(draw: st.DrawFn) -> tuple[SpectrumHeader, np.ndarray]:
    """A good header with none, one or a few fields replaced by any JSON-able value, and a
    spectrum of any length, perhaps with a non-finite (or float32-overflowing) value."""
    n = draw(st.sampled_from([N, N, N, 0, 1, N - 1, N + 1, 2 * N, 33_000]))  # 33,000: too_large
    x = np.random.default_rng(draw(st.integers(0, 99))).random(n)
    if n and draw(st.integers(0, 3)) == 0:
        x[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e39]))
    fields: dict[str, Any] = {
        "message_id": "m1", "instrument_id": "p1", "sample_id": "s1", "timestamp": 1.7e9,
        "grid": GRID, "n_points": N, "product": "", "batch": "B1", "units": "absorbance",
        "extra": {},
    }  # fmt: skip
    others = {
        "grid": st.sampled_from(["lin:600:1898:4", "lin:1:0:1", "", "x"]) | odd_values,
        "n_points": st.integers(-2, 20_000) | odd_values,
        "extra": st.dictionaries(st.text(max_size=4), odd_values) | odd_values,
    }
    bad = st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=3)
    for name in draw(st.just(set()) | bad):
        fields[name] = draw(others.get(name, odd_values))
    return SpectrumHeader(**fields), x


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@FAST
@given(item=any_spectra(), expected=st.sampled_from([None, GRID, "lin:600:1898:4"]))
def test_encoder_refuses_what_the_decoder_refuses_with_its_reason(
    item: tuple[SpectrumHeader, np.ndarray], expected: str | None
) -> None:
    """The ingest edge validates by encoding: its verdict, reason and bytes must be those of
    encoding without checks and decoding (what it did before, and what the worker does)."""
    TRIED["encode"] += 1
    header, x = item
    raw = encode_spectrum_unchecked(header, x)
    try:
        decode_spectrum(raw, expected)
        want = None
    except WireFormatError as exc:
        want = exc.reason
    try:
        value = encode_spectrum(header, x, expected)
    except WireFormatError as exc:
        assert exc.reason == want
        OUTCOMES[f"encode:{exc.reason}"] += 1
    else:
        assert want is None and value == raw
        OUTCOMES["encode:valid"] += 1


# ---- predictions ------------------------------------------------------------------------------

_PRED = Prediction("p", "m", "probe", "s", 1.7e9, 1.7e9 + 0.01, "api", 200.0, "cnn", "3", "c" * 64)


@FAST
@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_prediction_random_input(value: bytes) -> None:
    TRIED["prediction"] += 1
    try:
        decode_prediction(value)
    except WireFormatError as exc:
        assert exc.reason in REASONS


@FAST
@given(st.sampled_from(list(Prediction.__dataclass_fields__)), json_values, st.booleans())
def test_decode_prediction_field_mutations(key: str, value: Any, drop: bool) -> None:
    TRIED["prediction"] += 1
    obj = json.loads(_PRED.encode())
    if drop:
        obj.pop(key)
    else:
        obj[key] = value
    try:
        got = decode_prediction(json.dumps(obj).encode())
    except WireFormatError as exc:
        assert exc.reason in REASONS
    else:
        assert got.schema == PREDICTION_SCHEMA


def test_prediction_round_trip() -> None:
    assert decode_prediction(_PRED.encode()) == _PRED


# ---- regressions: these once escaped as RecursionError / OverflowError ---


def test_deeply_nested_header_json() -> None:
    check_spectrum_outcome(raw_message(b"[" * 5000, b""), kind="regression")


def test_deeply_nested_prediction_json() -> None:
    try:
        decode_prediction(b"[" * 5000)
    except WireFormatError as exc:
        assert exc.reason in REASONS


def test_integer_timestamp_too_large_for_float() -> None:
    head = json.dumps(good_header()).replace("1700000000.0", "1" + "0" * 400).encode()
    check_spectrum_outcome(raw_message(head, np.ones(N, "<f4").tobytes()), kind="regression")


def test_grid_with_infinite_point_count() -> None:
    head = good_header(grid="lin:0:1e308:1e-308", n_points=5)
    check_spectrum_outcome(raw_message(head, b"\0" * 20), kind="regression")
