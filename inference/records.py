"""Turning a :class:`~nirwatch.models.predictor.BatchPrediction` into prediction records on the wire.

Each field of :class:`~nirwatch.messages.prediction.Prediction` gets its values for the whole
batch at once: a Python list per field that varies per record (converted from the arrays once,
vectorised, then JSON-encoded column by column) and one JSON value per field shared by the
batch (model version, checksum, limits...), written into the record template once. The
per-spectrum work is filling that template. The bytes are identical to what
:meth:`Prediction.encode` writes (a test checks it on every kind of value).

The audit records of a batch are built from the very lists the JSON is filled from, so the
audit trail holds what is published without parsing the JSON back (a test checks that they
equal the records decoded from the published bytes). Each raw spectrum message is hashed
once: the SHA-256 is the record's ``spectrum_sha256`` and the audit record's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, NamedTuple

import numpy as np

from nirwatch.errors import ModelError
from nirwatch.messages.prediction import PREDICTION_SCHEMA, Prediction
from nirwatch.messages.spectrum import SpectrumHeader, uuid7_hex
from nirwatch.models.predictor import BatchPrediction, Predictor
from nirwatch.records.audit import COLUMNS, AuditRecord

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
#: JSON string literal of a str, as json.dumps writes it (C-accelerated where available).
_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
#: JSON number as json.dumps writes it.
_float = float.__repr__
_bool = {True: "true", False: "false"}.__getitem__


def _nums(values: list[float | None]) -> list[str]:
    """JSON numbers as json.dumps writes them (``float.__repr__``), ``null`` for None."""
    return ["null" if x is None else _float(x) for x in values]


#: (name, type as source text) of each Prediction field, in the order of the JSON keys.
_FIELDS = tuple((f.name, str(f.type)) for f in fields(Prediction))
#: Per field type, how a column of values is written (as json.dumps writes each); C-level
#: functions mapped where there is one (a record costs ~10 µs, so every call counts).
_JSON: dict[str, Callable[[list[Any]], list[str]]] = {
    "str": lambda col: list(map(_str, col)),
    "str | None": lambda col: list(map(_dumps, col)),
    "float": lambda col: list(map(_float, col)),
    "float | None": _nums,
    "bool": lambda col: list(map(_bool, col)),
}
#: Prediction fields copied from the spectrum's header.
_FROM_HEADER = {f.name for f in fields(SpectrumHeader)} & {name for name, _ in _FIELDS}


def _template(batch: dict[str, Any]) -> str:
    """%-template of one record: the batch's values written in, a ``%s`` slot for the others.

    Keys in the order of Prediction's fields (``%`` in the batch's values escaped).
    """
    parts = [
        f'"{name}":' + (_dumps(batch[name]).replace("%", "%%") if name in batch else "%s")
        for name, _ in _FIELDS
    ]
    return "{" + ",".join(parts) + "}"


def check_batch_prediction(bp: BatchPrediction, n: int) -> None:
    """Refuse a prediction whose arrays do not have one entry per spectrum.

    Raises
    ------
    ModelError
        Naming the field, the expected length ``n`` and the length it has.
    """
    names = ["value", "model", "cnn_value", "pls_value", "t2", "q", "out_of_model"]
    names += [
        name
        for name in ("outside_range", "interval_low", "interval_high", "too_wide")
        if getattr(bp, name) is not None
    ]
    for name in names:
        got = np.shape(getattr(bp, name))
        if got != (n,):
            raise ModelError(f"predictor returned {name} of shape {got}, expected ({n},)")
    if len(bp.fallback_reason) != n:
        raise ModelError(
            f"predictor returned {len(bp.fallback_reason)} fallback reasons, expected {n}"
        )


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """Floats as a list, NaN/inf as None (JSON has no NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    out: list[float | None] = arr.tolist()
    if not np.isfinite(arr).all():
        for i in np.flatnonzero(~np.isfinite(arr)).tolist():
            out[i] = None
    return out


def _limit(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def prediction_ids(n: int, now: float | None = None) -> list[str]:
    """``n`` prediction ids: UUIDv7, time-ordered for the audit trail's index (see
    :func:`nirwatch.messages.spectrum.uuid7_hex`)."""
    return uuid7_hex(n, now)


def _per_record(
    headers: Sequence[SpectrumHeader], bp: BatchPrediction, hashes: list[str]
) -> dict[str, list[Any]]:
    """The values of the fields that vary per record, as Python lists (converted once)."""
    n = len(hashes)
    value = _finite_or_none(bp.value)
    held = np.asarray(bp.out_of_model, dtype=bool)
    for extra in (bp.outside_range, bp.too_wide):
        # An extrapolated value, or one with too wide an interval, is held like an
        # out-of-model one (not releasable).
        if extra is not None:
            held = held | np.asarray(extra, dtype=bool)
    none: list[float | None] = [None] * n
    out: dict[str, list[Any]] = {
        name: [getattr(h, name) for h in headers] for name in sorted(_FROM_HEADER)
    }
    out.update(
        prediction_id=prediction_ids(n),
        spectrum_sha256=hashes,
        value=value,
        model=[str(m) for m in np.asarray(bp.model).tolist()],
        fallback_reason=list(bp.fallback_reason),
        cnn_value=_finite_or_none(bp.cnn_value),
        pls_value=_finite_or_none(bp.pls_value),
        t2=_finite_or_none(bp.t2),
        q=_finite_or_none(bp.q),
        out_of_model=np.asarray(bp.out_of_model, dtype=bool).tolist(),
        releasable=[not h and v is not None for h, v in zip(held.tolist(), value, strict=True)],
        interval_low=none if bp.interval_low is None else _finite_or_none(bp.interval_low),
        interval_high=none if bp.interval_high is None else _finite_or_none(bp.interval_high),
    )
    return out


def _per_batch(bp: BatchPrediction, predictor: Predictor, published_at: float) -> dict[str, Any]:
    """The values of the fields shared by the whole batch."""
    return {
        "published_at": published_at,
        "target": predictor.target,
        "model_version": predictor.version,
        "bundle_checksum": predictor.checksum,
        "unit": predictor.unit,
        "t2_limit": _limit(bp.t2_limit),
        "q_limit": _limit(bp.q_limit),
        "schema": PREDICTION_SCHEMA,
    }


class EncodedBatch(NamedTuple):
    """One batch's prediction records, ready to publish (and to audit)."""

    #: The JSON records, in the order of the headers.
    values: list[bytes]
    #: Per record: a finite value, inside the applicability domain and the calibrated range.
    releasable: list[bool]
    #: The audit records of exactly these values (empty without ``raw_values`` or ``audit``).
    audit: list[AuditRecord]


def encode_predictions(
    headers: Sequence[SpectrumHeader],
    bp: BatchPrediction,
    predictor: Predictor,
    published_at: float,
) -> tuple[list[bytes], list[bool]]:
    """Encode one prediction record per spectrum (``spectrum_sha256`` empty: no raw values).

    Returns
    -------
    values : list of bytes
        The JSON records, in the order of ``headers``.
    releasable : list of bool
        Per record: inside the applicability domain and with a finite value.
    """
    enc = encode_batch(headers, bp, predictor, published_at)
    return enc.values, enc.releasable


def encode_batch(
    headers: Sequence[SpectrumHeader],
    bp: BatchPrediction,
    predictor: Predictor,
    published_at: float,
    raw_values: Sequence[bytes] | None = None,
    *,
    audit: bool = True,
) -> EncodedBatch:
    """Encode one prediction record per spectrum, and its audit record.

    Parameters
    ----------
    headers : sequence of SpectrumHeader, length n
    bp : BatchPrediction with arrays of length n
    predictor : Predictor
        Its version, checksum, target and unit go into every record.
    published_at : float
        Unix time stamped on the batch.
    raw_values : sequence of bytes, length n, optional
        The consumed spectrum messages, hashed with SHA-256 into each record's
        ``spectrum_sha256`` (``""`` without them) and its audit record.
    audit : bool
        Build the audit records too (only with ``raw_values``).
    """
    n = len(headers)
    check_batch_prediction(bp, n)
    if raw_values is None:
        hashes = [""] * n
    elif len(raw_values) != n:
        raise ModelError(f"expected {n} raw spectrum values to audit, got {len(raw_values)}")
    else:
        sha256 = hashlib.sha256
        hashes = [sha256(raw).hexdigest() for raw in raw_values]
    records = _per_record(headers, bp, hashes)
    batch = _per_batch(bp, predictor, published_at)
    missing = [name for name, _ in _FIELDS if name not in records and name not in batch]
    if missing:  # a new Prediction field: _per_record or _per_batch must give its values
        raise TypeError(f"Prediction fields without values in inference.records: {missing}")
    template = _template(batch)
    # Column by column: one map over each field's values, then one % per record.
    columns = [_JSON[kind](records[name]) for name, kind in _FIELDS if name in records]
    out = [(template % row).encode() for row in zip(*columns, strict=True)]
    audited = [] if raw_values is None or not audit else _audit_records(records, batch, n)
    return EncodedBatch(out, records["releasable"], audited)


def _audit_records(
    records: dict[str, list[Any]], batch: dict[str, Any], n: int
) -> list[AuditRecord]:
    # Filled from the same values as the JSON (NaN/inf already None, the spectrum's hash
    # computed once), so both say the same.
    columns = [records[c] if c in records else [batch[c]] * n for c in COLUMNS]
    return [AuditRecord._make(row) for row in zip(*columns, strict=True)]
