"""Versioned wire format for spectra and predictions.

Spectrum message, version 1 (Kafka value, little-endian)::

    offset  size  field
    0       4     magic b"NIRS"
    4       1     version (1)
    5       1     flags (0; reserved)
    6       2     header_len H (uint16)
    8       H     header: UTF-8 JSON object (see SpectrumHeader)
    8+H     4*n   absorbances as float32, n = header["n_points"]

The Kafka key is the instrument id (UTF-8) so that each instrument's spectra stay in order.
Predictions are small records without arrays: UTF-8 JSON with ``"schema": "nirwatch.prediction/1"``
(see :class:`Prediction`). Both are validated at both edges; a failure raises
:class:`~nirwatch.errors.WireFormatError` with a bounded ``reason`` code.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from nirwatch.errors import WireFormatError
from nirwatch.grid import points_in_grid

MAGIC = b"NIRS"
VERSION = 1
PREDICTION_SCHEMA = "nirwatch.prediction/1"
_PREFIX = struct.Struct("<4sBBH")
MAX_POINTS = 16384
MAX_MESSAGE_BYTES = 8 + 65535 + 4 * MAX_POINTS

#: Every reason code a decoder can give; bounded so it can label metrics.
REASONS = (
    "too_short",
    "too_large",
    "bad_magic",
    "unknown_version",
    "bad_header",
    "missing_field",
    "bad_field",
    "unknown_grid",
    "length_mismatch",
    "non_finite",
    "grid_mismatch",
    # Ingest only: a dropped file that cannot be read as spectra (ingest.file_drop).
    "bad_file",
)

_REQUIRED = ("message_id", "instrument_id", "sample_id", "timestamp", "grid", "n_points")


@dataclass(frozen=True, slots=True)
class SpectrumHeader:
    """Metadata of one spectrum.

    ``timestamp`` is the instrument's acquisition time in seconds since the Unix epoch (UTC);
    ``grid`` is a wavelength grid id (see :mod:`nirwatch.grid`); ``units`` names the ordinate.
    """

    message_id: str
    instrument_id: str
    sample_id: str
    timestamp: float
    grid: str
    n_points: int
    product: str = ""
    batch: str = ""
    units: str = "absorbance"
    extra: dict[str, Any] = field(default_factory=dict)


def uuid7_hex(n: int, now: float | None = None) -> list[str]:
    """``n`` UUIDv7 ids (RFC 9562) as 32 hex characters: time-ordered, 74 random bits each.

    Time-ordered rather than random (UUIDv4) where ids are indexed (the audit trail): random
    keys dirty a different B-tree page per row, and appends slowed 4x as the table grew to
    200,000 rows; ids that grow with time land at the right edge. One ``os.urandom`` call.
    """
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    head = (ms << 80) | (0x7 << 76)  # unix_ts_ms, version 7
    raw = os.urandom(10 * n)
    out = []
    for i in range(n):
        r = int.from_bytes(raw[10 * i : 10 * i + 10], "big")
        rand_a, rand_b = (r >> 68) & 0xFFF, r & ((1 << 62) - 1)
        out.append(f"{head | (rand_a << 64) | (0b10 << 62) | rand_b:032x}")  # variant 10
    return out


def new_message_id() -> str:
    """A new 128-bit id as 32 hex characters (UUIDv7: unique and time-ordered)."""
    return uuid7_hex(1)[0]


def encode_spectrum(header: SpectrumHeader, absorbances: np.ndarray) -> bytes:
    """Encode one spectrum; validates length and finiteness before it leaves the process."""
    values = np.ascontiguousarray(absorbances, dtype="<f4").reshape(-1)
    if values.size != header.n_points:
        raise WireFormatError(
            "length_mismatch",
            f"header says n_points={header.n_points}, got {values.size} absorbances",
        )
    if not np.isfinite(values).all():
        raise WireFormatError("non_finite", "absorbances contain NaN or inf")
    head = json.dumps(asdict(header), separators=(",", ":")).encode()
    if len(head) > 65535:
        raise WireFormatError("too_large", f"header is {len(head)} bytes, at most 65535 allowed")
    return _PREFIX.pack(MAGIC, VERSION, 0, len(head)) + head + values.tobytes()


def _parse_header(raw: bytes) -> SpectrumHeader:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError("bad_header", f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(
            "bad_header", f"header must be a JSON object, got {type(obj).__name__}"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise WireFormatError("missing_field", f"header lacks {', '.join(missing)}")
    for key in ("message_id", "instrument_id", "sample_id", "grid"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise WireFormatError(
                "bad_field", f"{key} must be a non-empty string, got {obj[key]!r}"
            )
    ts, n = obj["timestamp"], obj["n_points"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not abs(ts) < 1e300:
        raise WireFormatError("bad_field", f"timestamp must be finite epoch seconds, got {ts!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_POINTS:
        raise WireFormatError("bad_field", f"n_points must be an int in 1..{MAX_POINTS}, got {n!r}")
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise WireFormatError("bad_field", f"extra must be an object, got {type(extra).__name__}")
    for key in ("product", "batch", "units"):
        if key in obj and not isinstance(obj[key], str):
            raise WireFormatError("bad_field", f"{key} must be a string, got {obj[key]!r}")
    return SpectrumHeader(
        message_id=obj["message_id"],
        instrument_id=obj["instrument_id"],
        sample_id=obj["sample_id"],
        timestamp=float(ts),
        grid=obj["grid"],
        n_points=n,
        product=obj.get("product", ""),
        batch=obj.get("batch", ""),
        units=obj.get("units", "absorbance"),
        extra=extra,
    )


def _check_and_parse(value: bytes | None, expected_grid: str | None) -> tuple[SpectrumHeader, int]:
    """Validate everything but the absorbances' finiteness; return the header and body offset."""
    if value is None or len(value) < _PREFIX.size:
        got = "no value" if value is None else f"{len(value)} bytes"
        raise WireFormatError("too_short", f"expected at least {_PREFIX.size} bytes, got {got}")
    if len(value) > MAX_MESSAGE_BYTES:
        raise WireFormatError("too_large", f"{len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    magic, version, _flags, head_len = _PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise WireFormatError("bad_magic", f"expected magic {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise WireFormatError("unknown_version", f"expected version {VERSION}, got {version}")
    body_at = _PREFIX.size + head_len
    if len(value) < body_at:
        raise WireFormatError(
            "too_short", f"header_len={head_len} runs past the {len(value)}-byte message"
        )
    header = _parse_header(value[_PREFIX.size : body_at])
    n_grid = points_in_grid(header.grid)
    if n_grid is None:
        raise WireFormatError(
            "unknown_grid", f"cannot interpret wavelength grid id {header.grid!r}"
        )
    if n_grid != header.n_points:
        raise WireFormatError(
            "length_mismatch",
            f"grid {header.grid} has {n_grid} points, header says {header.n_points}",
        )
    if expected_grid is not None and header.grid != expected_grid:
        raise WireFormatError("grid_mismatch", f"expected grid {expected_grid}, got {header.grid}")
    n_bytes = len(value) - body_at
    if n_bytes != 4 * header.n_points:
        raise WireFormatError(
            "length_mismatch",
            f"expected {4 * header.n_points} bytes of float32 for {header.n_points} points, got {n_bytes}",
        )
    return header, body_at


def decode_spectrum(
    value: bytes | None, expected_grid: str | None = None
) -> tuple[SpectrumHeader, np.ndarray]:
    """Decode and validate one spectrum message.

    Returns
    -------
    header : SpectrumHeader
    absorbances : ndarray of shape (n_points,), float32
    """
    header, body_at = _check_and_parse(value, expected_grid)
    absorbances = np.frombuffer(value, dtype="<f4", offset=body_at)  # type: ignore[arg-type]
    if not np.isfinite(absorbances).all():
        raise WireFormatError("non_finite", "absorbances contain NaN or inf")
    return header, absorbances


@dataclass(slots=True)
class DecodedBatch:
    """Result of decoding many messages: the good ones stacked, the bad ones with reasons."""

    headers: list[SpectrumHeader]
    spectra: np.ndarray  # (n_good, n_points) float32
    good_index: list[int]
    errors: list[tuple[int, WireFormatError]]


def decode_batch(values: Sequence[bytes | None], expected_grid: str | None = None) -> DecodedBatch:
    """Decode a micro-batch; a bad message never stops the good ones.

    All good spectra must share one grid (``expected_grid``, or the first good message's grid);
    others are reported as ``grid_mismatch``. Headers are checked one by one; the absorbances
    are copied once into one (n, n_points) matrix and checked for finiteness in one pass.
    """
    headers: list[SpectrumHeader] = []
    bodies: list[memoryview] = []
    good: list[int] = []
    errors: list[tuple[int, WireFormatError]] = []
    grid = expected_grid
    for i, value in enumerate(values):
        try:
            header, body_at = _check_and_parse(value, grid)
        except WireFormatError as exc:
            errors.append((i, exc))
            continue
        grid = header.grid
        headers.append(header)
        bodies.append(memoryview(value)[body_at:])  # type: ignore[arg-type]
        good.append(i)
    if not bodies:
        return DecodedBatch(headers, np.empty((0, 0), dtype=np.float32), good, errors)
    spectra = np.frombuffer(bytearray().join(bodies), dtype="<f4").reshape(len(bodies), -1)
    finite = np.isfinite(spectra).all(axis=1)
    if not finite.all():
        keep = np.flatnonzero(finite)
        for j in np.flatnonzero(~finite):
            errors.append(
                (good[j], WireFormatError("non_finite", "absorbances contain NaN or inf"))
            )
        errors.sort(key=lambda e: e[0])
        headers = [headers[j] for j in keep]
        good = [good[j] for j in keep]
        spectra = spectra[keep]
    return DecodedBatch(headers, spectra, good, errors)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One published prediction (JSON on the wire, schema ``nirwatch.prediction/1``).

    ``model`` is the model that produced ``value`` (``"cnn"`` or ``"pls"``);
    ``fallback_reason`` says why PLS was used when the CNN was not. ``value`` is ``None``
    only when no model could predict. ``out_of_model`` marks a spectrum outside the
    calibration's 99 % Hotelling T² or Q limits: it is not releasable. Nor is a value outside
    the range of the calibration's reference values (the bundle's ``target.range``): an
    extrapolation has ``releasable`` false with ``out_of_model`` false. ``interval_low`` and
    ``interval_high`` bound the bundle's conformal prediction interval (None when the bundle
    has none); an interval wider than the bundle's ``max_interval_width`` is not releasable.
    """

    prediction_id: str
    message_id: str
    instrument_id: str
    sample_id: str
    timestamp: float
    published_at: float
    target: str
    value: float | None
    model: str
    model_version: str
    bundle_checksum: str
    product: str = ""
    batch: str = ""
    unit: str = ""
    fallback_reason: str | None = None
    cnn_value: float | None = None
    pls_value: float | None = None
    t2: float | None = None
    q: float | None = None
    t2_limit: float | None = None
    q_limit: float | None = None
    out_of_model: bool = False
    releasable: bool = True
    interval_low: float | None = None
    interval_high: float | None = None
    schema: str = PREDICTION_SCHEMA

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()


R = TypeVar("R")


def decode_json_record(value: bytes, cls: type[R], schema: str, what: str) -> R:
    """Decode a JSON record with a ``schema`` field into dataclass ``cls``, validating its keys.

    Raises
    ------
    WireFormatError
        ``bad_header`` (not a UTF-8 JSON object), ``unknown_version`` (other schema),
        ``bad_field`` (unknown keys) or ``missing_field``.
    """
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError("bad_header", f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError("bad_header", f"{what} must be a JSON object")
    if obj.get("schema") != schema:
        raise WireFormatError(
            "unknown_version", f"expected schema {schema}, got {obj.get('schema')!r}"
        )
    unknown = set(obj) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    if unknown:
        raise WireFormatError("bad_field", f"unknown {what} fields: {sorted(unknown)}")
    try:
        return cls(**obj)
    except TypeError as exc:
        raise WireFormatError("missing_field", str(exc)) from None


def decode_prediction(value: bytes) -> Prediction:
    """Decode and validate a prediction record."""
    return decode_json_record(value, Prediction, PREDICTION_SCHEMA, "prediction")
