"""The message modules: spectra, predictions and lab results (schema, encoders, decoders)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import numpy as np
import pytest

from nirwatch.errors import WireFormatError
from nirwatch.grid import grid_id_for, points_in_grid, wavelengths
from nirwatch.messages.lab_result import LabResult, decode_lab_result
from nirwatch.messages.prediction import PREDICTION_SCHEMA, Prediction, decode_prediction
from nirwatch.messages.spectrum import (
    SpectrumHeader,
    decode_batch,
    decode_spectrum,
    encode_spectrum,
    encode_spectrum_unchecked,
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
    # What only the decoder used to check: the header's fields and its grid.
    cases = [
        (header(instrument_id=""), None, "bad_field"),
        (header(timestamp=float("nan")), None, "bad_field"),
        (header(grid="log:1:2:3"), None, "unknown_grid"),
        (header(n_points=600), None, "length_mismatch"),
        (header(), "lin:600:1898:4", "grid_mismatch"),
        (header(extra={"x": "y" * 70_000}), None, "too_large"),
    ]
    for h, expected_grid, reason in cases:
        with pytest.raises(WireFormatError) as exc:
            encode_spectrum(h, np.zeros(h.n_points), expected_grid)
        assert exc.value.reason == reason, h


def test_spectrum_bytes_are_those_of_the_format_version_1() -> None:
    """The bytes every adapter has published since version 1 (computed with the encoder of
    commit 1e71a67, before the message modules): a refactor must not change them."""
    h = SpectrumHeader(
        "0190f3a2b4c5d6e7f8091a2b3c4d5e6f", "probe-1", "probe-1-00000042", 1764095000.125,
        GRID, 650, product="tablet-200mg", batch="LOT-0001",
        extra={"file": "run 7.csv", "probe": 7.0, "note": None},
    )  # fmt: skip
    x = np.linspace(0.1, 1.2, 650)
    value = encode_spectrum(h, x)
    assert value[:8] == b"NIRS\x01\x00\x22\x01"  # magic, version 1, flags 0, 290-byte header
    assert hashlib.sha256(value).hexdigest() == (
        "0bed60ea5775f04895c67e62d9d2c4639f75b47ec66dc35ebc1d64bec1a75f84"
    )
    assert encode_spectrum_unchecked(h, x) == value  # what a dead letter of it would carry


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
    with pytest.raises(WireFormatError, match="bad_header"):
        decode_prediction(None)  # a tombstone
    obj = json.loads(p.encode())
    for key, bad in [("t2", "1.0"), ("out_of_model", 1), ("value", True), ("model", None)]:
        with pytest.raises(WireFormatError, match=f"bad_field: prediction {key} must be"):
            decode_prediction(json.dumps({**obj, key: bad}).encode())
    with pytest.raises(WireFormatError, match="bad_field"):
        decode_prediction(p.encode().replace(b'"value":201.5', b'"value":NaN'))
    assert decode_prediction(p.encode().replace(b'"value":201.5', b'"value":201')).value == 201.0


#: A prediction record exactly as workers wrote them before version 2 (no spectrum_sha256).
PREDICTION_V1 = (
    b'{"prediction_id":"p","message_id":"m","instrument_id":"i","sample_id":"s",'
    b'"timestamp":1.0,"published_at":2.0,"target":"assay","value":201.5,"model":"cnn",'
    b'"model_version":"v1","bundle_checksum":"abc","product":"","batch":"","unit":"",'
    b'"fallback_reason":null,"cnn_value":null,"pls_value":null,"t2":1.0,"q":0.1,'
    b'"t2_limit":null,"q_limit":null,"out_of_model":false,"releasable":true,'
    b'"interval_low":null,"interval_high":null,"schema":"nirwatch.prediction/1"}'
)


def test_prediction_v2_carries_the_spectrum_hash_and_v1_records_still_decode() -> None:
    raw = b"NIRS raw spectrum message"
    sha = hashlib.sha256(raw).hexdigest()
    old = decode_prediction(PREDICTION_V1)
    assert (old.value, old.t2, old.model_version) == (201.5, 1.0, "v1")
    assert old.spectrum_sha256 == "" and old.schema == PREDICTION_SCHEMA == "nirwatch.prediction/2"
    new = dataclasses.replace(old, spectrum_sha256=sha)
    obj = json.loads(new.encode())
    assert obj["schema"] == "nirwatch.prediction/2" and obj["spectrum_sha256"] == sha
    assert list(obj).index("spectrum_sha256") == list(obj).index("bundle_checksum") + 1
    assert decode_prediction(new.encode()) == new
    # A /1 record never had the field: one that has it is malformed, not a /2 record.
    v1_with_hash = json.dumps({**json.loads(PREDICTION_V1), "spectrum_sha256": sha}).encode()
    with pytest.raises(WireFormatError, match="bad_field.*spectrum_sha256") as exc:
        decode_prediction(v1_with_hash)
    assert exc.value.reason == "bad_field"
    with pytest.raises(WireFormatError, match="nirwatch.prediction/3") as exc:
        decode_prediction(new.encode().replace(b"prediction/2", b"prediction/3"))
    assert exc.value.reason == "unknown_version"
    with pytest.raises(WireFormatError, match="spectrum_sha256 must be a string"):
        decode_prediction(json.dumps({**obj, "spectrum_sha256": 7}).encode())


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
    with pytest.raises(WireFormatError) as exc:
        decode_lab_result(b"[" * 5000)
    assert exc.value.reason == "bad_header"
    with pytest.raises(WireFormatError, match="unknown_version"):
        decode_lab_result(b'{"schema": "nirwatch.lab-result/0"}')


#: A lab result as the ingest adapters have always written it (ingest/lab_results.py before
#: the message modules).
INGEST_LAB = (
    b'{"sample_id":"s-1","instrument_id":"p1","target":"api_content","value":201.5,'
    b'"unit":"mg","sampled_at":1.0,"timestamp":2.0,"method":"hplc",'
    b'"schema":"nirwatch.lab-result/1"}'
)


def test_lab_result_bytes_and_round_trip() -> None:
    lab = LabResult(
        "s-1", 201.5, 2.0, instrument_id="p1", target="api_content", unit="mg",
        sampled_at=1.0, method="hplc",
    )  # fmt: skip
    assert lab.encode() == INGEST_LAB
    assert decode_lab_result(INGEST_LAB) == lab


def test_a_minimal_lims_record_is_a_lab_result() -> None:
    got = decode_lab_result(b'{"sample_id": "s1", "value": 201, "timestamp": 1700000000}')
    assert got == LabResult("s1", 201.0, 1.7e9)
    assert isinstance(got.value, float) and got.method == "" and got.sampled_at is None
    # Fields of a newer LIMS export are ignored; a str is decoded like bytes.
    got = decode_lab_result('{"sample_id": "s1", "value": 1.5, "timestamp": 2, "analyst": "x"}')
    assert got == LabResult("s1", 1.5, 2.0)


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (b"\xff", "bad_header", "not UTF-8 JSON"),
        (b"[1]", "bad_header", "JSON object"),
        (None, "bad_header", "no value"),
        (b'{"sample_id": "s"}', "missing_field", "lacks value, timestamp"),
        # measured_at was never written by anything: it is not a timestamp
        (b'{"sample_id": "s", "value": 1, "measured_at": 1}', "missing_field", "timestamp"),
        (b'{"sample_id": "", "value": 1, "timestamp": 1}', "bad_field", "sample_id"),
        (b'{"sample_id": 7, "value": 1, "timestamp": 1}', "bad_field", "sample_id"),
        (b'{"sample_id": "s", "value": "1", "timestamp": 1}', "bad_field", "value must be a"),
        (b'{"sample_id": "s", "value": NaN, "timestamp": 1}', "bad_field", "value must be a"),
        (b'{"sample_id": "s", "value": true, "timestamp": 1}', "bad_field", "value must be a"),
        (b'{"sample_id": "s", "value": null, "timestamp": 1}', "bad_field", "value must be a"),
        (b'{"sample_id": "s", "value": 1, "timestamp": 1e999}', "bad_field", "timestamp"),
        (b'{"sample_id": "s", "value": 1, "timestamp": 1, "unit": 3}', "bad_field", "unit"),
        (
            b'{"sample_id": "s", "value": 1, "timestamp": 1, "schema": "nirwatch.prediction/1"}',
            "unknown_version",
            "nirwatch.lab-result/1",
        ),
    ],
)
def test_bad_lab_results_are_refused_with_a_reason(
    raw: bytes | None, reason: str, message: str
) -> None:
    with pytest.raises(WireFormatError, match=message) as exc:
        decode_lab_result(raw)
    assert exc.value.reason == reason
