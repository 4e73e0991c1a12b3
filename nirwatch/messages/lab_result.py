"""Lab reference results: JSON records on the lab-results topic, keyed by sample id.

A tablet pulled from the line is assayed in the lab (e.g. HPLC) and the value arrives minutes
to hours after its spectrum; the drift monitor joins it to the prediction and the retrain
service to the spectrum, both by ``sample_id``. Schema ``nirwatch.lab-result/1``, as the ingest
adapters write it::

    {"sample_id": "probe-1-00000042", "instrument_id": "probe-1", "target": "api_content",
     "value": 201.3, "unit": "mg", "sampled_at": 1764095000.0, "timestamp": 1764095600.0,
     "method": "hplc", "schema": "nirwatch.lab-result/1"}

Only ``sample_id``, ``value`` and ``timestamp`` are required, so a LIMS can send the minimal
``{"sample_id": ..., "value": ..., "timestamp": ...}``: a record without ``schema`` is read as
version 1, fields this version does not know are ignored, and the context fields default to
empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nirwatch.errors import WireFormatError
from nirwatch.messages.codec import decode_json_record, encode_json_record

LAB_RESULT_SCHEMA = "nirwatch.lab-result/1"


@dataclass(frozen=True, slots=True)
class LabResult:
    """One lab reference value; times are epoch seconds (UTC).

    ``timestamp`` is when the lab result was produced, ``sampled_at`` when the tablet was
    measured inline. ``LabResult(sample_id, value, timestamp)`` is a complete record; the
    context fields are keyword-only. The fields are declared in the order of the JSON keys
    (which keeps the bytes the ingest adapters have always written).
    """

    sample_id: str
    instrument_id: str = field(default="", kw_only=True)
    target: str = field(default="", kw_only=True)
    value: float
    unit: str = field(default="", kw_only=True)
    sampled_at: float | None = field(default=None, kw_only=True)
    timestamp: float
    method: str = field(default="", kw_only=True)
    schema: str = field(default=LAB_RESULT_SCHEMA, kw_only=True)

    def encode(self) -> bytes:
        """The record's JSON (NaN or infinity raise ValueError: JSON has neither)."""
        return encode_json_record(self)


def decode_lab_result(value: bytes | str | None) -> LabResult:
    """Decode and validate a lab result record.

    Raises
    ------
    WireFormatError
        ``bad_header`` (not a JSON object), ``unknown_version`` (another schema),
        ``missing_field`` (no ``sample_id``, ``value`` or ``timestamp``) or ``bad_field``
        (e.g. an empty sample id, or a value that is not a finite number).
    """
    result = decode_json_record(
        value, LabResult, LAB_RESULT_SCHEMA, "lab result", require_schema=False, allow_unknown=True
    )
    if not result.sample_id:
        raise WireFormatError("bad_field", "lab result sample_id must be a non-empty string")
    return result
