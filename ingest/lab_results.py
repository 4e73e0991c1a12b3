"""Lab reference results: JSON records on the lab-results topic, keyed by sample id.

A tablet pulled from the line is assayed in the lab (e.g. HPLC) and the value arrives minutes
to hours after its spectrum; monitoring joins it to the prediction by ``sample_id``.
Schema ``nirwatch.lab-result/1``::

    {"schema": "nirwatch.lab-result/1", "sample_id": "probe-1-00000042",
     "instrument_id": "probe-1", "target": "api_content", "value": 201.3, "unit": "mg",
     "sampled_at": 1764095000.0, "timestamp": 1764095600.0, "method": "hplc"}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from nirwatch.errors import WireFormatError

LAB_RESULT_SCHEMA = "nirwatch.lab-result/1"


@dataclass(frozen=True, slots=True)
class LabResult:
    """One lab reference value; times are epoch seconds (UTC).

    ``sampled_at`` is when the tablet was measured inline, ``timestamp`` when the lab result
    was produced. ``sample_id``, ``value`` and ``timestamp`` are what
    :func:`monitoring.drift_monitor.parse_lab_result` reads; the rest is context.
    """

    sample_id: str
    instrument_id: str
    target: str
    value: float
    unit: str
    sampled_at: float
    timestamp: float
    method: str = "hplc"
    schema: str = LAB_RESULT_SCHEMA

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()


_FIELDS = set(LabResult.__dataclass_fields__)


def decode_lab_result(value: bytes) -> LabResult:
    """Decode and validate a lab result record (raises WireFormatError with a reason code)."""
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireFormatError("bad_header", f"lab result is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError("bad_header", "lab result must be a JSON object")
    if obj.get("schema") != LAB_RESULT_SCHEMA:
        raise WireFormatError(
            "unknown_version", f"expected schema {LAB_RESULT_SCHEMA}, got {obj.get('schema')!r}"
        )
    unknown = set(obj) - _FIELDS
    if unknown:
        raise WireFormatError("bad_field", f"unknown lab result fields: {sorted(unknown)}")
    try:
        result = LabResult(**obj)
    except TypeError as exc:
        raise WireFormatError("missing_field", str(exc)) from None
    v = result.value
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise WireFormatError("bad_field", f"value must be a finite number, got {v!r}")
    return result
