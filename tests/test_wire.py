from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from nirwatch.errors import WireFormatError
from nirwatch.grid import grid_id_for, points_in_grid, wavelengths
from nirwatch.messages.wire import (
    Prediction,
    SpectrumHeader,
    decode_batch,
    decode_prediction,
    decode_spectrum,
    encode_spectrum,
    new_message_id,
)

GRID = "lin:600:1898:2"


def header(**kw: object) -> SpectrumHeader:
    base = dict(
        message_id=new_message_id(),
        instrument_id="probe-1",
        sample_id="s1",
        timestamp=1.5e9,
        grid=GRID,
        n_points=650,
        product="tab200",
        batch="B1",
    )
    base.update(kw)
    return SpectrumHeader(**base)  # type: ignore[arg-type]


def test_grid_ids_round_trip() -> None:
    wl = np.arange(600, 1900, 2)
    assert grid_id_for(wl) == GRID
    assert points_in_grid(GRID) == 650
    np.testing.assert_allclose(wavelengths(GRID), wl)
    assert points_in_grid("nonsense") is None


def test_spectrum_round_trip_is_float32_exact() -> None:
    x = np.random.default_rng(0).normal(size=650)
    h = header()
    got_h, got_x = decode_spectrum(encode_spectrum(h, x))
    assert got_h == h
    assert got_x.dtype == np.float32
    np.testing.assert_array_equal(got_x, x.astype(np.float32))


def _raw(head: dict[str, object], body: bytes, version: int = 1, magic: bytes = b"NIRS") -> bytes:
    h = json.dumps(head).encode()
    return struct.pack("<4sBBH", magic, version, 0, len(h)) + h + body


GOOD_HEAD = dict(
    message_id="m", instrument_id="p", sample_id="s", timestamp=1.0, grid=GRID, n_points=650
)
BODY = np.zeros(650, "<f4").tobytes()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "too_short"),
        (b"\x00\x01", "too_short"),
        (b"garbage bytes that are long enough", "bad_magic"),
        (_raw(GOOD_HEAD, BODY, version=9), "unknown_version"),
        (struct.pack("<4sBBH", b"NIRS", 1, 0, 5) + b"{not json", "bad_header"),
        (_raw({k: v for k, v in GOOD_HEAD.items() if k != "sample_id"}, BODY), "missing_field"),
        (_raw({**GOOD_HEAD, "timestamp": "yesterday"}, BODY), "bad_field"),
        (_raw({**GOOD_HEAD, "grid": "log:1:2"}, BODY), "unknown_grid"),
        (_raw({**GOOD_HEAD, "n_points": 600}, BODY), "length_mismatch"),
        (_raw(GOOD_HEAD, BODY[:-4]), "length_mismatch"),
        (_raw(GOOD_HEAD, np.full(650, np.nan, "<f4").tobytes()), "non_finite"),
        (_raw(GOOD_HEAD, np.full(650, np.inf, "<f4").tobytes()), "non_finite"),
    ],
)
def test_malformed_messages_name_their_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(WireFormatError) as exc:
        decode_spectrum(value)
    assert exc.value.reason == reason


def test_encode_refuses_bad_spectra() -> None:
    with pytest.raises(WireFormatError, match="length_mismatch"):
        encode_spectrum(header(), np.zeros(10))
    with pytest.raises(WireFormatError, match="non_finite"):
        encode_spectrum(header(), np.full(650, np.nan))


def test_decode_batch_keeps_good_messages_around_bad_ones() -> None:
    good = [encode_spectrum(header(sample_id=f"s{i}"), np.full(650, i)) for i in range(3)]
    values = [good[0], b"junk", good[1], None, good[2]]
    out = decode_batch(values)
    assert out.good_index == [0, 2, 4]
    assert [h.sample_id for h in out.headers] == ["s0", "s1", "s2"]
    assert out.spectra.shape == (3, 650)
    assert [i for i, _ in out.errors] == [1, 3]


def test_decode_batch_flags_other_grid() -> None:
    other = encode_spectrum(header(grid="lin:1000:1100:1", n_points=101), np.zeros(101))
    out = decode_batch([encode_spectrum(header(), np.zeros(650)), other], expected_grid=GRID)
    assert out.errors[0][1].reason == "grid_mismatch"


def test_prediction_round_trip_and_validation() -> None:
    p = Prediction(
        prediction_id="p",
        message_id="m",
        instrument_id="i",
        sample_id="s",
        timestamp=1.0,
        published_at=2.0,
        target="assay",
        value=201.5,
        model="cnn",
        model_version="v1",
        bundle_checksum="abc",
        t2=1.0,
        q=0.1,
    )
    assert decode_prediction(p.encode()) == p
    with pytest.raises(WireFormatError, match="unknown_version"):
        decode_prediction(b'{"schema": "nirwatch.prediction/0"}')
    with pytest.raises(WireFormatError, match="bad_header"):
        decode_prediction(b"\xff\xfe")


def test_decode_batch_dead_letters_non_finite_rows_and_keeps_order() -> None:
    rows = [np.full(650, float(i)) for i in range(5)]
    values = [encode_spectrum(header(sample_id=f"s{i}"), r) for i, r in enumerate(rows)]
    nan_msg = bytearray(values[2])
    nan_msg[-4:] = np.array([np.nan], "<f4").tobytes()
    values[2] = bytes(nan_msg)
    values.insert(1, b"junk")
    out = decode_batch(values)
    assert [i for i, _ in out.errors] == [1, 3]
    assert [e.reason for _, e in out.errors] == ["too_short", "non_finite"]
    assert [h.sample_id for h in out.headers] == ["s0", "s1", "s3", "s4"]
    np.testing.assert_array_equal(out.spectra[:, 0], [0, 1, 3, 4])
    out.spectra[0, 0] = 1.0  # writable: preprocessing may work in place


def test_lab_results_share_the_record_decoder_and_survive_nested_json() -> None:
    from ingest.lab_results import decode_lab_result

    with pytest.raises(WireFormatError) as exc:
        decode_lab_result(b"[" * 5000)
    assert exc.value.reason == "bad_header"
    with pytest.raises(WireFormatError, match="unknown_version"):
        decode_lab_result(b'{"schema": "nirwatch.lab-result/0"}')
