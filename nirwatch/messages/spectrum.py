"""Spectrum messages: a versioned binary format, its encoder, validator and decoders.

Spectrum message, version 1 (Kafka value, little-endian)::

    offset  size  field
    0       4     magic b"NIRS"
    4       1     version (1)
    5       1     flags (0; reserved)
    6       2     header_len H (uint16)
    8       H     header: UTF-8 JSON object (see SpectrumHeader)
    8+H     4*n   absorbances as float32, n = header["n_points"]

The Kafka key is the instrument id (UTF-8) so that each instrument's spectra stay in order.
A spectrum is validated at both edges by the same checks: :func:`encode_spectrum` refuses what
:func:`decode_spectrum` would refuse, with the same :class:`~nirwatch.errors.WireFormatError`
reason code (one of :data:`nirwatch.messages.codec.REASONS`).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from nirwatch.errors import WireFormatError
from nirwatch.grid import points_in_grid
from nirwatch.messages.codec import parse_json_object

MAGIC = b"NIRS"
VERSION = 1
_PREFIX = struct.Struct("<4sBBH")
MAX_POINTS = 16384
MAX_MESSAGE_BYTES = 8 + 65535 + 4 * MAX_POINTS

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


_FIELDS = tuple(f.name for f in fields(SpectrumHeader))


def _check_header(obj: Mapping[str, Any]) -> None:
    """The header checks of both edges, in one order: ``missing_field``, then ``bad_field``."""
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


def _check_grid(grid: str, n_points: int, expected_grid: str | None) -> None:
    """``unknown_grid``, ``length_mismatch`` (grid vs ``n_points``) or ``grid_mismatch``."""
    n_grid = points_in_grid(grid)
    if n_grid is None:
        raise WireFormatError("unknown_grid", f"cannot interpret wavelength grid id {grid!r}")
    if n_grid != n_points:
        raise WireFormatError(
            "length_mismatch", f"grid {grid} has {n_grid} points, header says {n_points}"
        )
    if expected_grid is not None and grid != expected_grid:
        raise WireFormatError("grid_mismatch", f"expected grid {expected_grid}, got {grid}")


def _encode_parts(
    header: SpectrumHeader, absorbances: np.ndarray
) -> tuple[dict[str, Any], bytes, np.ndarray]:
    # Shallow field dict: dataclasses.asdict deep-copies and costs more than the rest here.
    obj = {name: getattr(header, name) for name in _FIELDS}
    head = json.dumps(obj, separators=(",", ":"), default=repr).encode()
    values = np.ascontiguousarray(np.asarray(absorbances, dtype="<f4").reshape(-1))
    return obj, head, values


def encode_spectrum(
    header: SpectrumHeader, absorbances: np.ndarray, expected_grid: str | None = None
) -> bytes:
    """Encode one spectrum, refusing what :func:`decode_spectrum` would refuse.

    The checks and their order are the decoder's, so a refusal carries the reason code the
    worker would give. Values in ``extra`` that JSON cannot carry are written as their
    ``repr``.

    Raises
    ------
    WireFormatError
        ``too_large``, ``missing_field``, ``bad_field``, ``unknown_grid``,
        ``length_mismatch``, ``grid_mismatch`` (not ``expected_grid``) or ``non_finite``.
    """
    obj, head, values = _encode_parts(header, absorbances)
    size = _PREFIX.size + len(head) + 4 * values.size
    if size > MAX_MESSAGE_BYTES:
        raise WireFormatError("too_large", f"{size} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(head) > 65535:
        raise WireFormatError("too_large", f"header is {len(head)} bytes, at most 65535 allowed")
    _check_header(obj)
    _check_grid(header.grid, header.n_points, expected_grid)
    if values.size != header.n_points:
        raise WireFormatError(
            "length_mismatch",
            f"header says n_points={header.n_points}, got {values.size} absorbances",
        )
    if not np.isfinite(values).all():
        raise WireFormatError("non_finite", "absorbances contain NaN or inf")
    return _PREFIX.pack(MAGIC, VERSION, 0, len(head)) + head + values.tobytes()


def encode_spectrum_unchecked(header: SpectrumHeader, absorbances: np.ndarray) -> bytes:
    """Encode without validation, so a refused spectrum can be dead-lettered as it came.

    Header fields that JSON cannot carry are written as their ``repr``; a header over
    64 KiB is cut (its length field saturates).
    """
    _, head, values = _encode_parts(header, absorbances)
    return _PREFIX.pack(MAGIC, VERSION, 0, min(len(head), 65535)) + head + values.tobytes()


def _parse_header(raw: bytes) -> SpectrumHeader:
    obj = parse_json_object(raw, "header")
    _check_header(obj)
    return SpectrumHeader(
        message_id=obj["message_id"],
        instrument_id=obj["instrument_id"],
        sample_id=obj["sample_id"],
        timestamp=float(obj["timestamp"]),
        grid=obj["grid"],
        n_points=obj["n_points"],
        product=obj.get("product", ""),
        batch=obj.get("batch", ""),
        units=obj.get("units", "absorbance"),
        extra=obj.get("extra", {}),
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
    _check_grid(header.grid, header.n_points, expected_grid)
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
