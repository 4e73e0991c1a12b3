"""Turning a :class:`~nirwatch.predictor.BatchPrediction` into prediction records on the wire.

The arrays are converted to Python lists once per batch (vectorised) and the fields shared by
the batch (model version, checksum, limits...) are JSON-encoded once, so the per-spectrum work
is filling one string template. The bytes are identical to what
:meth:`nirwatch.wire.Prediction.encode` writes (a test checks it on every kind of value).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from nirwatch.errors import ModelError
from nirwatch.predictor import BatchPrediction, Predictor
from nirwatch.wire import PREDICTION_SCHEMA, SpectrumHeader

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
#: JSON string literal of a str, as json.dumps writes it (C-accelerated where available).
_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_TRUE, _FALSE = "true", "false"


def _num(x: float | None) -> str:
    """JSON number as json.dumps writes it (``float.__repr__``), ``null`` for None."""
    return "null" if x is None else float.__repr__(x)


def _template(const: dict[str, str]) -> str:
    """%-template of one record, keys in the order of ``nirwatch.wire.Prediction``'s fields.

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
        f'"out_of_model":%s,"releasable":%s,"schema":{c["schema"]}}}'
    )


def check_batch_prediction(bp: BatchPrediction, n: int) -> None:
    """Refuse a prediction whose arrays do not have one entry per spectrum.

    Raises
    ------
    ModelError
        Naming the field, the expected length ``n`` and the length it has.
    """
    for name in ("value", "model", "cnn_value", "pls_value", "t2", "q", "out_of_model"):
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


def prediction_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex characters (one ``os.urandom`` call per batch)."""
    raw = os.urandom(16 * n).hex()
    return [raw[i : i + 32] for i in range(0, 32 * n, 32)]


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
    n = len(headers)
    check_batch_prediction(bp, n)
    value = _finite_or_none(bp.value)
    cnn = _finite_or_none(bp.cnn_value)
    pls = _finite_or_none(bp.pls_value)
    t2 = _finite_or_none(bp.t2)
    q = _finite_or_none(bp.q)
    oom: list[bool] = np.asarray(bp.out_of_model, dtype=bool).tolist()
    model = [str(m) for m in np.asarray(bp.model).tolist()]
    ids = prediction_ids(n)
    releasable = [not o and v is not None for o, v in zip(oom, value, strict=True)]
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
                )
            ).encode()
        )
    return out, releasable
