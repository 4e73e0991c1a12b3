"""Turning a :class:`~nirwatch.models.predictor.BatchPrediction` into prediction records on the wire.

The arrays are converted to Python lists once per batch (vectorised) and the fields shared by
the batch (model version, checksum, limits...) are JSON-encoded once, so the per-spectrum work
is filling one string template. The bytes are identical to what
:meth:`nirwatch.messages.prediction.Prediction.encode` writes (a test checks it on every kind of value).

The audit records of a batch are built from the very lists the JSON is filled from, so the
audit trail holds what is published without parsing the JSON back (a test checks that they
equal the records decoded from the published bytes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from nirwatch.errors import ModelError
from nirwatch.messages.prediction import PREDICTION_SCHEMA
from nirwatch.messages.spectrum import SpectrumHeader, uuid7_hex
from nirwatch.models.predictor import BatchPrediction, Predictor
from nirwatch.records.audit import AuditRecord

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
#: JSON string literal of a str, as json.dumps writes it (C-accelerated where available).
_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_TRUE, _FALSE = "true", "false"


def _num(x: float | None) -> str:
    """JSON number as json.dumps writes it (``float.__repr__``), ``null`` for None."""
    return "null" if x is None else float.__repr__(x)


def _template(const: dict[str, str]) -> str:
    """%-template of one record, keys in the order of ``nirwatch.messages.prediction.Prediction``'s fields.

    Per-record slots are ``%s``; batch constants are already JSON (``%`` escaped).
    """
    c = {k: v.replace("%", "%%") for k, v in const.items()}
    return (
        '{"prediction_id":"%s","message_id":%s,"instrument_id":%s,"sample_id":%s,'
        f'"timestamp":%s,"published_at":{c["published_at"]},"target":{c["target"]},'
        f'"value":%s,"model":%s,"model_version":{c["model_version"]},'
        f'"bundle_checksum":{c["bundle_checksum"]},"product":%s,"batch":%s,'
        f'"unit":{c["unit"]},"fallback_reason":%s,"cnn_value":%s,"pls_value":%s,'
        f'"t2":%s,"q":%s,"t2_limit":{c["t2_limit"]},"q_limit":{c["q_limit"]},'
        f'"out_of_model":%s,"releasable":%s,"interval_low":%s,"interval_high":%s,'
        f'"schema":{c["schema"]}}}'
    )


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


class _Columns(NamedTuple):
    """A batch's per-record values as Python lists, converted once (vectorised)."""

    ids: list[str]
    value: list[float | None]
    model: list[str]
    cnn: list[float | None]
    pls: list[float | None]
    t2: list[float | None]
    q: list[float | None]
    out_of_model: list[bool]
    releasable: list[bool]
    low: list[float | None]
    high: list[float | None]


def _columns(bp: BatchPrediction, n: int) -> _Columns:
    value = _finite_or_none(bp.value)
    oom: list[bool] = np.asarray(bp.out_of_model, dtype=bool).tolist()
    held = np.asarray(bp.out_of_model, dtype=bool)
    for extra in (bp.outside_range, bp.too_wide):
        # An extrapolated value, or one with too wide an interval, is held like an
        # out-of-model one (not releasable).
        if extra is not None:
            held = held | np.asarray(extra, dtype=bool)
    hold: list[bool] = held.tolist()
    none: list[float | None] = [None] * n
    return _Columns(
        ids=prediction_ids(n),
        value=value,
        model=[str(m) for m in np.asarray(bp.model).tolist()],
        cnn=_finite_or_none(bp.cnn_value),
        pls=_finite_or_none(bp.pls_value),
        t2=_finite_or_none(bp.t2),
        q=_finite_or_none(bp.q),
        out_of_model=oom,
        releasable=[not h and v is not None for h, v in zip(hold, value, strict=True)],
        low=none if bp.interval_low is None else _finite_or_none(bp.interval_low),
        high=none if bp.interval_high is None else _finite_or_none(bp.interval_high),
    )


class EncodedBatch(NamedTuple):
    """One batch's prediction records, ready to publish (and to audit)."""

    #: The JSON records, in the order of the headers.
    values: list[bytes]
    #: Per record: a finite value, inside the applicability domain and the calibrated range.
    releasable: list[bool]
    #: The audit records of exactly these values (empty unless ``raw_values`` was given).
    audit: list[AuditRecord]


