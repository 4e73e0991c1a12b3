"""Prediction records: UTF-8 JSON with ``"schema": "nirwatch.prediction/2"``, keyed by instrument.

The inference worker publishes one per spectrum (:mod:`inference.records` writes the same bytes
as :meth:`Prediction.encode`, faster); the drift monitor and the demo read them with
:func:`decode_prediction`. :class:`Prediction`'s fields are the one list of what a prediction
holds: the worker's record template and the audit trail's columns
(:mod:`nirwatch.records.audit`) are derived from them.

Versions: ``/2`` added ``spectrum_sha256``. :func:`decode_prediction` still reads ``/1`` records
(published before; their ``spectrum_sha256`` is ``""``, unknown) and returns them as the
current version, so a decoded prediction encodes as a valid ``/2`` record.
"""

from __future__ import annotations

from dataclasses import dataclass

from nirwatch.errors import WireFormatError
from nirwatch.messages.codec import decode_json_object, encode_json_record, parse_json_object

PREDICTION_SCHEMA = "nirwatch.prediction/2"
#: The previous version, still decoded: the same fields less ``spectrum_sha256``.
PREDICTION_SCHEMA_V1 = "nirwatch.prediction/1"


@dataclass(frozen=True, slots=True)
class Prediction:
    """One published prediction (JSON on the wire, schema ``nirwatch.prediction/2``).

    ``model`` is the model that produced ``value`` (``"cnn"`` or ``"pls"``);
    ``fallback_reason`` says why PLS was used when the CNN was not. ``value`` is ``None``
    only when no model could predict. ``out_of_model`` marks a spectrum outside the
    calibration's 99 % Hotelling T² or Q limits: it is not releasable. Nor is a value outside
    the range of the calibration's reference values (the bundle's ``target.range``): an
    extrapolation has ``releasable`` false with ``out_of_model`` false. ``interval_low`` and
    ``interval_high`` bound the bundle's conformal prediction interval (None when the bundle
    has none); an interval wider than the bundle's ``max_interval_width`` is not releasable.
    ``spectrum_sha256`` is the SHA-256 (hex) of the raw spectrum message (the Kafka record's
    value) the prediction was made from, as the audit trail records it; ``""`` when unknown
    (a ``/1`` record). The JSON keys are in field order.
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
    spectrum_sha256: str = ""
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
        """The record's JSON (NaN or infinity raise ValueError: JSON has neither)."""
        return encode_json_record(self)


def decode_prediction(value: bytes | None) -> Prediction:
    """Decode and validate a prediction record (``/2``, or ``/1`` with no hash).

    Raises
    ------
    WireFormatError
        ``bad_header``, ``unknown_version`` (another schema), ``missing_field`` or
        ``bad_field`` (an unknown field, or a value of the wrong type).
    """
    obj = parse_json_object(value, "prediction")
    schema = obj.get("schema")
    if schema == PREDICTION_SCHEMA_V1:
        if "spectrum_sha256" in obj:
            raise WireFormatError(
                "bad_field",
                f"unknown prediction fields: ['spectrum_sha256'] (in a {schema} record)",
            )
        obj["schema"] = PREDICTION_SCHEMA
    elif schema != PREDICTION_SCHEMA:
        raise WireFormatError(
            "unknown_version",
            f"expected schema {PREDICTION_SCHEMA} or {PREDICTION_SCHEMA_V1}, got {schema!r}",
        )
    return decode_json_object(obj, Prediction, "prediction")
