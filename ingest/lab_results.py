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
from nirwatch.messages.wire import decode_json_record

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


def decode_lab_result(value: bytes) -> LabResult:
    """Decode and validate a lab result record (raises WireFormatError with a reason code)."""
    result = decode_json_record(value, LabResult, LAB_RESULT_SCHEMA, "lab result")
    v = result.value
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise WireFormatError("bad_field", f"value must be a finite number, got {v!r}")
    return result