def encode_predictions(
    headers: Sequence[SpectrumHeader],
    bp: BatchPrediction,
    predictor: Predictor,
    published_at: float,
) -> tuple[list[bytes], list[bool]]:
    """Encode one ``nirwatch.prediction/1`` record per spectrum.

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
) -> EncodedBatch:
    """Encode one ``nirwatch.prediction/1`` record per spectrum, and its audit record.

    Parameters
    ----------
    headers : sequence of SpectrumHeader, length n
    bp : BatchPrediction with arrays of length n
    predictor : Predictor
        Its version, checksum, target and unit go into every record.
    published_at : float
        Unix time stamped on the batch.
    raw_values : sequence of bytes, length n, optional
        The consumed spectrum messages (hashed with SHA-256 into the audit records).
    """
    n = len(headers)
    check_batch_prediction(bp, n)
    if raw_values is not None and len(raw_values) != n:
        raise ModelError(f"expected {n} raw spectrum values to audit, got {len(raw_values)}")
    c = _columns(bp, n)
    ids, value, model, cnn, pls, t2, q, oom, releasable, low, high = c
    # Fields shared by the whole batch are encoded once; per record only its own values are.
    const = {
        "published_at": _dumps(published_at),
        "target": _dumps(predictor.target),
        "model_version": _dumps(predictor.version),
        "bundle_checksum": _dumps(predictor.checksum),
        "unit": _dumps(predictor.unit),
        "t2_limit": _dumps(_limit(bp.t2_limit)),
        "q_limit": _dumps(_limit(bp.q_limit)),
        "schema": _dumps(PREDICTION_SCHEMA),
    }
    template = _template(const)
    reasons = [_dumps(r) for r in bp.fallback_reason]
    out: list[bytes] = []
    append = out.append
    for i, h in enumerate(headers):
        append(
            (
                template
                % (
                    ids[i],
                    _str(h.message_id),
                    _str(h.instrument_id),
                    _str(h.sample_id),
                    _num(h.timestamp),
                    _num(value[i]),
                    _str(model[i]),
                    _str(h.product),
                    _str(h.batch),
                    reasons[i],
                    _num(cnn[i]),
                    _num(pls[i]),
                    _num(t2[i]),
                    _num(q[i]),
                    _TRUE if oom[i] else _FALSE,
                    _TRUE if releasable[i] else _FALSE,
                    _num(low[i]),
                    _num(high[i]),
                )
            ).encode()
        )
    audit = (
        []
        if raw_values is None
        else _audit_records(headers, bp, predictor, published_at, raw_values, c)
    )
    return EncodedBatch(out, releasable, audit)


def _audit_records(
    headers: Sequence[SpectrumHeader],
    bp: BatchPrediction,
    predictor: Predictor,
    published_at: float,
    raw_values: Sequence[bytes],
    c: _Columns,
) -> list[AuditRecord]:
    # Filled from the same lists as the JSON (NaN/inf already None), so both say the same.
    ids, value, model, cnn, pls, t2, q, oom, releasable, _, _ = c
    t2_limit, q_limit = _limit(bp.t2_limit), _limit(bp.q_limit)
    version, checksum = predictor.version, predictor.checksum
    target, unit = predictor.target, predictor.unit
    sha256 = hashlib.sha256
    return [
        AuditRecord(
            prediction_id=ids[i],
            message_id=h.message_id,
            sample_id=h.sample_id,
            instrument_id=h.instrument_id,
            timestamp=h.timestamp,
            published_at=published_at,
            model_version=version,
            bundle_checksum=checksum,
            spectrum_sha256=sha256(raw_values[i]).hexdigest(),
            target=target,
            value=value[i],
            model=model[i],
            fallback_reason=bp.fallback_reason[i],
            cnn_value=cnn[i],
            pls_value=pls[i],
            t2=t2[i],
            q=q[i],
            t2_limit=t2_limit,
            q_limit=q_limit,
            out_of_model=oom[i],
            releasable=releasable[i],
            product=h.product,
            batch=h.batch,
            unit=unit,
        )
        for i, h in enumerate(headers)
    ]
