"""Turning a :class:`~nirwatch.predictor.BatchPrediction` into prediction records on the wire.

The arrays are converted to Python lists once per batch (vectorised), so the per-spectrum work
is one dict and one ``json.dumps``: the same JSON that :meth:`nirwatch.wire.Prediction.encode`
writes (``decode_prediction`` reads it back; a test checks both agree).
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
    t2_limit, q_limit = _limit(bp.t2_limit), _limit(bp.q_limit)
    version, checksum = predictor.version, predictor.checksum
    target, unit = predictor.target, predictor.unit
    releasable = [not o and v is not None for o, v in zip(oom, value, strict=True)]
    out: list[bytes] = []
    append = out.append
    for i, h in enumerate(headers):
        # Keys in the order of nirwatch.wire.Prediction's fields.
        append(
            _dumps(
                {
                    "prediction_id": ids[i],
                    "message_id": h.message_id,
                    "instrument_id": h.instrument_id,
                    "sample_id": h.sample_id,
                    "timestamp": h.timestamp,
                    "published_at": published_at,
                    "target": target,
                    "value": value[i],
                    "model": model[i],
                    "model_version": version,
                    "bundle_checksum": checksum,
                    "product": h.product,
                    "batch": h.batch,
                    "unit": unit,
                    "fallback_reason": bp.fallback_reason[i],
                    "cnn_value": cnn[i],
                    "pls_value": pls[i],
                    "t2": t2[i],
                    "q": q[i],
                    "t2_limit": t2_limit,
                    "q_limit": q_limit,
                    "out_of_model": oom[i],
                    "releasable": releasable[i],
                    "schema": PREDICTION_SCHEMA,
                }
            ).encode()
        )
    return out, releasable
