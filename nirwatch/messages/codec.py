"""What the message modules share: the bounded reason codes and the JSON-record codec.

Predictions and lab results travel as small UTF-8 JSON objects with a ``"schema"`` field
naming their type and version; :func:`encode_json_record` writes one from a dataclass and
:func:`decode_json_record` reads and checks one against the dataclass's field types
(:func:`decode_json_object` does the checking, for a decoder that parsed the JSON itself, e.g.
to read an older schema version). Any decoder failure raises
:class:`~nirwatch.errors.WireFormatError` with a code from :data:`REASONS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields
from typing import Any, TypeVar

from nirwatch.errors import WireFormatError

#: Every reason code a decoder can give; bounded so it can label metrics and dead letters.
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


def encode_json_record(record: Any) -> bytes:
    """A dataclass record as compact JSON, keys in field order; NaN/inf refused (ValueError)."""
    return json.dumps(asdict(record), separators=(",", ":"), allow_nan=False).encode()


def parse_json_object(value: bytes | str | None, what: str) -> dict[str, Any]:
    """A record's JSON object.

    Raises
    ------
    WireFormatError
        ``bad_header`` when ``value`` is not UTF-8 JSON or not an object.
    """
    if value is None:
        raise WireFormatError("bad_header", f"{what} has no value")
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError("bad_header", f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(
            "bad_header", f"{what} must be a JSON object, got {type(obj).__name__}"
        )
    return obj


R = TypeVar("R")


def _finite(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


#: Per field annotation: (check, description, conversion). Annotations are the source text
#: (``from __future__ import annotations``); a field of another type is a TypeError at the
#: first decode (every record type's tests decode it).
_KINDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "str": (lambda v: isinstance(v, str), "a string", str),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null", lambda v: v),
    "bool": (lambda v: isinstance(v, bool), "true or false", bool),
    "float": (_finite, "a finite number", float),
    "float | None": (
        lambda v: v is None or _finite(v),
        "a finite number or null",
        lambda v: None if v is None else float(v),
    ),
}


_SPECS: dict[type, tuple[tuple[str, bool, str], ...]] = {}


def _spec(cls: type) -> tuple[tuple[str, bool, str], ...]:
    """(name, required, annotation) of each field of dataclass ``cls`` (computed once)."""
    if cls in _SPECS:
        return _SPECS[cls]
    out = []
    for f in fields(cls):
        if f.type not in _KINDS:
            raise TypeError(f"{cls.__name__}.{f.name}: no wire check for type {f.type!r}")
        required = f.default is MISSING and f.default_factory is MISSING
        out.append((f.name, required, str(f.type)))
    _SPECS[cls] = tuple(out)
    return _SPECS[cls]


def decode_json_record(
    value: bytes | str | None,
    cls: type[R],
    schema: str,
    what: str,
    *,
    require_schema: bool = True,
    allow_unknown: bool = False,
) -> R:
    """Decode a JSON record into dataclass ``cls``, checking every field against its type.

    Numbers of ``float`` fields come back as floats (JSON ``1`` is ``1.0``); NaN and infinity
    are refused (JSON has neither; Python's parser accepts them).

    Parameters
    ----------
    require_schema : bool
        False: a record without a ``schema`` field is taken as ``schema``.
    allow_unknown : bool
        True: fields ``cls`` does not have are ignored instead of refused.

    Raises
    ------
    WireFormatError
        ``bad_header`` (not a UTF-8 JSON object), ``unknown_version`` (another schema),
        ``bad_field`` (unknown field, or a value of the wrong type) or ``missing_field``.
    """
    obj = parse_json_object(value, what)
    _check_schema(obj, schema, required=require_schema)
    return decode_json_object(obj, cls, what, allow_unknown=allow_unknown)


def decode_json_object(
    obj: dict[str, Any], cls: type[R], what: str, *, allow_unknown: bool = False
) -> R:
    """A parsed JSON object (schema already checked) as dataclass ``cls``, every field checked.

    Raises
    ------
    WireFormatError
        ``bad_field`` (unknown field, or a value of the wrong type) or ``missing_field``.
    """
    spec = _spec(cls)
    if not allow_unknown:
        unknown = set(obj).difference(name for name, _, _ in spec)
        if unknown:
            raise WireFormatError("bad_field", f"unknown {what} fields: {sorted(unknown)}")
    missing = [name for name, required, _ in spec if required and name not in obj]
    if missing:
        raise WireFormatError("missing_field", f"{what} lacks {', '.join(missing)}")
    kwargs: dict[str, Any] = {}
    for name, _, kind in spec:
        if name in obj:
            v = obj[name]
            check, expected, convert = _KINDS[kind]
            if not check(v):
                got = repr(v)
                got = got if len(got) <= 80 else f"{got[:77]}..."
                raise WireFormatError("bad_field", f"{what} {name} must be {expected}, got {got}")
            kwargs[name] = convert(v)
    return cls(**kwargs)


def _check_schema(obj: dict[str, Any], schema: str, *, required: bool = True) -> None:
    """Refuse a record of another type or version (``unknown_version``).

    With ``required`` false a record without a ``schema`` field is taken as ``schema``.
    """
    if not required and "schema" not in obj:
        return
    if obj.get("schema") != schema:
        raise WireFormatError(
            "unknown_version", f"expected schema {schema}, got {obj.get('schema')!r}"
        )
