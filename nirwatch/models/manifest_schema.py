"""Validation of a bundle's ``manifest.json``, field by field.

A manifest whose files all match their checksums can still be edited by hand: a negative
``fallback_limit`` makes every CNN value pass, a raised upper bound of the calibrated range
silences the extrapolation flag. Checksums (and the HMAC, when a key is set) detect *that*
the manifest changed; this module refuses manifests whose *values* cannot be right, naming
the field, so that a bundle without a key still cannot be made to serve nonsense.

Called by :func:`nirwatch.models.bundle_format.read_verified` (so by every loader, the registry
and ``verify_bundle``) before anything is deserialised. Fields that newer bundles carry
(``serving``, ``interval``, ``max_interval_width``, ``extrapolation``, ``selection``) are
validated when present and tolerated when absent: older bundles lack them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from nirwatch.errors import ManifestError
from nirwatch.grid import axis_id

__all__ = ["FIELDS", "ManifestError", "validate_manifest"]


_HEX64 = re.compile(r"[0-9a-f]{64}")
# A version names a directory under the registry's models/: no separators, no leading dot.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MODELS = ("pls", "cnn", "blend")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(field: str, v: Any, *, lo: float | None = None, lo_open: bool = False) -> float:
    """A finite number, optionally >= lo (or > lo with ``lo_open``)."""
    bound = "" if lo is None else (f" > {lo:g}" if lo_open else f" >= {lo:g}")
    if not _is_number(v) or not math.isfinite(v):
        raise ManifestError(field, f"a finite number{bound}", v)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ManifestError(field, f"a finite number{bound}", v)
    return float(v)


def _str(field: str, v: Any, *, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise ManifestError(field, "a non-empty string" if not empty else "a string", v)
    return v


def _choice(field: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ManifestError(field, f"one of {list(choices)}", v)
    return str(v)


def _dict(field: str, v: Any, allowed: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ManifestError(field, "a JSON object", v)
    if allowed is not None:
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise ManifestError(f"{field}.{unknown[0]}", f"one of the keys {sorted(allowed)}", v)
    return v


# ---- one checker per field (each receives the field's value)


def _created_at(v: Any) -> None:
    try:
        datetime.fromisoformat(_str("created_at", v))
    except ValueError as exc:
        raise ManifestError("created_at", "an ISO 8601 timestamp", v) from exc


def _version(v: Any) -> None:
    if not isinstance(v, str) or not _VERSION.fullmatch(v):
        raise ManifestError("version", "a version name (letters, digits, . _ + -)", v)


def _target(v: Any) -> None:
    t = _dict("target", v, {"name", "unit", "range"})
    _str("target.name", t.get("name"))
    _str("target.unit", t.get("unit"), empty=True)
    if "range" in t:
        rng = t["range"]
        if not isinstance(rng, list) or len(rng) != 2:
            raise ManifestError("target.range", "[min, max]", rng)
        lo = _finite("target.range[0]", rng[0])
        hi = _finite("target.range[1]", rng[1])
        if lo > hi:
            raise ManifestError("target.range", "min <= max", rng)


def _wavelengths(v: Any) -> None:
    if not isinstance(v, list) or len(v) < 2 or not all(_is_number(x) for x in v):
        raise ManifestError("wavelengths", "a list of at least 2 numbers", v)
    wl = np.asarray(v, dtype=float)
    if not np.all(np.isfinite(wl)) or not np.all(np.diff(wl) > 0):
        raise ManifestError("wavelengths", "finite, strictly increasing numbers", v)


def _hex64(field: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, str) or not _HEX64.fullmatch(v):
            raise ManifestError(field, "a SHA-256 hex digest", v)

    return check


def _informational(field: str) -> Callable[[Any], None]:
    # Report data (metrics, training parameters, package versions): a JSON object with
    # string keys; its values are shown, never acted on.
    def check(v: Any) -> None:
        _dict(field, v)

    return check


def _packages(v: Any) -> None:
    for name, ver in _dict("packages", v).items():
        if ver is not None and not isinstance(ver, str):
            raise ManifestError(f"packages.{name}", "a version string or null", ver)


def _metrics(v: Any) -> None:
    for name, value in _dict("metrics", v).items():
        if value is not None and not isinstance(value, str | int | float | list | dict):
            raise ManifestError(f"metrics.{name}", "a number, string or null", value)


def _fallback_limit(v: Any) -> None:
    _finite("fallback_limit", v, lo=0.0)


def _grid(v: Any) -> None:
    _str("grid", v)  # its consistency with the wavelengths is checked last


def _statistics_input(v: Any) -> None:
    _choice("statistics_input", v, ("pls", "steps"))


def _models(v: Any) -> None:
    m = _dict("models", v, {"cnn", "pls"})
    for key in ("cnn", "pls"):
        if not isinstance(m.get(key), bool):
            raise ManifestError(f"models.{key}", "true or false", m.get(key))
    if not m["pls"]:
        raise ManifestError("models.pls", "true (PLS is the fallback every bundle needs)", False)


def _files(v: Any) -> None:
    files = _dict("files", v)
    if not files:
        raise ManifestError("files", "a non-empty object {name: sha256}", v)
    for name, digest in files.items():
        p = PurePosixPath(name)
        if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
            raise ManifestError(f"files.{name}", "a relative path inside the bundle", name)
        _hex64(f"files.{name}")(digest)


def _serving(v: Any) -> None:
    s = _dict("serving", v, {"model", "cnn_weight"})
    _choice("serving.model", s.get("model"), MODELS)
    if "cnn_weight" in s:
        w = _finite("serving.cnn_weight", s["cnn_weight"], lo=0.0)
        if w > 1.0:
            raise ManifestError("serving.cnn_weight", "a number in [0, 1]", w)


def _interval(v: Any) -> None:
    i = _dict("interval", v, {"method", "level", "quantile", "quantiles", "scale", "scale_floor"})
    _choice("interval.method", i.get("method"), ("conformal",))
    level = _finite("interval.level", i.get("level"), lo=0.0, lo_open=True)
    if level >= 1.0:
        raise ManifestError("interval.level", "a number in (0, 1)", level)
    if i.get("quantile") is not None:  # None: too few spectra for the level, no interval
        _finite("interval.quantile", i.get("quantile"), lo=0.0)
    for model, q in _dict("interval.quantiles", i.get("quantiles", {})).items():
        _choice("interval.quantiles", model, MODELS)
        _finite(f"interval.quantiles.{model}", q, lo=0.0)
    _choice("interval.scale", i.get("scale"), ("constant", "ensemble_spread", "leverage"))
    if "scale_floor" in i:
        _finite("interval.scale_floor", i["scale_floor"], lo=0.0, lo_open=True)


def _max_interval_width(v: Any) -> None:
    if v is not None:
        _finite("max_interval_width", v, lo=0.0, lo_open=True)


def _extrapolation(v: Any) -> None:
    e = _dict("extrapolation", v, {"model", "margin"})
    _choice("extrapolation.model", e.get("model"), MODELS)
    _finite("extrapolation.margin", e.get("margin"), lo=0.0)


#: Every field a manifest may hold, with its checker; ``True``: required.
FIELDS: dict[str, tuple[bool, Callable[[Any], None]]] = {
    "format": (True, lambda v: None),  # checked by the reader before anything else
    "created_at": (True, _created_at),
    "version": (True, _version),
    "target": (True, _target),
    "grid": (True, _grid),
    "wavelengths": (True, _wavelengths),
    "data_hash": (True, _hex64("data_hash")),
    "metrics": (False, _metrics),
    "training": (False, _informational("training")),
    "packages": (False, _packages),
    "fallback_limit": (True, _fallback_limit),
    "statistics_input": (False, _statistics_input),
    "models": (True, _models),
    "files": (True, _files),
    "serving": (False, _serving),
    "interval": (False, _interval),
    "max_interval_width": (False, _max_interval_width),
    "extrapolation": (False, _extrapolation),
    "selection": (False, _informational("selection")),
}


def validate_manifest(manifest: Mapping[str, Any], where: str = "manifest.json") -> None:
    """Refuse a manifest with a missing, unknown or invalid field.

    Raises
    ------
    ManifestError
        Naming ``where``, the first offending field, what was expected and what arrived.
    """
    try:
        _validate(manifest)
    except ManifestError as exc:
        exc.args = (f"{where}: {exc.args[0]}",)
        raise


def _validate(manifest: Mapping[str, Any]) -> None:
    unknown = sorted(set(manifest) - set(FIELDS))
    if unknown:
        raise ManifestError(unknown[0], f"a known field {sorted(FIELDS)}", manifest[unknown[0]])
    for name, (required, check) in FIELDS.items():
        if name not in manifest:
            if required:
                raise ManifestError(name, "a value (the field is required)", None)
            continue
        check(manifest[name])
    # The grid id is derived from the wavelengths: an edit to either shows as a mismatch.
    grid = axis_id(np.asarray(manifest["wavelengths"], dtype=float))
    if manifest["grid"] != grid:
        raise ManifestError("grid", f"{grid!r} (derived from the wavelengths)", manifest["grid"])
